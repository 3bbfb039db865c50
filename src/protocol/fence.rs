//! Fencing values carried by lease tokens.

use core::fmt;

/// A fencing value: the first 16 hex digits of a lease token as a
/// big-endian `u64` ([`Token::fence`](super::Token::fence)).
///
/// Hand it to the resource you protect with every write; the resource
/// remembers the highest fence it has seen **for that key** and rejects
/// writes that carry a lower one. Then a client that lost its lease (paused,
/// partitioned, its lease expired and was granted to someone else) cannot
/// overwrite the work of the new holder.
///
/// # What a fence guarantees, by server
///
/// * **dflockd v2 (v2.1.0+), single node**: the fence grows by one with
///   every grant, across all keys, starting at the boot time in
///   nanoseconds; it stays monotonic across restarts only when the server
///   runs with `--fence-state-file`.
/// * **dflockd v2 cluster**: a replicated counter starting at 1 that grows
///   by one with every grant and survives leader failover: a later grant
///   of a key always carries a larger fence than every earlier grant of
///   that key, whichever node was leader.
/// * **dflockd v1.x**: tokens are random. `fence()` still returns a number,
///   but it **means nothing**: it carries no order at all. Do not fence
///   with a v1 server.
///
/// Compare fences only within one key: grants of other keys take numbers
/// from the same counter, so fences of different keys say nothing about
/// each other.
///
/// Ordered, `Copy`, printed as its decimal value. Compares with a bare
/// `u64` too (`fence == 7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fence(u64);

impl Fence {
    /// A fence with the given value.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Fence {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=u64}", self.0)
    }
}

impl From<Fence> for u64 {
    fn from(f: Fence) -> u64 {
        f.0
    }
}

impl From<u64> for Fence {
    fn from(v: u64) -> Fence {
        Fence(v)
    }
}

impl PartialEq<u64> for Fence {
    fn eq(&self, other: &u64) -> bool {
        self.0 == *other
    }
}

impl PartialOrd<u64> for Fence {
    fn partial_cmp(&self, other: &u64) -> Option<core::cmp::Ordering> {
        Some(self.0.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn ordered_displayed_and_compared_with_u64() {
        let a = Fence::new(7);
        let b = Fence::from(8u64);
        assert!(a < b);
        assert!(b > 7);
        assert_eq!(a, 7);
        assert_eq!(format!("{a}"), "7");
        assert_eq!(u64::from(b), 8);
        assert_eq!(a.max(b), b);
    }
}
