//! The protocol layer: encoding every request, parsing every reply line,
//! validating arguments as the server does, and lease tokens.
//!
//! Pure functions over byte slices: no IO, no allocation, no panics on any
//! input. The [`Connection`](crate::Connection) drives them over a transport.

mod fence;
mod reply;
mod request;
mod token;
pub mod validate;

pub use fence::Fence;
pub use reply::{
    Expect, Grant, ProtocolError, Reply, Signal, Status, is_push, parse_push, parse_reply,
    parse_u64, trim_cr,
};
pub(crate) use request::ARG_SCRATCH;
pub use request::{BufferTooSmall, EncodeError, Kind, Request, Secret};
pub use token::{BadToken, TOKEN_LEN, Token};
pub use validate::{Arg, InvalidArgument, Rule};
