//! A typed view of the `stats` JSON (host only, `serde` feature).

use std::string::String;
use std::vec::Vec;

use serde::Deserialize;

/// The server's statistics, as `stats` reports them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Open client connections.
    pub connections: i64,
    /// Held locks.
    #[serde(default)]
    pub locks: Vec<LockInfo>,
    /// Semaphores with holders or waiters.
    #[serde(default)]
    pub semaphores: Vec<SemaphoreInfo>,
    /// Lock keys kept idle (no holder, no waiter).
    #[serde(default)]
    pub idle_locks: Vec<IdleInfo>,
    /// Semaphore keys kept idle.
    #[serde(default)]
    pub idle_semaphores: Vec<IdleInfo>,
    /// Signal channels with subscribers (signal-capable servers only; the
    /// shape varies between releases, so it is kept as raw JSON).
    #[serde(default)]
    pub signal_channels: Vec<serde_json::Value>,
}

/// A held lock.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// The key.
    pub key: String,
    /// The server's id of the holding connection.
    #[serde(default)]
    pub owner_conn_id: u64,
    /// Seconds until the lease expires.
    #[serde(default)]
    pub lease_expires_in_s: f64,
    /// Connections waiting for the key.
    #[serde(default)]
    pub waiters: u64,
}

/// A semaphore.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct SemaphoreInfo {
    /// The key.
    pub key: String,
    /// Its limit.
    pub limit: u64,
    /// Current holders.
    pub holders: u64,
    /// Waiters.
    #[serde(default)]
    pub waiters: u64,
}

/// An idle key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct IdleInfo {
    /// The key.
    pub key: String,
    /// Seconds since it was last used.
    #[serde(default)]
    pub idle_s: f64,
}

impl Stats {
    /// Parses the JSON returned by [`Connection::stats`](crate::Connection::stats).
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_shape() {
        let json = r#"{"connections":2,"locks":[{"key":"a","owner_conn_id":3,"lease_expires_in_s":29.5,"waiters":1}],"semaphores":[{"key":"s","limit":3,"holders":2,"waiters":0}],"idle_locks":[{"key":"b","idle_s":1.5}],"idle_semaphores":[]}"#;
        let s = Stats::parse(json).unwrap();
        assert_eq!(s.connections, 2);
        assert_eq!(s.locks[0].key, "a");
        assert_eq!(s.locks[0].waiters, 1);
        assert_eq!(s.semaphores[0].holders, 2);
        assert_eq!(s.idle_locks[0].key, "b");
        assert!(s.signal_channels.is_empty());
    }
}
