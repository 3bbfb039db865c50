//! Any byte stream, in any read sizes, through the connection's line
//! reader, push queue and stats streaming: no panic, no hang, bounded memory.
#![no_main]

use dflockd_client::testing::Scripted;
use dflockd_client::{Connection, Kind};
use embassy_futures::block_on;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let mut io = Scripted::new(input);
    io.read_chunk = usize::from(chunk.max(1));
    let mut conn: Connection<Scripted, 64, 128> = Connection::new(io);
    block_on(async {
        for i in 0..64u32 {
            let r = match i % 5 {
                0 => conn.acquire(Kind::Lock, "k", 1, None).await.map(|_| ()),
                1 => conn.renew(Kind::Lock, "k", &"0123456789abcdef0123456789abcdef".parse().unwrap(), None).await.map(|_| ()),
                2 => conn.emit("c", "p").await.map(|_| ()),
                3 => {
                    let mut out = [0u8; 96];
                    conn.stats(&mut out).await.map(|_| ())
                }
                _ => conn.next_signal().await.map(|_| ()),
            };
            if let Err(e) = r {
                if !e.is_recoverable() {
                    break;
                }
            }
        }
        while conn.try_next_signal().is_some() {}
    });
});
