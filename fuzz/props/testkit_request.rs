//! The testkit's request parser (it is the oracle of most tests, so it must
//! neither panic nor disagree with the real server) against the
//! re-statement of the Go server's rules in [`super::server_model`].
//!
//! Input: a client's byte stream (any number of requests).
//!
//! Properties: no panic; request by request, the testkit frames the same
//! bytes as the server (needs more, line too long, or three lines of the
//! same length) and accepts exactly the requests the server accepts, with
//! the same values. The one deliberate difference: text that is not UTF-8
//! gets `error` from the testkit (the Go server would take the bytes; no
//! client of ours can send them).

use std::time::Duration;

use super::kit_protocol::{self, Frame as Framed};
use super::server_model::{self, Frame};

/// The testkit's framing of one request, with the request in `Debug` form.
fn kit_frame(buf: &[u8]) -> Framed {
    kit_protocol::frame(buf, Duration::from_secs(33))
}

/// The target.
pub fn run(data: &[u8]) {
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        let kit = kit_frame(rest);
        let real = server_model::frame(rest);
        match (&real, &kit) {
            (Frame::Incomplete, Framed::Incomplete) | (Frame::TooLong, Framed::TooLong) => return,
            (
                Frame::Done { consumed, request },
                Framed::Done {
                    consumed: kit_consumed,
                    request: kit_request,
                },
            ) => {
                assert_eq!(consumed, kit_consumed, "framing of {rest:?}");
                match request {
                    Ok(r) => assert_eq!(
                        Some(format!("{r:?}")),
                        kit_request.as_ref().ok().map(|k| format!("{k:?}")),
                        "the server accepts {:?}",
                        String::from_utf8_lossy(&rest[..*consumed])
                    ),
                    Err(_) => assert!(
                        kit_request.is_err(),
                        "the server answers error to {:?}",
                        String::from_utf8_lossy(&rest[..*consumed])
                    ),
                }
                pos += consumed;
            }
            _ => panic!(
                "server frames {real:?}, testkit {kit:?}: {:?}",
                String::from_utf8_lossy(rest)
            ),
        }
    }
}
