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
/// Cap on every other request line, in bytes; servers v1.11 to v1.14
/// cap every line here, v2 every line but the auth token. A longer line
/// gets `error` and the server closes the connection.
pub const MAX_LINE: usize = 256;
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
    /// A cluster client's stable ref (`stable-ref`).
    StableRef,
    /// A cluster client's member list.
    Members,
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
            Arg::StableRef => "stable ref",
            Arg::Members => "cluster members",
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
    /// A byte outside printable ASCII (0x20..=0x7e).
    NotPrintable,
    /// Leading or trailing spaces (the server trims them, so they would
    /// silently name another identity).
    SurroundingSpace,
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
            Rule::TrailingCr => write!(f, "invalid {arg}: must not end with CR"),
            Rule::TooLong { max } => write!(f, "invalid {arg}: longer than {max} bytes"),
            Rule::TooLarge { max } => write!(f, "invalid {arg}: larger than {max}"),
            Rule::Zero => write!(f, "invalid {arg}: must be greater than zero"),
            Rule::Wildcard => {
                write!(f, "invalid {arg}: must be literal (no `*` or `>` wildcard)")
            }
            Rule::NotPrintable => write!(f, "invalid {arg}: only printable ASCII is allowed"),
            Rule::SurroundingSpace => {
                write!(f, "invalid {arg}: must not start or end with a space")
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

/// An authentication token: not empty or blank, no CR or LF, within the
/// 64 KiB line. Inner spaces are fine: the server compares the argument
/// with surrounding whitespace trimmed, so `--auth-token "correct horse
/// battery"` is a valid server setting. The token is sent as given.
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
    if is_blank(token) {
        return Err(InvalidArgument::new(Arg::AuthToken, Rule::Blank));
    }
    Ok(())
}

/// A queue group as the server sees it: without surrounding whitespace
/// (Go's `strings.TrimSpace`). `"g "` and `"g"` name the same group; the
/// client sends and remembers the trimmed form.
pub fn trim_group(group: &str) -> &str {
    group.trim_matches(is_space)
}

/// A queue group: once trimmed of surrounding whitespace (see
/// [`trim_group`]), non-blank, no LF and at most 256 bytes.
pub fn group(group: &str) -> Result {
    if group.is_empty() {
        return Err(InvalidArgument::new(Arg::Group, Rule::Empty));
    }
    // The group is sent trimmed, so only what is left counts: a CR inside
    // is part of the name (the server keeps it), an LF inside would end
    // the line; either at an end is trimmed like other whitespace.
    let trimmed = trim_group(group);
    if trimmed.is_empty() {
        return Err(InvalidArgument::new(Arg::Group, Rule::Blank));
    }
    if trimmed.bytes().any(|b| b == b'\n') {
        return Err(InvalidArgument::new(Arg::Group, Rule::LineBreak));
    }
    if trimmed.len() > MAX_GROUP_LEN {
        return Err(InvalidArgument::new(
            Arg::Group,
            Rule::TooLong { max: MAX_GROUP_LEN },
        ));
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

/// Largest semaphore limit: 1<<20 (1 048 576), the cap of dflockd v2, which
/// answers a larger limit with a bare `error`. Older servers accept larger
/// limits, but a limit that only some server generations accept would
/// break when the fleet is upgraded, so the client refuses it for all.
pub const MAX_SEMAPHORE_LIMIT: u32 = 1 << 20;

/// A semaphore limit: greater than zero and at most
/// [`MAX_SEMAPHORE_LIMIT`].
pub fn limit(limit: u32) -> Result {
    if limit == 0 {
        return Err(InvalidArgument::new(Arg::Limit, Rule::Zero));
    }
    if limit > MAX_SEMAPHORE_LIMIT {
        return Err(InvalidArgument::new(
            Arg::Limit,
            Rule::TooLarge {
                max: MAX_SEMAPHORE_LIMIT as u64,
            },
        ));
    }
    Ok(())
}

/// Longest stable ref a v2 server accepts, in bytes.
pub const MAX_STABLE_REF: usize = 64;

/// A stable ref (`stable-ref`): 1 to [`MAX_STABLE_REF`] bytes of printable
/// ASCII (0x20..=0x7e), as the v2 server checks it, and no leading or
/// trailing space (the server trims them).
pub fn stable_ref(r: &str) -> Result {
    let err = |rule| Err(InvalidArgument::new(Arg::StableRef, rule));
    if r.is_empty() {
        return err(Rule::Empty);
    }
    if r.len() > MAX_STABLE_REF {
        return err(Rule::TooLong {
            max: MAX_STABLE_REF,
        });
    }
    if !r.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return err(Rule::NotPrintable);
    }
    if r.starts_with(' ') || r.ends_with(' ') {
        return err(Rule::SurroundingSpace);
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
        // The server trims the argument and compares: inner spaces are fine.
        assert!(auth_token("correct horse battery").is_ok());
        assert!(auth_token(" padded\t").is_ok());
        assert_eq!(rule(auth_token("ab\n")), Rule::LineBreak);
        assert_eq!(rule(auth_token("a\rb")), Rule::LineBreak);
        assert_eq!(rule(auth_token(" \t\u{3000}")), Rule::Blank);
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
        assert!(group("\ng\n").is_ok(), "an LF at an end is trimmed");
        assert_eq!(rule(group(&"g".repeat(257))), Rule::TooLong { max: 256 });
        // Trimmed as the server trims it.
        assert_eq!(trim_group(" g\t\u{A0}"), "g");
        assert_eq!(trim_group("two words "), "two words");
        let padded = std::format!("  {}  ", "g".repeat(256));
        assert!(group(&padded).is_ok());
        assert_eq!(rule(group("\u{3000} ")), Rule::Blank);
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
        assert_eq!(rule(auth_token("\u{2003}\u{85}")), Rule::Blank);
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
        // Defect: v2 refuses limits above 1<<20 with a bare `error`; the
        // client refuses them before sending, naming the limit.
        assert!(limit(MAX_SEMAPHORE_LIMIT).is_ok());
        assert_eq!(
            rule(limit(MAX_SEMAPHORE_LIMIT + 1)),
            Rule::TooLarge { max: 1 << 20 }
        );
        assert_eq!(
            std::string::ToString::to_string(&limit(MAX_SEMAPHORE_LIMIT + 1).unwrap_err()),
            "invalid limit: larger than 1048576"
        );
        assert!(stable_ref("client-7 a").is_ok());
        assert!(stable_ref(&"r".repeat(64)).is_ok());
        assert_eq!(rule(stable_ref("")), Rule::Empty);
        assert_eq!(rule(stable_ref(&"r".repeat(65))), Rule::TooLong { max: 64 });
        assert_eq!(rule(stable_ref("a\tb")), Rule::NotPrintable);
        assert_eq!(rule(stable_ref("é")), Rule::NotPrintable);
        assert_eq!(rule(stable_ref(" a")), Rule::SurroundingSpace);
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
