//! The `stats` reply as Rust values (field names match the Go server's JSON).

use serde::{Deserialize, Serialize};

/// The JSON object returned by the `stats` command (`ok <json>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Stats {
    /// Number of open client connections.
    pub connections: u64,
    /// Lock keys that are held or have waiters.
    pub locks: Vec<LockInfo>,
    /// Semaphore keys that have holders or waiters.
    pub semaphores: Vec<SemaphoreInfo>,
    /// Lock keys with no holder and no waiter (awaiting GC).
    pub idle_locks: Vec<IdleInfo>,
    /// Semaphore keys with no holder and no waiter (awaiting GC).
    pub idle_semaphores: Vec<IdleInfo>,
    /// Signal subscriptions, one entry per pattern (and group).
    #[serde(default)]
    pub signal_channels: Vec<SignalChannelInfo>,
}

/// One entry of [`Stats::locks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The lock key.
    pub key: String,
    /// Connection id of the holder (`0` when only waiters exist).
    pub owner_conn_id: u64,
    /// Seconds until the holder's lease expires (`0` when not held).
    pub lease_expires_in_s: f64,
    /// Number of queued waiters.
    pub waiters: usize,
}

/// One entry of [`Stats::semaphores`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemaphoreInfo {
    /// The semaphore key.
    pub key: String,
    /// The semaphore's limit.
    pub limit: usize,
    /// Number of slots held.
    pub holders: usize,
    /// Number of queued waiters.
    pub waiters: usize,
}

/// One entry of [`Stats::idle_locks`] / [`Stats::idle_semaphores`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleInfo {
    /// The key.
    pub key: String,
    /// Seconds since the key was last used.
    pub idle_s: f64,
}

/// One entry of [`Stats::signal_channels`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalChannelInfo {
    /// The subscribed channel or pattern.
    pub pattern: String,
    /// The queue group (omitted from the JSON when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Number of subscribed connections.
    pub listeners: usize,
}
