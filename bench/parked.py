"""Memory of one worker holding parked client connections (silent, or with a partial request head).

    python3 bench/parked.py [--connections 3000] [--head-bytes 31744] [--max-connections N] [--only body]

Starts the sidecar (one worker, loopback, generous timeouts so nothing is closed while measuring),
opens N connections that send nothing, then N that each send a request line and one header of
`--head-bytes` without the blank line, then N that send a whole head and all but one byte of a body
of AUTHCAR_REQUEST_BUFFER_BYTES (held by the sidecar while it reads the body whole), and prints the
worker's RSS before and after each set, as MiB per 1,000 connections. With --max-connections below
N, only that many are taken and the rest wait in the listen backlog: the growth stops at the limit.
Loopback only; the client runs in this process; nothing reaches an upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.process import SidecarProcess, start_sidecar_process  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def settle(pid: int) -> float:
    """RSS once it stops moving (the worker has read everything the clients sent)."""
    previous = -1.0
    for _ in range(40):
        await asyncio.sleep(0.25)
        current = rss_mib(pid)
        if abs(current - previous) < 0.05:
            return current
        previous = current
    return previous


async def park(port: int, count: int, payload: bytes) -> list[asyncio.StreamWriter]:
    writers = []
    for start in range(0, count, 200):
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(200, count - start)))
        )
        for _, writer in opened:
            if payload:
                writer.write(payload)
            writers.append(writer)
        await asyncio.gather(*(w.drain() for _, w in opened))
    return writers


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def measure(sidecar: SidecarProcess, count: int, head_bytes: int, only: str) -> None:
    pid = sidecar.process.pid
    partial = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * (head_bytes - 36)
    body = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n" + b"b" * 65535
    baseline = await settle(pid)
    print(f"worker RSS at rest: {baseline:.1f} MiB")
    scenarios = {
        "silent": ("silent", b""),
        "head": (f"partial head of {len(partial)} bytes", partial),
        "body": ("small body all but its last byte", body),
    }
    for name, (label, payload) in scenarios.items():
        if only not in ("all", name):
            continue
        before = await settle(pid)
        writers = await park(sidecar.port, count, payload)
        after = await settle(pid)
        per_thousand = (after - before) / count * 1000
        print(
            f"{count} {label}: {before:.1f} -> {after:.1f} MiB"
            f" (+{after - before:.1f}), {per_thousand:.1f} MiB per 1,000 connections"
        )
        await close_all(writers)
        await asyncio.sleep(1.0)
        print(f"  after closing them: {await settle(pid):.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--head-bytes", type=int, default=31 * 1024)
    parser.add_argument("--only", choices=("all", "silent", "head", "body"), default="all")
    parser.add_argument(
        "--max-connections", type=int, default=0, help="AUTHCAR_MAX_CONNECTIONS (default: above N)"
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = {
        "AUTHCAR_UPSTREAM": "http://127.0.0.1:9",  # never reached: no head completes
        "AUTHCAR_ALLOW_ANONYMOUS": "true",
        "AUTHCAR_ACCESS_LOG": "false",
        "AUTHCAR_REQUEST_HEADER_TIMEOUT": "600",
        "AUTHCAR_REQUEST_BODY_TIMEOUT": "600",
        "AUTHCAR_REQUEST_BODY_MIN_RATE": "0",
        "AUTHCAR_MAX_CONNECTIONS": str(args.max_connections or args.connections + 100),
    }
    with tempfile.TemporaryDirectory() as log_dir:
        sidecar = start_sidecar_process(Path(log_dir), env)
        try:
            started = time.monotonic()
            asyncio.run(measure(sidecar, args.connections, args.head_bytes, args.only))
            print(f"({time.monotonic() - started:.0f} s)")
        finally:
            sidecar.stop()


if __name__ == "__main__":
    main()
