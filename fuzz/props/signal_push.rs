//! `sig` pushes only: every input line becomes `sig <line>`, read through
//! the connection's push path (`next_signal` and `try_next_signal`) with
//! its bounded queue, and through `parse_push` alone.
//!
//! Input: `[config] [read size] [line \n line \n ...]`.
//!
//! Properties: those of `line_reader` (the model decides which pushes are
//! queued, dropped for want of room or for being malformed, and in what
//! order they come out), plus those of the push parser in `reply_parser`.

use super::line_reader::{self, Input, op};

/// The target.
pub fn run(data: &[u8]) {
    let (head, body) = data.split_at(data.len().min(2));
    let config = head.first().copied().unwrap_or(0);
    let chunk = head.get(1).copied().unwrap_or(0);
    let mut stream = Vec::with_capacity(body.len() + 64);
    let mut ops = Vec::new();
    for line in body.split(|&b| b == b'\n').take(31) {
        super::reply_parser::check_push_line(line);
        stream.extend_from_slice(b"sig ");
        stream.extend_from_slice(line);
        stream.push(b'\n');
        // Odd first byte: read it now; even: leave it queued for a while.
        ops.push(match line.first() {
            Some(b) if b % 2 == 1 => op::NEXT_SIGNAL,
            _ => op::TRY_SIGNAL,
        });
    }
    ops.truncate(31);
    ops.push(op::NEXT_SIGNAL);
    let input = Input::encode(config, &[chunk], &ops, &stream);
    line_reader::run(&input);
}
