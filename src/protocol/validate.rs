//! Argument validation, byte for byte as the server checks them.
//!
//! Every check runs before a single byte is written, so a rejected argument
//! never reaches the server and the connection stays usable.

use core::fmt;

/// Longest key, pattern, channel or group the server accepts, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest queue group name, in bytes.
pub const MAX_GROUP_LEN: usize = 256;
/// Cap on the auth-token and signal-payload lines (v1.15+ servers), in bytes.
pub const MAX_LONG_LINE: usize = 65536;
/// Largest number of seconds newer servers accept (`i64::MAX` nanoseconds).
pub const MAX_SECONDS: u64 = 9_223_372_036;

/// Which argument of a request was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Arg {
    /// A lock or semaphore key.
    Key,
    /// A `listen`/`unlisten` subscription pattern.
    Pattern,
    /// A `signal` (emit) channel.
    Channel,
    /// The authentication token sent with `auth`.
    AuthToken,
    /// A queue group name.
    Group,
    /// A signal payload.
    Payload,
    /// An acquire or wait timeout.
    Timeout,
    /// A lease TTL.
    Lease,
    /// A semaphore limit.
    Limit,
}

impl Arg {
    fn name(self) -> &'static str {
        match self {
            Arg::Key => "key",
            Arg::Pattern => "pattern",
            Arg::Channel => "channel",
            Arg::AuthToken => "auth token",
            Arg::Group => "group",
            Arg::Payload => "payload",
            Arg::Timeout => "timeout",
            Arg::Lease => "lease",
            Arg::Limit => "limit",
        }
    }
}

/// The rule an argument broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Rule {
    /// The argument is empty.
    Empty,
    /// The argument contains only whitespace.
    Blank,
    /// The argument contains a space, tab, CR or LF.
    Whitespace,
    /// The argument contains a line feed (an auth token: CR or LF), which
    /// would end the request line early.
    LineBreak,
    /// The argument begins or ends with whitespace, which the server trims
    /// (auth token, queue group): the server would see another value.
    Untrimmed,
    /// The payload ends with a carriage return, which the server strips.
    TrailingCr,
    /// The argument is longer than `max` bytes.
    TooLong {
        /// The largest accepted length in bytes.
        max: usize,
    },
    /// The number is larger than `max`.
    TooLarge {
        /// The largest accepted value.
        max: u64,
    },
    /// The number must be greater than zero.
    Zero,
    /// A literal channel contains a wildcard (`*` or `>`).
    Wildcard,
    /// A wildcard is not a whole dot-separated token, or `>` is not last.
    BadWildcard,
}

/// An argument rejected before anything was sent: names the argument and the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InvalidArgument {
    /// The argument that was rejected.
    pub arg: Arg,
    /// The rule it broke.
    pub rule: Rule,
}

impl InvalidArgument {
    pub(crate) const fn new(arg: Arg, rule: Rule) -> Self {
        Self { arg, rule }
    }
}

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arg = self.arg.name();
        match self.rule {
            Rule::Empty => write!(f, "invalid {arg}: must not be empty"),
            Rule::Blank => write!(f, "invalid {arg}: must not be blank"),
            Rule::Whitespace => {
                write!(f, "invalid {arg}: must not contain space, tab, CR or LF")
            }
            Rule::LineBreak if matches!(self.arg, Arg::AuthToken) => {
                write!(f, "invalid {arg}: must not contain CR or LF")
            }
            Rule::LineBreak => write!(f, "invalid {arg}: must not contain LF"),
            Rule::Untrimmed => {
                write!(f, "invalid {arg}: must not begin or end with whitespace")
            }
            Rule::TrailingCr => write!(f, "invalid {arg}: must not end with CR"),
            Rule::TooLong { max } => write!(f, "invalid {arg}: longer than {max} bytes"),
            Rule::TooLarge { max } => write!(f, "invalid {arg}: larger than {max}"),
            Rule::Zero => write!(f, "invalid {arg}: must be greater than zero"),
            Rule::Wildcard => {
                write!(f, "invalid {arg}: must be literal (no `*` or `>` wildcard)")
            }
            Rule::BadWildcard => write!(
                f,
                "invalid {arg}: `*` and `>` must be whole dot-separated tokens, `>` only last"
            ),
        }
    }
}

