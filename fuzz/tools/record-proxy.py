#!/usr/bin/env python3
"""A recording TCP proxy: forwards LISTEN_PORT to TARGET host:port and writes
every connection's bytes to OUT_DIR/<n>.c2s (client to server) and
OUT_DIR/<n>.s2c (server to client). Used to record real dflockd traffic
(the conformance suite against the real servers) for the fuzz seeds; see
fuzz/README.md. Runs until killed.

usage: record-proxy.py LISTEN_PORT TARGET_HOST:PORT OUT_DIR
"""
import os
import socket
import sys
import threading

listen_port, target, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
host, port = target.rsplit(":", 1)
os.makedirs(out_dir, exist_ok=True)
counter = iter(range(1, 1 << 30))
lock = threading.Lock()


def pump(src, dst, path):
    with open(path, "wb") as f:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            f.write(data)
            f.flush()
            try:
                dst.sendall(data)
            except OSError:
                break
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def handle(client):
    with lock:
        n = next(counter)
    try:
        server = socket.create_connection((host, int(port)))
    except OSError:
        client.close()
        return
    base = os.path.join(out_dir, "%05d" % n)
    a = threading.Thread(target=pump, args=(client, server, base + ".c2s"), daemon=True)
    b = threading.Thread(target=pump, args=(server, client, base + ".s2c"), daemon=True)
    a.start()
    b.start()
    a.join()
    b.join()
    client.close()
    server.close()


lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("127.0.0.1", listen_port))
lsock.listen(128)
print("recording 127.0.0.1:%d -> %s into %s" % (listen_port, target, out_dir), flush=True)
while True:
    c, _ = lsock.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
