"""1 GiB each way through a real `authcar run` process: bodies are streamed, never buffered.

The sidecar and the upstream run as subprocesses (as in production), so the sidecar's resident memory
can be read from /proc without the test's own allocations in it. The body is generated on the fly
and checked by size and SHA-256 at the far end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.support.process import ALLOW_ALL_POLICY

# A whole GiB each way: generous bounds, for a loaded 2-core machine. Speed is printed, not
# asserted (a stream that stalls still fails, on the 30 s read timeout); memory is the claim.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
GiB = 1024**3
MiB = 1024**2
MAX_GROWTH = 32 * MiB
DEADLINE = 300.0  # seconds per direction; on 2 cores it takes a small fraction of that


@dataclass
class Stack:
    url: str
    sidecar: subprocess.Popen[bytes]

    def rss(self) -> int:
        return proc_status(self.sidecar.pid, "VmRSS")

    def peak_rss(self) -> int:
        return proc_status(self.sidecar.pid, "VmHWM")


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(module: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`python -m module args...` from the repository root, with only these AUTHCAR_* settings."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCAR_")}
    child_env.update(env)
    child_env["PYTHONPATH"] = str(ROOT) + os.pathsep + child_env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=child_env)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def wait_until_up(url: str, process: subprocess.Popen[bytes], wait: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"{process.args} exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not come up within {wait} s")


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    upstream_port, port, admin_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream = spawn("tests.support.upstream_app", str(upstream_port))
        processes.append(upstream)
        await wait_until_up(f"http://127.0.0.1:{upstream_port}/ready", upstream)
        sidecar = spawn(
            "authcar",
            "run",
            AUTHCAR_HOST="127.0.0.1",
            AUTHCAR_PORT=str(port),
            AUTHCAR_ADMIN_HOST="127.0.0.1",
            AUTHCAR_ADMIN_PORT=str(admin_port),
            AUTHCAR_UPSTREAM=f"http://127.0.0.1:{upstream_port}",
            AUTHCAR_ALLOW_ANONYMOUS="true",
            AUTHCAR_POLICY_DIR=str(ALLOW_ALL_POLICY),
            AUTHCAR_MAX_BODY_BYTES="0",
            AUTHCAR_ACCESS_LOG="false",
            AUTHCAR_LOG_LEVEL="warning",
        )
        processes.append(sidecar)
        await wait_until_up(f"http://127.0.0.1:{admin_port}/healthz", sidecar)
        yield Stack(url=f"http://127.0.0.1:{port}", sidecar=sidecar)
    finally:
        for process in reversed(processes):
            stop(process)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=DEADLINE, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
        yield http


def generated(total: int, digest: hashlib._Hash, chunk_size: int = MiB) -> Iterator[bytes]:
    """Distinct 1 MiB chunks made on the fly: a random block with the chunk's number in front."""
    block = os.urandom(chunk_size)
    for number in range(total // chunk_size):
        chunk = number.to_bytes(8, "big") + block[8:]
        digest.update(chunk)
        yield chunk


async def as_async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def warm_up(stack: Stack, session: aiohttp.ClientSession) -> None:
    """Let lazy imports, pools and buffers settle before the baseline is taken."""
    digest = hashlib.sha256()
    for _ in range(2):
        async with session.post(
            f"{stack.url}/upload", data=as_async(generated(16 * MiB, digest))
        ) as response:
            assert response.status == 200
        async with session.get(f"{stack.url}/download?size={16 * MiB}&chunk=262144") as response:
            assert len(await response.read()) == 16 * MiB


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upload_1gib_streams_in_bounded_memory(
    stack: Stack, session: aiohttp.ClientSession, framing: str
) -> None:
    await warm_up(stack, session)
    before = stack.rss()
    reset_peak_rss(stack.sidecar.pid)
    digest = hashlib.sha256()
    headers = {"Content-Length": str(GiB)} if framing == "content-length" else {}
    started = time.perf_counter()
    async with session.post(
        f"{stack.url}/upload", data=as_async(generated(GiB, digest)), headers=headers
    ) as response:
        assert response.status == 200
        answer = await response.json()
    elapsed = time.perf_counter() - started
    after, peak = stack.rss(), stack.peak_rss()
    print(
        f"\nupload 1 GiB ({framing}): {elapsed:.1f} s ({GiB / elapsed / MiB:.0f} MiB/s), sidecar RSS "
        f"{before / MiB:.1f} -> {after / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB"
    )
    assert answer == {"bytes": GiB, "sha256": digest.hexdigest()}
    assert after - before < MAX_GROWTH
    assert peak - before < MAX_GROWTH


async def test_download_1gib_streams_in_bounded_memory(stack: Stack, session: aiohttp.ClientSession) -> None:
    await warm_up(stack, session)
    before = stack.rss()
    reset_peak_rss(stack.sidecar.pid)
    expected = hashlib.sha256()
    block = (b"0123456789abcdef" * (262144 // 16 + 1))[:262144]
    for _ in range(GiB // len(block)):
        expected.update(block)
    digest = hashlib.sha256()
    received = 0
    started = time.perf_counter()
    async with session.get(f"{stack.url}/download?size={GiB}&chunk=262144") as response:
        assert response.status == 200
        assert response.headers.get("Transfer-Encoding") == "chunked"
        async for chunk in response.content.iter_any():
            received += len(chunk)
            digest.update(chunk)
    elapsed = time.perf_counter() - started
    after, peak = stack.rss(), stack.peak_rss()
    print(
        f"\ndownload 1 GiB: {elapsed:.1f} s ({GiB / elapsed / MiB:.0f} MiB/s), sidecar RSS "
        f"{before / MiB:.1f} -> {after / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB"
    )
    assert received == GiB
    assert digest.hexdigest() == expected.hexdigest()
    assert after - before < MAX_GROWTH
    assert peak - before < MAX_GROWTH


async def test_stalled_client_download_is_backpressured(stack: Stack, session: aiohttp.ClientSession) -> None:
    """A client that stops reading must stop the upstream, not fill the sidecar's memory."""
    await warm_up(stack, session)
    before = stack.rss()
    reset_peak_rss(stack.sidecar.pid)
    received = 0
    async with session.get(f"{stack.url}/download?size={GiB}&chunk=262144") as response:
        async for chunk in response.content.iter_any():
            received += len(chunk)
            if received >= 64 * MiB:
                break
        await asyncio.sleep(2)  # at ~600 MiB/s the sidecar would otherwise take in over 1 GiB here
        stalled_peak = stack.peak_rss()
        async for chunk in response.content.iter_any():
            received += len(chunk)
    print(f"\nstalled download: sidecar RSS {before / MiB:.1f} MiB, peak {stalled_peak / MiB:.1f} MiB")
    assert received == GiB
    assert stalled_peak - before < MAX_GROWTH
    assert stack.rss() - before < MAX_GROWTH


async def test_stalled_upstream_upload_is_backpressured(stack: Stack, session: aiohttp.ClientSession) -> None:
    """An app that does not read yet must stop the client, not fill the sidecar's memory."""
    await warm_up(stack, session)
    before = stack.rss()
    reset_peak_rss(stack.sidecar.pid)
    digest = hashlib.sha256()
    size = 512 * MiB
    async with session.post(
        f"{stack.url}/upload?pause=2",
        data=as_async(generated(size, digest)),
        headers={"Content-Length": str(size)},
    ) as response:
        answer = await response.json()
    peak = stack.peak_rss()
    print(f"\nstalled upload: sidecar RSS {before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB")
    assert answer == {"bytes": size, "sha256": digest.hexdigest()}
    assert peak - before < MAX_GROWTH
