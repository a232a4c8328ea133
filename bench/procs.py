"""Child-process bookkeeping for the benchmark: every process runs in its own
session (process group) so that stopping it also stops whatever it forked
(nginx workers, uvicorn workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

if __package__:  # imported as bench.procs (bench/soak.py, bench/startup.py)
    from .accounting import CLK_TCK, group_ticks, live_stats
else:  # as a sibling script's module (bench/run.py puts bench/ first on sys.path)
    from accounting import CLK_TCK, group_ticks, live_stats


class BenchError(RuntimeError):
    """A failure worth a one-line message rather than a traceback."""


def free_port() -> int:
    # Racy by nature (the port is released before the child binds it), but
    # fine on a quiet loopback; a clash shows up as a child failing to start.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Children:
    """Registry of started processes; `stop_all` is safe to call repeatedly."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        capture: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start argv in a new session; output goes to `log` (or /dev/null), or to pipes if `capture`."""
        out: int | IO[bytes]
        if capture:
            out = subprocess.PIPE
        elif log is not None:
            out = log.open("ab")
        else:
            out = subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE if capture else subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child holds its own copy of the descriptor
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        if proc in self._procs:
            self._procs.remove(proc)
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        # Kill the group even when the leader exited: workers may outlive it.
        _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # With start_new_session the child's pid is also its process-group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def http_get(
    url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None, data: bytes | None = None
) -> tuple[int, bytes]:
    """One GET (a POST with `data`); returns (status, body) including for 4xx/5xx answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}), data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_http_ok(
    url: str,
    proc: subprocess.Popen[bytes],
    *,
    timeout: float,
    what: str,
    log: Path | None = None,
) -> None:
    """Poll `url` until it answers 200; fail fast if `proc` dies meanwhile."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before ready{_log_tail(log)}")
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {timeout:.0f}s at {url} ({last}){_log_tail(log)}")


def wait_tcp(port: int, proc: subprocess.Popen[bytes], *, what: str, log: Path, timeout: float = 15) -> None:
    """Until something accepts on 127.0.0.1:port (an auth-doing gateway answers a bare GET 401)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before ready{_log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} not listening on 127.0.0.1:{port} after {timeout:.0f}s{_log_tail(log)}")


def _log_tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    if not tail:
        return ""
    return f"\n--- last lines of {log} ---\n" + "\n".join(tail)


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of every live process in process group `pgid` (Linux /proc).

    Children are spawned in their own session, so the group is the process and whatever it forked
    (nginx workers, uvicorn workers). /proc/<pid>/stat counts all of a process's threads, exited ones
    included; resolution is one clock tick (10 ms), negligible over a multi-second run. None when
    /proc is unreadable or the group has no live process.
    """
    try:
        ticks = group_ticks(live_stats(), pgid)
    except OSError:
        return None
    return ticks / CLK_TCK if ticks is not None else None


def pin_process(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `pid` (sched_setaffinity(pid) alone moves one thread)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(tid, cpus)
