"""Lab HTTP client: asks VIP:PORT once per source address per round.

Usage: client.py VIP PORT ROUNDS DEADLINE_S CONN_TIMEOUT_S SOURCES_FILE

SOURCES_FILE holds one IPv4 source address per line. Each attempt is a fresh
TCP connection bound to (source, 0) that sends one GET and reads the whole
response; the first body line is the answering server's name. A failed
attempt is recorded as null plus an error message; there are no retries.
Rounds run one after another, each spread over a small thread pool. Nothing
new starts after the deadline, so lists may end short when it is hit.

Prints one JSON object:
{"results": {"SRC": ["rs1", null, ...]}, "errors": {"SRC": [[ROUND, "msg"]]},
 "rounds": N, "rounds_completed": M, "deadline_hit": bool, "elapsed_s": F}
"""

import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

WORKERS = 32
REQUEST = b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n"
SKIPPED = object()


def fetch(source, vip, port, timeout):
    """One request; returns the server name or raises."""
    start = time.monotonic()
    chunks = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((vip, port))
        sock.sendall(REQUEST)
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise TimeoutError(f"response incomplete after {timeout:.3g}s")
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    response = b"".join(chunks)
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"malformed response ({len(response)} bytes)")
    status_line = head.split(b"\r\n", 1)[0]
    status = status_line.split()
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"unexpected status line {status_line!r}")
    name = body.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not name:
        raise ValueError("empty body")
    return name


def attempt(source, vip, port, conn_timeout, deadline):
    """Returns (name, None), (None, error) or (SKIPPED, None) past the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        return SKIPPED, None
    try:
        return fetch(source, vip, port, min(conn_timeout, left)), None
    except Exception as exc:  # a failure is data
        return None, f"{type(exc).__name__}: {exc}"


def main():
    if len(sys.argv) != 7:
        sys.exit("usage: client.py VIP PORT ROUNDS DEADLINE_S CONN_TIMEOUT_S SOURCES_FILE")
    vip = sys.argv[1]
    port = int(sys.argv[2])
    rounds = int(sys.argv[3])
    started = time.monotonic()
    deadline = started + float(sys.argv[4])
    conn_timeout = float(sys.argv[5])
    with open(sys.argv[6]) as f:
        sources = [line.strip() for line in f if line.strip()]

    results = {source: [] for source in sources}
    errors = {}
    completed = 0
    deadline_hit = False
    with ThreadPoolExecutor(max_workers=max(1, min(WORKERS, len(sources)))) as pool:
        for rnd in range(rounds):
            futures = [
                pool.submit(attempt, source, vip, port, conn_timeout, deadline)
                for source in sources
            ]
            skipped = False
            for source, future in zip(sources, futures):
                name, error = future.result()
                if name is SKIPPED:
                    skipped = True
                    continue
                results[source].append(name)
                if error is not None:
                    errors.setdefault(source, []).append([rnd, error])
            if skipped:
                deadline_hit = True
                break
            completed += 1
            if time.monotonic() >= deadline and rnd + 1 < rounds:
                deadline_hit = True
                break

    json.dump(
        {
            "results": results,
            "errors": errors,
            "rounds": rounds,
            "rounds_completed": completed,
            "deadline_hit": deadline_hit,
            "elapsed_s": round(time.monotonic() - started, 6),
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
