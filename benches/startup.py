#!/usr/bin/env python3
"""Startup to ready: the time from spawning flux-auth to its first 200 on /health/live, on the
JSON-file store with a fresh, empty data folder each run (BENCHMARKS.md, "Operability").

    cargo build --release && python3 benches/startup.py [BINARY] [RUNS]

BINARY defaults to target/release/flux-auth, RUNS to 20. Only loopback is used. The poll is a raw
HTTP/1.1 request on a new connection every 0.5 ms, so the figure includes at most that much
polling slack. Standard library only.
"""

import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PATIENCE_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def one_run(binary: str) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        env = {
            "CONFIG_FILE": "/dev/null",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "JWT_SECRET": secrets.token_urlsafe(48),
            "DATA_DIR": os.path.join(folder, "data"),
            "LOG_FORMAT": "json",
        }
        started = time.perf_counter()
        child = subprocess.Popen(
            [binary], env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while not live(port):
                if child.poll() is not None:
                    sys.exit(f"flux-auth exited with {child.returncode} before it was live")
                if time.perf_counter() - started > PATIENCE_S:
                    sys.exit("flux-auth was not live within 30 s")
                time.sleep(0.0005)
            elapsed = time.perf_counter() - started
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=PATIENCE_S)
        if child.returncode != 0:
            sys.exit(f"flux-auth exited with {child.returncode} after SIGTERM")
        return elapsed * 1000.0


def main() -> None:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/flux-auth")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    times = sorted(one_run(binary) for _ in range(runs))
    p90 = times[max(0, round(0.9 * len(times)) - 1)]
    print(f"{binary}: {runs} starts, spawn to first 200 on /health/live (ms)")
    print(
        f"min {times[0]:.1f}  median {statistics.median(times):.1f}  "
        f"p90 {p90:.1f}  max {times[-1]:.1f}"
    )


if __name__ == "__main__":
    main()
