#!/usr/bin/env python3
"""Turns traffic recorded by record-proxy.py into seed inputs for every fuzz
target (before `cargo fuzz cmin`): see fuzz/README.md.

usage: seeds-from-traffic.py OUT_DIR PLAIN_RECORDING_DIR... [--tls TLS_RECORDING_DIR...]
Writes OUT_DIR/<target>/<sha1 of the input>.
"""
import hashlib
import os
import sys

out = sys.argv[1]
plain, tls, dst = [], [], None
dst = plain
for a in sys.argv[2:]:
    if a == "--tls":
        dst = tls
    else:
        dst.append(a)

# Operation codes of fuzz/props/line_reader.rs.
ACQUIRE, ENQUEUE, RENEW, EMIT, PING, STATS, NEXT_SIGNAL = 0, 1, 2, 3, 4, 5, 6
OP = {b"l": ACQUIRE, b"sl": ACQUIRE, b"w": ACQUIRE, b"sw": ACQUIRE,
      b"e": ENQUEUE, b"se": ENQUEUE, b"n": RENEW, b"sn": RENEW,
      b"signal": EMIT, b"stats": STATS | 8}


def save(target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def line_reader_input(config, chunks, ops, stream):
    return bytes([config, len(chunks)]) + bytes(chunks) + bytes([len(ops)]) + bytes(ops) + stream


def requests(c2s):
    lines = c2s.split(b"\n")
    return [lines[i:i + 3] for i in range(0, len(lines) - 2, 3)]


conns = []
for d in plain:
    for name in sorted(os.listdir(d)):
        if name.endswith(".c2s"):
            base = os.path.join(d, name[:-4])
            c2s = open(base + ".c2s", "rb").read()
            s2c = open(base + ".s2c", "rb").read() if os.path.exists(base + ".s2c") else b""
            conns.append((c2s, s2c))

for n, (c2s, s2c) in enumerate(conns):
    reqs = requests(c2s)
    lines = [l for l in s2c.split(b"\n") if l]
    for l in lines:
        save("reply_parser", l)
    pushes = [l[4:] for l in lines if l.startswith(b"sig ")]
    if pushes:
        save("signal_push", bytes([3, 1 + n % 16]) + b"\n".join(pushes))
        save("signal_push", bytes([1, 7]) + b"\n".join(pushes))
    for r in reqs:
        save("validate_args", b"\n".join(r))
    if c2s:
        save("testkit_request", c2s)
    ops = [OP.get(r[0], PING) for r in reqs][:31]
    ops += [NEXT_SIGNAL] * min(len(pushes), 31 - len(ops))
    if ops and s2c:
        save("line_reader", line_reader_input(3, [1 + n % 13], ops, s2c))
        save("line_reader", line_reader_input(2 | 4, [3, 64], ops, s2c))

for d in tls:
    for name in sorted(os.listdir(d)):
        if name.endswith(".s2c"):
            s2c = open(os.path.join(d, name), "rb").read()
            save("tls_handshake", bytes([0]) + s2c)
            save("tls_handshake", bytes([1 | (5 << 1)]) + s2c)
for t in sorted(os.listdir(out)):
    print(t, len(os.listdir(os.path.join(out, t))))
