#!/usr/bin/env python3
"""Drive the dflockd-wasi-edge function with concurrent requests and check,
through the lock server, that no more than LIMIT requests held a slot at once.

Two independent checks:

* the function itself: every slot holder takes one of LIMIT exclusive "seat"
  locks while it works and answers 500 if none is free, which can only happen
  with more than LIMIT concurrent slot holders. So: no 500 may come back;
* the server: a sampler polls `stats` and records the highest number of
  holders of the semaphore (must be <= LIMIT, and == LIMIT to show that the
  run really was concurrent) and of waiters (contention).

Exits non-zero with a message on any failure. Standard library only.
"""

import argparse
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request


def stats(addr, timeout=2.0):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"stats\n_\n\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("stats: connection closed")
            buf += chunk
    line = buf.decode().strip()
    if not line.startswith("ok "):
        raise RuntimeError(f"stats: unexpected reply {line!r}")
    return json.loads(line[3:])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="edge function base URL")
    ap.add_argument("--server", required=True, help="dflockd host:port for stats")
    ap.add_argument("--key", default="wasi-edge.backend")
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--work-ms", type=int, default=400)
    ap.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    ap.add_argument(
        "--expect-overcommit",
        action="store_true",
        help="self-test of the seat check: the function runs with a limit above 2, "
        "so some requests must answer 500 overcommitted",
    )
    args = ap.parse_args()

    sampled = {"max_holders": 0, "max_waiters": 0, "samples": 0, "errors": 0, "bad": None}
    done = threading.Event()

    def sampler():
        while not done.is_set():
            try:
                st = stats(args.server)
            except Exception as e:  # noqa: BLE001 - report, keep sampling
                sampled["errors"] += 1
                sampled["bad"] = f"stats failed: {e}"
                time.sleep(0.05)
                continue
            sampled["samples"] += 1
            for sem in st.get("semaphores", []):
                if sem.get("key") != args.key:
                    continue
                if sem.get("limit") != args.limit:
                    sampled["bad"] = f"semaphore {args.key} has limit {sem.get('limit')}"
                sampled["max_holders"] = max(sampled["max_holders"], sem.get("holders", 0))
                sampled["max_waiters"] = max(sampled["max_waiters"], sem.get("waiters", 0))
            time.sleep(0.01)

    results = [None] * args.requests
    barrier = threading.Barrier(args.requests)

    def request(i):
        url = f"{args.url}/?work_ms={args.work_ms}&n={i}"
        barrier.wait(timeout=30)
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as r:
                results[i] = (r.status, r.read().decode(errors="replace").strip(), time.monotonic() - t0)
        except urllib.error.HTTPError as e:
            results[i] = (e.code, e.read().decode(errors="replace").strip(), time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - a failed request is a result
            results[i] = (None, f"{type(e).__name__}: {e}", time.monotonic() - t0)

    st = threading.Thread(target=sampler, daemon=True)
    st.start()
    threads = [threading.Thread(target=request, args=(i,), daemon=True) for i in range(args.requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.timeout + 35)
    done.set()
    st.join(timeout=5)

    counts = {}
    for r in results:
        key = r[0] if r else "no answer"
        counts[key] = counts.get(key, 0) + 1
    print(f"{args.requests} concurrent requests, work {args.work_ms} ms, limit {args.limit}:")
    for code in sorted(counts, key=str):
        print(f"  {code}: {counts[code]}")
    seats = {}
    for r in results:
        if r and r[0] == 200:
            seat = r[1].split("seat=")[1].split()[0] if "seat=" in r[1] else "?"
            seats[seat] = seats.get(seat, 0) + 1
    print(f"  seats used by the 200s: {dict(sorted(seats.items()))}")
    print(
        f"  server stats: {sampled['samples']} samples, max holders of {args.key} "
        f"= {sampled['max_holders']}, max waiters = {sampled['max_waiters']}"
    )

    failures = []
    if args.expect_overcommit:
        over = [r for r in results if r and r[0] == 500 and r[1].startswith("overcommitted")]
        if not over:
            failures.append("the seat check missed a limit above 2: no 500 overcommitted")
        for i, r in enumerate(results):
            if r is None or r[0] not in (200, 500, 503):
                failures.append(f"request {i}: {r!r}")
    else:
        for i, r in enumerate(results):
            if r is None:
                failures.append(f"request {i}: no answer")
            elif r[0] not in (200, 503):
                failures.append(f"request {i}: {r[0]} {r[1]!r}")
    if counts.get(200, 0) < 1:
        failures.append("no request got a slot (no 200)")
    if sampled["samples"] == 0:
        failures.append("the stats sampler got no sample")
    if sampled["bad"] and sampled["errors"] == 0:
        failures.append(sampled["bad"])
    if sampled["max_holders"] > args.limit:
        failures.append(f"server reported {sampled['max_holders']} holders (> {args.limit})")
    if sampled["max_holders"] < args.limit:
        failures.append(
            f"never saw {args.limit} holders at once (max {sampled['max_holders']}): no real concurrency"
        )
    if counts.get(503, 0) == 0 and sampled["max_waiters"] == 0:
        failures.append("no contention: no 503 and no waiter seen; raise --requests or --work-ms")
    if failures:
        print("FAILED:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    if args.expect_overcommit:
        print(
            f"ok: with limit {args.limit} the seat check caught {counts.get(500, 0)} "
            "overcommitted requests (500), as it must"
        )
    else:
        print(
            f"ok: no request found both seats taken (no 500), at most {args.limit} holders; "
            f"{counts.get(200, 0)} served, {counts.get(503, 0)} got 503"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