impl core::error::Error for InvalidArgument {}

type Result = core::result::Result<(), InvalidArgument>;

/// Whitespace as the server (Go's `unicode.IsSpace`, used by
/// `strings.TrimSpace` and `strings.Fields`) sees it: the Unicode
/// White_Space set, written out so firmware links no Unicode table.
const fn is_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Only whitespace (or nothing)?
fn is_blank(s: &str) -> bool {
    s.chars().all(is_space)
}

fn word(arg: Arg, s: &str) -> Result {
    if s.is_empty() {
        return Err(InvalidArgument::new(arg, Rule::Empty));
    }
    if s.len() > MAX_KEY_LEN {
        return Err(InvalidArgument::new(
            arg,
            Rule::TooLong { max: MAX_KEY_LEN },
        ));
    }
    if s.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        return Err(InvalidArgument::new(arg, Rule::Whitespace));
    }
    Ok(())
}

/// A lock or semaphore key: non-empty, no space, tab, CR or LF, at most 256 bytes.
pub fn key(key: &str) -> Result {
    word(Arg::Key, key)
}

/// A subscription pattern: a key whose `*` and `>` are whole dot-separated
/// tokens, with `>` only as the last token.
pub fn pattern(pattern: &str) -> Result {
    word(Arg::Pattern, pattern)?;
    let mut tokens = pattern.split('.').peekable();
    while let Some(tok) = tokens.next() {
        let wild = tok.bytes().any(|b| b == b'*' || b == b'>');
        let ok = !wild || tok == "*" || (tok == ">" && tokens.peek().is_none());
        if !ok {
            return Err(InvalidArgument::new(Arg::Pattern, Rule::BadWildcard));
        }
    }
    Ok(())
}

/// A literal channel for `signal`: a key without `*` or `>`.
pub fn channel(channel: &str) -> Result {
    word(Arg::Channel, channel)?;
    if channel.bytes().any(|b| b == b'*' || b == b'>') {
        return Err(InvalidArgument::new(Arg::Channel, Rule::Wildcard));
    }
    Ok(())
}

/// Does `s` begin or end with whitespace (which the server's
/// `strings.TrimSpace` would remove)?
fn untrimmed(s: &str) -> bool {
    s.starts_with(is_space) || s.ends_with(is_space)
}

/// An authentication token: non-empty, within the 64 KiB line, no CR or LF
/// (a server token never holds one), no whitespace at either end (the
/// server trims it). Inner spaces are part of the token, as on the server.
pub fn auth_token(token: &str) -> Result {
    if token.is_empty() {
        return Err(InvalidArgument::new(Arg::AuthToken, Rule::Empty));
    }
    if token.len() > MAX_LONG_LINE {
        return Err(InvalidArgument::new(
            Arg::AuthToken,
            Rule::TooLong { max: MAX_LONG_LINE },
        ));
    }
    if token.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(InvalidArgument::new(Arg::AuthToken, Rule::LineBreak));
    }
    if untrimmed(token) {
        return Err(InvalidArgument::new(Arg::AuthToken, Rule::Untrimmed));
    }
    Ok(())
}

/// A queue group: at most 256 bytes, no LF, not blank, no whitespace at
/// either end (the server trims the line, so " g" would join group "g").
/// Inner whitespace and CR are part of the name, as on the server.
pub fn group(group: &str) -> Result {
    if group.is_empty() {
        return Err(InvalidArgument::new(Arg::Group, Rule::Empty));
    }
    if group.len() > MAX_GROUP_LEN {
        return Err(InvalidArgument::new(
            Arg::Group,
            Rule::TooLong { max: MAX_GROUP_LEN },
        ));
    }
    if group.bytes().any(|b| b == b'\n') {
        return Err(InvalidArgument::new(Arg::Group, Rule::LineBreak));
    }
    if is_blank(group) {
        return Err(InvalidArgument::new(Arg::Group, Rule::Blank));
    }
    if untrimmed(group) {
        return Err(InvalidArgument::new(Arg::Group, Rule::Untrimmed));
    }
    Ok(())
}

