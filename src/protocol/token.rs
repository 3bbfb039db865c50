//! Lease tokens issued by the server.

use core::fmt;

use super::fence::Fence;

/// Length of a lease token in characters.
pub const TOKEN_LEN: usize = 32;

/// A lease token: 32 lowercase hexadecimal characters issued by the server
/// with every grant.
///
/// Opaque except for [`Token::fence`]. `Debug` shows only the first 8
/// characters, so tokens can be logged without handing out the whole lease.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    bytes: [u8; TOKEN_LEN],
}

/// The text is not a token: not exactly 32 lowercase hexadecimal characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BadToken;

impl fmt::Display for BadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("token is not 32 lowercase hex characters")
    }
}

impl core::error::Error for BadToken {}

impl Token {
    /// Parses a token from its wire form.
    pub fn parse(text: &[u8]) -> Result<Self, BadToken> {
        let bytes: [u8; TOKEN_LEN] = text.try_into().map_err(|_| BadToken)?;
        if bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            Ok(Self { bytes })
        } else {
            Err(BadToken)
        }
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        core::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    /// The token's wire bytes.
    pub fn as_bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.bytes
    }

    /// The fencing value: the first 16 hex digits as a big-endian `u64`.
    ///
    /// On v2 servers it strictly increases with every grant, so a resource
    /// can reject writes carrying an older fence. v1.x servers issue random
    /// tokens, whose fence values mean nothing (see [`Fence`]).
    pub fn fence(&self) -> Fence {
        Fence::new(
            self.bytes[..16]
                .iter()
                .fold(0u64, |acc, &b| (acc << 4) | u64::from(hex_value(b))),
        )
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => 0,
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}…)", &self.as_str()[..8])
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Token {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "Token({=str}…)", &self.as_str()[..8])
    }
}

impl core::str::FromStr for Token {
    type Err = BadToken;
    fn from_str(s: &str) -> Result<Self, BadToken> {
        Self::parse(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    const T: &str = "0000000000000001abcdef0123456789";

    #[test]
    fn parse_and_fence() {
        let t = Token::parse(T.as_bytes()).unwrap();
        assert_eq!(t.as_str(), T);
        assert_eq!(t.fence(), 1);
        let t: Token = "ffffffffffffffff0000000000000000".parse().unwrap();
        assert_eq!(t.fence(), u64::MAX);
        let t: Token = "00000000000001000000000000000000".parse().unwrap();
        assert_eq!(t.fence(), 0x100);
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            "",
            "abc",
            "0000000000000001abcdef012345678",
            "0000000000000001abcdef01234567890",
            "0000000000000001ABCDEF0123456789",
            "000000000000000gabcdef0123456789",
            "0000000000000001abcdef012345678 ",
        ] {
            assert_eq!(Token::parse(bad.as_bytes()), Err(BadToken), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_most_of_the_token() {
        let t = Token::parse(T.as_bytes()).unwrap();
        let dbg = format!("{t:?}");
        assert_eq!(dbg, "Token(00000000…)");
        assert!(!dbg.contains("abcdef"));
        assert_eq!(format!("{t}"), T);
    }
}
