//! The TLS path where it is ours: [`dflockd_client::tls::handshake`] (our
//! verifier bookkeeping on top of embedded-tls, and the stream wrapper)
//! against any bytes from the "server", split into reads at a
//! fuzzer-chosen size, with a deterministic RNG.
//!
//! Input: `[config] [server bytes...]`; config bit 0 picks verification
//! against a CA (`fuzz/props/ca.der`) or `Insecure`, bits 1–7 the read size.
//!
//! Properties: no panic, no allocation, the handshake ends (the bytes run
//! out into an error); with a CA it never succeeds, since the bytes cannot
//! prove possession of a key the CA signed; a handshake that does succeed
//! (insecure) gives a stream a `Connection` can use without panicking.

use dflockd_client::Connection;
use dflockd_client::protocol::{Expect, Request};
use dflockd_client::tls::{self, TlsVerify};
use embassy_futures::block_on;

use super::wire::Wire;

/// The CA certificate (ECDSA P-256, self-signed) used in verified mode.
pub const CA_DER: &[u8] = include_bytes!("ca.der");

/// A deterministic "RNG" (xorshift): the fuzzer must see the same run for
/// the same input. Never use this outside a fuzz target.
pub struct FixedRng(u64);

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for FixedRng {}

/// The target.
pub fn run(data: &[u8]) {
    let (config, server) = match data.split_first() {
        Some((&c, rest)) => (c, rest),
        None => (0, &[][..]),
    };
    let verify = if config & 1 == 0 {
        TlsVerify::Ca {
            ca_der: CA_DER,
            server_name: "dflockd.test",
        }
    } else {
        TlsVerify::Insecure
    };
    let chunk = [config >> 1];
    let wire = Wire::new(server, &chunk, false);
    let mut read_buf = vec![0u8; tls::READ_RECORD_BUFFER];
    let mut write_buf = vec![0u8; tls::WRITE_RECORD_BUFFER];
    let before = super::alloc::count();
    let result = block_on(tls::handshake(
        wire,
        &mut read_buf,
        &mut write_buf,
        verify,
        FixedRng(0x2545_f491_4f6c_dd1d),
    ));
    assert_eq!(super::alloc::count(), before, "the handshake allocated");
    match result {
        Err(_) => {}
        Ok(stream) => {
            assert!(
                matches!(verify, TlsVerify::Insecure),
                "handshake verified against the CA from fuzzer bytes"
            );
            let mut conn: Connection<_, 128> = Connection::new(stream);
            let _ = block_on(conn.request(&Request::Ping, Expect::Ok));
        }
    }
}
