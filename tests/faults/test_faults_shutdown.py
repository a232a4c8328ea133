"""SIGTERM while uploads stream through the sidecar process.

docs/operations.md: on SIGTERM authcar fails readiness, stops accepting connections once
AUTHCAR_SHUTDOWN_DELAY is over, gives in-flight requests AUTHCAR_SHUTDOWN_GRACE_PERIOD, and exits 0.
So an upload under way completes whole (the application gets every byte, the client its answer), or,
past the grace period, ends with the connection closed; never a 500, never a half body that the
application takes for a whole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
from pathlib import Path

from tests.faults.support import start
from tests.support.process import SidecarProcess
from tests.support.rawhttp import RawResponse, parse_response, read_until_closed
from tests.support.upstream_app import RunningUpstream

CHUNK = 64 * 1024
CHUNKS = 24  # 1.5 MiB per upload: far over AUTHCAR_REQUEST_BUFFER_BYTES, so it streams


class Upload:
    """A client that streams a Content-Length body in paced chunks, on its own connection."""

    def __init__(self, port: int, pause: float, hold: asyncio.Event | None = None) -> None:
        self.port = port
        self.pause = pause
        self.hold = hold  # halfway through, wait for this (the uploads stay in flight until it is set)
        self.body = bytes(range(256)) * (CHUNK * CHUNKS // 256)
        self.sent = 0
        self.started = asyncio.Event()
        self.halfway = asyncio.Event()

    async def run(self, stall_after: int | None = None) -> RawResponse | None:
        """The answer, or None when the connection closed without one."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"POST /upload HTTP/1.1\r\nHost: sidecar.test\r\nContent-Length: {len(self.body)}\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
        try:
            with contextlib.suppress(ConnectionError):
                writer.write(head.encode())
                for index in range(CHUNKS):
                    if stall_after is not None and index == stall_after:
                        break  # a client that stops sending and waits: cut by the grace period
                    if index == CHUNKS // 2 and self.hold is not None:
                        self.halfway.set()
                        await self.hold.wait()
                    writer.write(self.body[index * CHUNK : (index + 1) * CHUNK])
                    await writer.drain()
                    self.sent += CHUNK
                    self.started.set()
                    await asyncio.sleep(self.pause)
            data = await read_until_closed(reader, wait=30)
            return parse_response(data) if data else None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def draining_sidecar(
    upstream: RunningUpstream, log_dir: Path, *, grace_period: float
) -> SidecarProcess:
    env = {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_ALLOW_ANONYMOUS": "true",
        "AUTHCAR_SHUTDOWN_GRACE_PERIOD": str(grace_period),
    }
    return await start(log_dir, env)


async def connection_refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_uploads_in_flight_complete_whole_and_new_connections_are_refused(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    sidecar = await draining_sidecar(upstream, tmp_path, grace_period=30)
    try:
        hold = asyncio.Event()
        uploads = [Upload(sidecar.port, pause=0.02, hold=hold) for _ in range(3)]
        running = [asyncio.create_task(upload.run()) for upload in uploads]
        await asyncio.wait_for(asyncio.gather(*(u.halfway.wait() for u in uploads)), 20)
        sidecar.signal(signal.SIGTERM)

        # While the uploads are held halfway, the listener goes: nothing new gets in.
        for _ in range(200):
            if await connection_refused(sidecar.port):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("a new connection was still accepted while draining")
        assert all(u.sent < len(u.body) for u in uploads)
        hold.set()  # the rest of each body, within the grace period

        answers = await asyncio.wait_for(asyncio.gather(*running), 60)
        for upload, answer in zip(uploads, answers, strict=True):
            assert answer is not None
            assert answer.status == 200, answer
            assert json.loads(answer.body) == {
                "bytes": len(upload.body),
                "sha256": hashlib.sha256(upload.body).hexdigest(),
            }
        assert await asyncio.to_thread(sidecar.wait, 30) == 0
    finally:
        sidecar.stop()
    assert [s.raw_path for s in upstream.seen] == ["/upload"] * 3


async def test_an_upload_stalled_past_the_grace_period_is_cut_and_the_process_exits_0(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    sidecar = await draining_sidecar(upstream, tmp_path, grace_period=1)
    try:
        upload = Upload(sidecar.port, pause=0.02)
        stalled = asyncio.create_task(upload.run(stall_after=CHUNKS // 2))
        await asyncio.wait_for(upload.started.wait(), 20)
        await _until_sent(upload, (CHUNKS // 2) * CHUNK)
        sidecar.signal(signal.SIGTERM)
        assert await asyncio.to_thread(sidecar.wait, 30) == 0
        answer = await asyncio.wait_for(stalled, 30)
        # Cut: no answer at all, or a clean error (never a 500, never a 200 for half a body).
        assert answer is None or answer.status in (502, 503, 504), answer
    finally:
        sidecar.stop()
    assert _exits_cleanly(sidecar)


async def _until_sent(upload: Upload, size: int) -> None:
    for _ in range(400):
        if upload.sent >= size:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the upload never got going")


def _exits_cleanly(sidecar: SidecarProcess) -> bool:
    events = [e["event"] for e in sidecar.events()]
    return "stopped" in events and not any("traceback" in e for e in sidecar.events())
