//! Logging shim: routes to `defmt` or `log`, or compiles to nothing.
//!
//! Arguments must be formattable by both back ends (`{}` / `{:?}` of plain
//! values). Nothing secret (auth tokens, whole lease tokens) is ever logged.
#![allow(unused_macros)]

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("the `defmt` and `log` features are mutually exclusive: enable at most one");

macro_rules! trace {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::trace!($($arg)*);
        #[cfg(feature = "log")]
        ::log::trace!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = || { let _ = (__unused!($($arg)*)); }; }
    }};
}

macro_rules! debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::debug!($($arg)*);
        #[cfg(feature = "log")]
        ::log::debug!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = || { let _ = (__unused!($($arg)*)); }; }
    }};
}

macro_rules! warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($($arg)*);
        #[cfg(feature = "log")]
        ::log::warn!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = || { let _ = (__unused!($($arg)*)); }; }
    }};
}

/// Swallows the format string and uses every argument, so that variables
/// used only in log lines do not warn when logging is off.
macro_rules! __unused {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {
        ($(&$arg,)*)
    };
}