/// Largest payload the server accepts on `channel`: the push line
/// `sig <channel> <payload>` must fit in 64 KiB.
pub const fn max_payload_len(channel: &str) -> usize {
    MAX_LONG_LINE.saturating_sub(5 + channel.len())
}

/// A signal payload for `channel`: not blank, no LF, not ending in CR (the
/// server strips it), at most `65536 - 5 - channel.len()` bytes. Other
/// whitespace, also at the ends, and a CR inside are delivered unchanged.
pub fn payload(channel: &str, payload: &str) -> Result {
    if payload.is_empty() {
        return Err(InvalidArgument::new(Arg::Payload, Rule::Empty));
    }
    let max = max_payload_len(channel);
    if payload.len() > max {
        return Err(InvalidArgument::new(Arg::Payload, Rule::TooLong { max }));
    }
    if payload.bytes().any(|b| b == b'\n') {
        return Err(InvalidArgument::new(Arg::Payload, Rule::LineBreak));
    }
    if is_blank(payload) {
        return Err(InvalidArgument::new(Arg::Payload, Rule::Blank));
    }
    if payload.ends_with('\r') {
        return Err(InvalidArgument::new(Arg::Payload, Rule::TrailingCr));
    }
    Ok(())
}

/// A timeout in seconds: `0..=9_223_372_036` (0 = try once).
pub fn timeout(secs: u64) -> Result {
    if secs > MAX_SECONDS {
        return Err(InvalidArgument::new(
            Arg::Timeout,
            Rule::TooLarge { max: MAX_SECONDS },
        ));
    }
    Ok(())
}

/// A lease TTL in seconds: `1..=9_223_372_036`.
pub fn lease(secs: u64) -> Result {
    if secs == 0 {
        return Err(InvalidArgument::new(Arg::Lease, Rule::Zero));
    }
    if secs > MAX_SECONDS {
        return Err(InvalidArgument::new(
            Arg::Lease,
            Rule::TooLarge { max: MAX_SECONDS },
        ));
    }
    Ok(())
}

