"""Open-loop HTTP/1.1 load at a fixed rate: latency at 500 or 2,000 requests/s, not at saturation.

    python bench/openloop.py --url http://127.0.0.1:8080/ --rate 500 --duration 10 [-H 'Name: value']

Request i is due at start + i / rate whatever happened to the ones before it (open loop: a slow
answer does not delay the next request, as it does with wrk or `hey -q`, which pace each connection
and so hide the queueing a stall causes). Due requests go out on an idle keep-alive connection,
opening another (up to --connections) when none is idle; when all are busy they wait, and that wait
counts in their latency. Latency runs from the moment a request was due or, when this process woke
late, from the wake-up that found it due (its own timer slack is not the server's), to the last byte
of the answer. Prints one JSON object: the counts, achieved rate, p50/p90/p99/p999/max in ms and how
late the generator woke (its own precision, to judge the figures by).

Why not a packaged tool: Debian has wrk (closed loop), hey (`-q` paces each worker: rate-limited,
closed loop) and no wrk2, oha or vegeta; see docs/decisions.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def due_count(elapsed_s: float, rate: float, total: int) -> int:
    """How many requests are due `elapsed_s` after the start (request i at i / rate, i from 0)."""
    if elapsed_s < 0:
        return 0
    return min(total, math.floor(elapsed_s * rate) + 1)


def next_due_s(sent: int, rate: float) -> float:
    """Offset from the start at which request number `sent` is due."""
    return sent / rate


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (the value at or above `fraction` of them)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies_s: list[float], *, sent: int, errors: int, non_2xx: int, elapsed_s: float) -> dict:
    ordered = sorted(latencies_s)
    out: dict = {
        "sent": sent,
        "completed": len(ordered),
        "errors": errors,
        "non_2xx": non_2xx,
        "achieved_rps": len(ordered) / elapsed_s if elapsed_s > 0 else 0.0,
    }
    if ordered:
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            out[f"{name}_ms"] = percentile(ordered, q) * 1000
        out["max_ms"] = ordered[-1] * 1000
    return out


def request_bytes(url: str, headers: Sequence[tuple[str, str]]) -> bytes:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ResponseReader:
    """Finds where one HTTP/1.1 response ends in a byte stream (Content-Length or chunked)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bool]]:
        """Append data; return (status, closing) of each response it completed, `closing` when the
        server said `Connection: close` (that connection must not carry another request)."""
        self.buffer += data
        done = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return done
            head = bytes(self.buffer[:end]).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            lower = head.lower()
            body_start = end + 4
            if "transfer-encoding: chunked" in lower:
                tail = self.buffer.find(b"\r\n0\r\n\r\n", body_start - 2)
                if tail < 0:
                    return done
                consumed = tail + 7
            else:
                length = 0
                for line in lower.split("\r\n")[1:]:
                    if line.startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if len(self.buffer) < body_start + length:
                    return done
                consumed = body_start + length
            del self.buffer[:consumed]
            done.append((status, "\r\nconnection: close" in lower))


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    non_2xx: int = 0
    wake_lag: list[float] = field(default_factory=list)


class Connection(asyncio.Protocol):
    def __init__(self, stats: Stats, idle: deque[Connection], on_free: asyncio.Event) -> None:
        self.stats, self.idle, self.on_free = stats, idle, on_free
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader()
        self.started: float | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY, as wrk sets it

    def send(self, payload: bytes, started: float) -> None:
        self.started = started
        assert self.transport is not None
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        for status, closing in self.reader.feed(data):
            if self.started is not None:
                self.stats.latencies.append(time.perf_counter() - self.started)
                if not 200 <= status < 400:
                    self.stats.non_2xx += 1
                self.started = None
                if closing:  # the server ends this connection: the next request needs another
                    self.lost = True
                    if self.transport is not None:
                        self.transport.close()
                else:
                    self.idle.append(self)
                self.on_free.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.started is not None:
            self.stats.errors += 1
            self.started = None
        self.on_free.set()


async def run(url: str, rate: float, duration: float, headers: Sequence[tuple[str, str]], cap: int) -> dict:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = request_bytes(url, headers)
    stats = Stats()
    idle: deque[Connection] = deque()
    on_free = asyncio.Event()
    opened: list[Connection] = []
    total = max(1, int(rate * duration))
    sent = 0
    start = time.perf_counter()
    while sent < total:
        woke = now = time.perf_counter()
        due = due_count(now - start, rate, total)
        if due > sent:
            stats.wake_lag.append(now - (start + next_due_s(sent, rate)))
        while sent < due:
            # Due at its slot, or at this wake-up if the generator woke late (its own timer slack is
            # not the server's); a wait for a free connection below is the server's, and counts.
            ready_at = max(start + next_due_s(sent, rate), woke)
            conn = None
            while idle:
                candidate = idle.popleft()
                if not candidate.lost:
                    conn = candidate
                    break
            if conn is None and len([c for c in opened if not c.lost]) < cap:
                _, conn = await loop.create_connection(lambda: Connection(stats, idle, on_free), host, port)
                opened.append(conn)
            if conn is None:  # every connection busy: wait, and the wait counts
                on_free.clear()
                await on_free.wait()
                due = due_count(time.perf_counter() - start, rate, total)  # more fell due meanwhile
                continue
            conn.send(payload, ready_at)
            sent += 1
        delay = start + next_due_s(sent, rate) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    deadline = time.perf_counter() + 10
    while any(c.started is not None for c in opened) and time.perf_counter() < deadline:
        on_free.clear()  # set by every answer and every lost connection
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(on_free.wait(), timeout=max(0.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - start
    unfinished = sum(1 for c in opened if c.started is not None)
    for conn in opened:
        if conn.transport is not None:
            conn.transport.close()
    out = summarize(
        stats.latencies, sent=sent, errors=stats.errors + unfinished, non_2xx=stats.non_2xx, elapsed_s=elapsed
    )
    lag = sorted(stats.wake_lag) or [0.0]
    out.update(
        rate=rate,
        connections_opened=len(opened),
        wake_lag_p50_ms=percentile(lag, 0.5) * 1000,
        wake_lag_p99_ms=percentile(lag, 0.99) * 1000,
    )
    return out


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--connections", type=int, default=64, help="most connections opened")
    parser.add_argument("-H", "--header", type=parse_header, action="append", default=[])
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1:
        parser.error("--rate and --duration must be > 0, --connections >= 1")
    load = run(args.url, args.rate, args.duration, args.header, args.connections)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(load)
    else:
        result = uvloop.run(load)  # finer and cheaper timers than the default loop
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
