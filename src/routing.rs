//! Routing keys across several servers.
//!
//! A fleet of independent dflockd servers is used by sending each key to
//! one server, chosen from the key alone, so that every client agrees.
//!
//! * [`Crc32Mod`] (the default) — `crc32_ieee(key) % servers`, exactly as
//!   every other dflockd client routes. A mixed fleet of clients (Go,
//!   Python, Rust) must use it, and list the servers in the same order.
//! * [`Rendezvous`] — highest-random-weight hashing over the server
//!   *addresses*: adding or removing a server moves only the keys that
//!   belong to it (about `1/n` of them), where `% n` moves almost all.
//!   **It routes differently from the other clients**: use it only when
//!   every client of the fleet does.
//! * Any `Fn(&str, &[&str]) -> usize` is a custom [`Strategy`]; [`route`]
//!   checks the index it returns.
//!
//! ```
//! use dflockd_client::routing::{Crc32Mod, Rendezvous, route};
//!
//! let servers = ["10.0.0.1:6388", "10.0.0.2:6388", "10.0.0.3:6388"];
//! assert_eq!(route(&Crc32Mod, "my-key", &servers), Ok(2));
//! let i = route(&Rendezvous, "my-key", &servers).unwrap();
//! assert!(i < servers.len());
//! let custom = |_key: &str, _servers: &[&str]| 0;
//! assert_eq!(route(&custom, "my-key", &servers), Ok(0));
//! ```
//!
//! Pure functions: no IO, no allocation, `no_std`.

use core::fmt;

/// CRC-32/IEEE of the key's UTF-8 bytes (reflected polynomial `0xEDB88320`,
/// init and final xor `0xFFFFFFFF`: zlib's `crc32`).
pub fn crc32(key: &str) -> u32 {
    crc32fast::hash(key.as_bytes())
}

/// Chooses a server for a key.
pub trait Strategy {
    /// The index into `servers` (never empty when called through [`route`])
    /// of the server that owns `key`. [`route`] rejects an index out of
    /// range.
    fn pick(&self, key: &str, servers: &[&str]) -> usize;
}

impl<F: Fn(&str, &[&str]) -> usize> Strategy for F {
    fn pick(&self, key: &str, servers: &[&str]) -> usize {
        self(key, servers)
    }
}

/// The default strategy: `crc32_ieee(key) % servers.len()`, identical to
/// the other dflockd clients. Only the number and order of servers matter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crc32Mod;

impl Strategy for Crc32Mod {
    fn pick(&self, key: &str, servers: &[&str]) -> usize {
        let n = servers.len().max(1) as u64;
        (u64::from(crc32(key)) % n) as usize
    }
}

/// Rendezvous (highest-random-weight) hashing over server addresses.
///
/// Each server scores `mix64(fnv1a64(key ‖ 0x00 ‖ address))`; the highest
/// score wins (the lowest index on a tie). Adding a server moves only the
/// keys it now wins; removing one moves only its own keys; the order of
/// the list does not matter.
///
/// **Not** what the other dflockd clients do: a fleet shared with them
/// must use [`Crc32Mod`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rendezvous;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The splitmix64 finalizer: spreads FNV's weak low bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rendezvous {
    /// The score of `server` for `key`; the highest score owns the key.
    pub fn score(key: &str, server: &str) -> u64 {
        let h = fnv1a(FNV_OFFSET, key.as_bytes());
        let h = fnv1a(h, &[0]);
        mix64(fnv1a(h, server.as_bytes()))
    }
}

impl Strategy for Rendezvous {
    fn pick(&self, key: &str, servers: &[&str]) -> usize {
        let mut best = 0;
        let mut best_score = 0;
        for (i, server) in servers.iter().enumerate() {
            let s = Self::score(key, server);
            if i == 0 || s > best_score {
                best = i;
                best_score = s;
            }
        }
        best
    }
}

/// Why a key could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RouteError {
    /// The server list is empty.
    NoServers,
    /// The strategy returned an index outside the server list.
    OutOfRange {
        /// The index the strategy returned.
        index: usize,
        /// How many servers there are.
        servers: usize,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::NoServers => f.write_str("no servers to route to"),
            RouteError::OutOfRange { index, servers } => write!(
                f,
                "routing strategy returned server {index} of only {servers}"
            ),
        }
    }
}

impl core::error::Error for RouteError {}

/// The index of the server that owns `key`, checked against the list.
pub fn route<S: Strategy + ?Sized>(
    strategy: &S,
    key: &str,
    servers: &[&str],
) -> Result<usize, RouteError> {
    if servers.is_empty() {
        return Err(RouteError::NoServers);
    }
    let index = strategy.pick(key, servers);
    if index < servers.len() {
        Ok(index)
    } else {
        Err(RouteError::OutOfRange {
            index,
            servers: servers.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: [&str; 3] = ["a:1", "b:2", "c:3"];

    #[test]
    fn protocol_vectors() {
        assert_eq!(crc32("my-key"), 0xD6E3_3AC1);
        assert_eq!(crc32("alpha"), 0xD0E0_396A);
        assert_eq!(crc32("user:42"), 0x646F_0D86);
        assert_eq!(route(&Crc32Mod, "my-key", &THREE), Ok(2));
        assert_eq!(route(&Crc32Mod, "alpha", &THREE), Ok(1));
        assert_eq!(route(&Crc32Mod, "user:42", &THREE), Ok(1));
        // zlib's check value.
        assert_eq!(crc32("123456789"), 0xCBF4_3926);
    }

    #[test]
    fn validates_the_index() {
        assert_eq!(route(&Crc32Mod, "k", &[]), Err(RouteError::NoServers));
        let bad = |_: &str, s: &[&str]| s.len();
        assert_eq!(
            route(&bad, "k", &THREE),
            Err(RouteError::OutOfRange {
                index: 3,
                servers: 3
            })
        );
        assert_eq!(route(&|_: &str, _: &[&str]| 1, "k", &THREE), Ok(1));
    }

    #[test]
    fn rendezvous_is_stable_when_the_fleet_grows() {
        let four = ["a:1", "b:2", "c:3", "d:4"];
        let mut moved = 0;
        let mut keys = 0;
        for i in 0..2000u32 {
            let mut buf = [0u8; 16];
            let key = itoa(i, &mut buf);
            let before = route(&Rendezvous, key, &THREE).unwrap();
            let after = route(&Rendezvous, key, &four).unwrap();
            if before != after {
                // A key only ever moves to the new server.
                assert_eq!(after, 3, "{key}");
                moved += 1;
            }
            keys += 1;
        }
        // About a quarter of the keys move to the new server.
        assert!(moved > keys / 8 && moved < keys / 2, "{moved} of {keys}");
        // Order of the list does not matter.
        let shuffled = ["c:3", "a:1", "b:2"];
        for key in ["my-key", "alpha", "user:42"] {
            let i = route(&Rendezvous, key, &THREE).unwrap();
            let j = route(&Rendezvous, key, &shuffled).unwrap();
            assert_eq!(THREE[i], shuffled[j]);
        }
    }

    fn itoa(mut n: u32, buf: &mut [u8; 16]) -> &str {
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        core::str::from_utf8(&buf[i..]).unwrap()
    }
}
