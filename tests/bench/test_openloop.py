"""The open-loop generator's schedule, response framing and latency accounting (bench/openloop.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import pytest
from openloop import (
    Connection,
    ResponseReader,
    Stats,
    due_count,
    next_due_s,
    percentile,
    request_bytes,
    run,
    summarize,
)


def test_request_i_is_due_at_i_over_rate_from_the_start() -> None:
    assert due_count(-0.001, 500, 100) == 0
    assert due_count(0.0, 500, 100) == 1  # request 0 goes at once
    assert due_count(0.0019, 500, 100) == 1
    assert due_count(0.002, 500, 100) == 2
    assert due_count(1.0, 500, 100) == 100  # never more than the total
    assert next_due_s(250, 500) == pytest.approx(0.5)


def test_the_schedule_does_not_depend_on_how_long_answers_took() -> None:
    # Open loop: what is due at t is a function of t alone. Waking late sends the backlog at once.
    assert due_count(0.1, 2000, 10_000) == 201
    assert [due_count(t / 1000, 1000, 50) for t in (0, 5, 5, 30)] == [1, 6, 6, 31]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.999) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_summary_reports_milliseconds_and_the_achieved_rate() -> None:
    out = summarize([0.001] * 99 + [0.050], sent=100, errors=0, non_2xx=0, elapsed_s=0.2)
    assert out["p50_ms"] == pytest.approx(1.0)
    assert out["max_ms"] == pytest.approx(50.0)
    assert out["achieved_rps"] == pytest.approx(500.0)


def test_the_reader_splits_responses_however_the_bytes_arrive() -> None:
    one = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    chunked = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    empty = b"HTTP/1.1 204 No Content\r\n\r\n"
    closing = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    stream = one + chunked + empty + one + closing
    for cut in range(1, len(stream)):
        reader = ResponseReader()
        statuses = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert statuses == [(200, False), (401, False), (204, False), (200, False), (503, True)], cut
        assert not reader.buffer


def test_the_request_carries_the_path_host_and_headers() -> None:
    raw = request_bytes("http://127.0.0.1:8080/a?b=1", [("Authorization", "Bearer t")])
    assert raw == b"GET /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer t\r\n\r\n"


async def test_a_stalled_answer_shows_in_the_latency_of_the_requests_queued_behind_it() -> None:
    """One connection allowed, the server holds its first answer 300 ms: a closed-loop tool would
    send nothing meanwhile and report one slow request; the open loop keeps the schedule, so the
    requests due during the stall wait, and their wait is counted."""
    answered = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if answered == 0:
                    await asyncio.sleep(0.3)
                answered += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        out = await run(f"http://127.0.0.1:{port}/", rate=100, duration=0.5, headers=[], cap=1)
    assert out["sent"] == out["completed"] == 50
    assert out["errors"] == out["non_2xx"] == 0
    assert out["connections_opened"] == 1
    # Requests due at 10, 20, ... 290 ms waited for the stall to end at 300 ms: about 30 of 50
    # answered at least 100 ms after they were due (a lower bound set by the stall, not by speed).
    assert out["p50_ms"] >= 10
    assert out["max_ms"] >= 290


async def test_a_connection_the_server_closes_is_not_used_again() -> None:
    """A server answering `Connection: close` (Apache at its connection limit does) ends that
    connection: sending the next request on it would count a server error that never happened."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        out = await run(f"http://127.0.0.1:{port}/", rate=200, duration=0.2, headers=[], cap=4)
    assert out["errors"] == 0
    assert out["completed"] == out["sent"] == 40
    assert out["connections_opened"] == 40  # one per request, none reused after its close


class StandInTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("head", "reused"), [(b"Connection: close\r\n", False), (b"", True)])
def test_an_answered_connection_goes_back_to_the_idle_pool_unless_the_server_closes_it(
    head: bytes, reused: bool
) -> None:
    stats, idle, event = Stats(), deque(), asyncio.Event()
    conn = Connection(stats, idle, event)
    transport = StandInTransport()
    conn.transport = transport  # type: ignore[assignment]
    conn.send(b"GET / HTTP/1.1\r\n\r\n", time.perf_counter())
    conn.data_received(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok")
    assert len(stats.latencies) == 1
    assert event.is_set()
    assert (conn in idle) is reused
    assert transport.closed is not reused
    assert conn.lost is not reused
