//! Exit statuses (the table is in `cli::EXIT_CODES`) and the error every
//! command returns: a status and a one-line message.

use std::fmt;

use crate::client::ClientError;

/// Success.
pub const OK: i32 = 0;
/// `run -n`: the lock is busy.
pub const BUSY: i32 = 1;
/// Bad usage or an invalid argument (clap's own usage errors use 2 too).
pub const USAGE: i32 = 2;
/// `run`: the lease was lost while the command ran.
pub const LEASE_LOST: i32 = 120;
/// The server could not be reached or went away.
pub const UNREACHABLE: i32 = 121;
/// `listen --timeout` passed before `--count` signals.
pub const LISTEN_TIMEOUT: i32 = 122;
/// `run -w`: the lock was not obtained in time.
pub const WAIT_TIMEOUT: i32 = 124;
/// The server refused the request, or another failure of dflock itself.
pub const FAILURE: i32 = 125;
/// `run`: the command could not be started.
pub const NOT_EXECUTABLE: i32 = 126;
/// `run`: the command was not found.
pub const NOT_FOUND: i32 = 127;

/// A command's failure: the exit status and what to print (nothing when
/// the message is empty).
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub code: i32,
    /// One line, printed as `dflock: <message>`.
    pub message: String,
}

impl Failure {
    /// A failure with a message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(USAGE, message.to_string())
    }

    /// A client error while talking to `addr`, with the status its kind
    /// calls for.
    pub fn client(addr: &str, e: &ClientError) -> Self {
        let code = match e {
            // Connecting, resolving, the TLS handshake, or the connection
            // failing mid-way: the server is not (or no longer) reachable.
            ClientError::Io(_)
            | ClientError::Timeout
            | ClientError::Disconnected
            | ClientError::Unusable => UNREACHABLE,
            ClientError::InvalidArgument(_) | ClientError::Config(_) => USAGE,
            _ => FAILURE,
        };
        Self::new(code, format!("server {addr}: {}", describe(e)))
    }
}

/// A client error as one readable line (IO errors by their message, not
/// their Debug form).
pub fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Io(io) => {
            if let Some(tls) = crate::client::rustls_error(io) {
                format!("TLS: {tls}")
            } else {
                io.to_string()
            }
        }
        ClientError::Timeout => "no reply in time (server not answering)".into(),
        other => other.to_string(),
    }
}