/// A semaphore limit: greater than zero.
pub fn limit(limit: u32) -> Result {
    if limit == 0 {
        return Err(InvalidArgument::new(Arg::Limit, Rule::Zero));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(r: Result) -> Rule {
        r.unwrap_err().rule
    }

    #[test]
    fn keys() {
        assert!(key("a").is_ok());
        assert!(key("orders:42/üñí").is_ok());
        assert!(key(&"k".repeat(256)).is_ok());
        assert_eq!(rule(key("")), Rule::Empty);
        assert_eq!(rule(key(&"k".repeat(257))), Rule::TooLong { max: 256 });
        for bad in ["a b", "a\tb", "a\rb", "a\nb", " a", "a "] {
            assert_eq!(rule(key(bad)), Rule::Whitespace, "{bad:?}");
        }
        assert_eq!(key("").unwrap_err().arg, Arg::Key);
    }

    #[test]
    fn patterns() {
        for good in [
            "a", "a.b", "*", ">", "a.*", "a.>", "*.b.>", "a.*.c", "a-b.c_d",
        ] {
            assert!(pattern(good).is_ok(), "{good}");
        }
        for bad in ["a.>.b", "a*", "a.b>", ">.a", "a.**", "a.>>", "*a.b"] {
            assert_eq!(rule(pattern(bad)), Rule::BadWildcard, "{bad}");
        }
        assert_eq!(rule(pattern("a b")), Rule::Whitespace);
        assert_eq!(pattern("").unwrap_err().arg, Arg::Pattern);
    }

    #[test]
    fn channels() {
        assert!(channel("a.b.c").is_ok());
        for bad in ["a.*", ">", "a>", "x*y"] {
            assert_eq!(rule(channel(bad)), Rule::Wildcard, "{bad}");
        }
        assert_eq!(channel("").unwrap_err().arg, Arg::Channel);
    }

    #[test]
    fn auth_tokens() {
        assert!(auth_token("s3cret").is_ok());
        // The server takes inner whitespace (its token may hold spaces).
        assert!(auth_token("a b\tc").is_ok());
        assert_eq!(rule(auth_token("")), Rule::Empty);
        assert_eq!(rule(auth_token(" ab")), Rule::Untrimmed);
        assert_eq!(rule(auth_token("ab\u{3000}")), Rule::Untrimmed);
        assert_eq!(rule(auth_token("ab\n")), Rule::LineBreak);
        assert_eq!(rule(auth_token("a\rb")), Rule::LineBreak);
        assert_eq!(
            rule(auth_token(&"x".repeat(MAX_LONG_LINE + 1))),
            Rule::TooLong { max: MAX_LONG_LINE }
        );
    }

    #[test]
    fn groups() {
        assert!(group("workers").is_ok());
        assert!(group("two words").is_ok());
        assert!(group("a\rb").is_ok());
        assert_eq!(rule(group("")), Rule::Empty);
        assert_eq!(rule(group("   ")), Rule::Blank);
        assert_eq!(rule(group("a\nb")), Rule::LineBreak);
        assert_eq!(rule(group(" g")), Rule::Untrimmed);
        assert_eq!(rule(group("g\r")), Rule::Untrimmed);
        assert_eq!(rule(group(&"g".repeat(257))), Rule::TooLong { max: 256 });
    }

    #[test]
    fn payloads() {
        assert!(payload("c", "hello world").is_ok());
        assert!(payload("c", "{\"a\": 1}").is_ok());
        assert_eq!(rule(payload("c", "")), Rule::Empty);
        assert_eq!(rule(payload("c", " \t ")), Rule::Blank);
        assert_eq!(rule(payload("c", "a\r\nb")), Rule::LineBreak);
        assert!(payload("c", " a\rb ").is_ok());
        assert_eq!(rule(payload("c", "ab\r")), Rule::TrailingCr);
        let max = 65536 - 5 - 3;
        assert_eq!(max_payload_len("abc"), max);
        assert!(payload("abc", &"p".repeat(max)).is_ok());
        assert_eq!(
            rule(payload("abc", &"p".repeat(max + 1))),
            Rule::TooLong { max }
        );
    }

    #[test]
    fn whitespace_is_exactly_unicode_white_space() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            assert_eq!(is_space(c), c.is_whitespace(), "{:?}", c);
        }
        assert_eq!(rule(payload("c", "\u{3000}\u{A0}")), Rule::Blank);
        assert_eq!(rule(auth_token("a\u{2003}")), Rule::Untrimmed);
    }

    #[test]
    fn numbers() {
        assert!(timeout(0).is_ok());
        assert!(timeout(MAX_SECONDS).is_ok());
        assert_eq!(
            rule(timeout(MAX_SECONDS + 1)),
            Rule::TooLarge { max: MAX_SECONDS }
        );
        assert_eq!(rule(lease(0)), Rule::Zero);
        assert!(lease(1).is_ok());
        assert_eq!(
            rule(lease(MAX_SECONDS + 1)),
            Rule::TooLarge { max: MAX_SECONDS }
        );
        assert_eq!(rule(limit(0)), Rule::Zero);
        assert!(limit(1).is_ok());
    }

    #[test]
    fn messages_name_argument_and_rule() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            key("a b").unwrap_err().to_string(),
            "invalid key: must not contain space, tab, CR or LF"
        );
        assert_eq!(
            channel("a.*").unwrap_err().to_string(),
            "invalid channel: must be literal (no `*` or `>` wildcard)"
        );
        assert_eq!(
            limit(0).unwrap_err().to_string(),
            "invalid limit: must be greater than zero"
        );
    }
}
