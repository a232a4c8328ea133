#!/usr/bin/env python3
"""Soak: mixed traffic through one sidecar worker for a fixed time, watching it for leaks.

    .venv/bin/python bench/soak.py                  # 60 s
    .venv/bin/python bench/soak.py --seconds 120 --json bench/results/soak.json

Starts, on loopback only, the test upstream (`python -m tests.support.upstream_app`), and `authcar run`
(1 worker, tokens checked against a static JWKS, a policy that denies /admin). Then, concurrently
until `--seconds` have passed or `--max-requests` were made: valid tokens, invalid tokens (bad
signature, expired, unknown key, garbage), denied paths, streamed uploads and downloads, WebSocket
echoes, slow clients (a head trickled a byte at a time, a body that stalls) and malformed requests.
Every `--sample-interval` seconds it reads the worker's RSS and open file descriptors from
/proc/<pid> and its asyncio task count from /metrics (`authcar_event_loop_tasks`).

It prints the samples, the requests by kind and outcome, and every unexpected outcome (a status the
kind should never get, a 5xx, a broken stream). Exit code 0 when nothing was unexpected and nothing
grew without bound; 1 otherwise; 2 when the harness could not start.

"Grew without bound", for each of RSS, fds and tasks: the samples taken after `--warmup` are split
in thirds, and the median of the last third exceeds the median of the first by more than the
margin (RSS: 10 % or 16 MiB, whichever is larger; fds and tasks: twice the number of concurrent
clients); or, once the load has stopped and `--settle` seconds have passed, the tasks or the fds
other than pooled connections to the application are more than 5 above where they were before the
load began; or the pool ever holds more connections than its limit (AUTHCAR_UPSTREAM_MAX_CONNECTIONS,
64 here). Idle pooled connections stay open after the load until the application closes them, so
they are counted apart (the `upstream` column, read from /proc/<pid>/net/tcp).

The load stops at `--seconds`; a slow client already waiting may take up to 8 s more to give up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))  # run as a script: tests.idp mints the tokens, bench.procs runs them

from authcar.config import Settings  # noqa: E402
from bench.procs import BenchError, Children, free_port, wait_http_ok  # noqa: E402
from tests.idp import IdP  # noqa: E402

MiB = 1024 * 1024
RSS_MARGIN_FRACTION = 0.10
RSS_MARGIN_BYTES = 16 * MiB
SETTLED_MARGIN = 5  # fds or tasks above the pre-load baseline once the load has stopped
POOL_LIMIT = 64  # AUTHCAR_UPSTREAM_MAX_CONNECTIONS for the run: connections to the app never exceed it
HEADER_TIMEOUT = 2.0  # the sidecar's AUTHCAR_REQUEST_HEADER_TIMEOUT / BODY_TIMEOUT for this run
PATIENCE = 8.0  # a slow client gives up after this long without an answer
MODEL = (REPO_DIR / "tests" / "policies" / "allow-all" / "model.conf").read_text()
POLICY = "".join(
    f"p, authcar:authenticated, {path}, .*\n" for path in ("/api/*", "/upload", "/download", "/ws")
)
UPLOAD_BYTES = 512 * 1024
DOWNLOAD_BYTES = MiB
MALFORMED = (
    b"GET /api HTTP/9.9\r\nHost: soak\r\n\r\n",
    b"THIS IS NOT HTTP\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: soak\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET /api/x HTTP/1.1\r\nHost: soak\r\nBad Header: x\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: soak\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
    b"GET /api/../admin HTTP/1.1\r\nHost: soak\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
)


@dataclass
class Sample:
    seconds: float
    rss: int  # bytes
    fds: int  # every open descriptor
    upstream: int  # of which: connections to the application (the keep-alive pool, bounded)
    tasks: int
    requests: int

    @property
    def own_fds(self) -> int:
        """Descriptors other than the pool's: what must come back to baseline once the load stops
        (idle pooled connections stay until the application closes them)."""
        return self.fds - self.upstream


@dataclass
class Outcomes:
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    unexpected: Counter[tuple[str, str]] = field(default_factory=Counter)
    total: int = 0

    def record(self, kind: str, outcome: str, expected: bool) -> None:
        self.by_kind.setdefault(kind, Counter())[outcome] += 1
        self.total += 1
        if not expected:
            self.unexpected[(kind, outcome)] += 1


@dataclass
class Target:
    port: int
    admin_port: int
    upstream_port: int
    pid: int
    valid: list[str]
    invalid: list[str]
    enforces_head_timeout: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# -- the traffic: each returns (outcome, expected)


async def valid_request(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    token = target.valid[n % len(target.valid)]
    async with http.get(f"{target.url}/api/items/{n}", headers=bearer(token)) as response:
        await response.read()
        return str(response.status), response.status == 200


async def invalid_token(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    token = target.invalid[n % len(target.invalid)]
    async with http.get(f"{target.url}/api/items/{n}", headers=bearer(token)) as response:
        await response.read()
        return str(response.status), response.status == 401


async def denied_path(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    async with http.get(f"{target.url}/admin/{n}", headers=bearer(target.valid[0])) as response:
        await response.read()
        return str(response.status), response.status == 403


async def upload(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(UPLOAD_BYTES // 65536):
            yield b"u" * 65536
            await asyncio.sleep(0)

    async with http.post(f"{target.url}/upload", data=body(), headers=bearer(target.valid[0])) as response:
        answer = await response.json() if response.status == 200 else {}
        ok = response.status == 200 and answer.get("bytes") == UPLOAD_BYTES
        return (str(response.status) if ok or response.status != 200 else "short_upload"), ok


async def download(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    url = f"{target.url}/download?size={DOWNLOAD_BYTES}"
    async with http.get(url, headers=bearer(target.valid[0])) as response:
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
        ok = response.status == 200 and size == DOWNLOAD_BYTES
        return (str(response.status) if ok or response.status != 200 else "short_download"), ok


async def websocket(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    async with http.ws_connect(f"{target.url}/ws", headers=bearer(target.valid[0])) as ws:
        for index in range(5):
            await ws.send_str(f"m{index}")
            message = await ws.receive(timeout=PATIENCE)
            if message.data != f"echo:m{index}":
                return "bad_echo", False
        await ws.close()
    return "101", True


async def slow_head(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    """A head trickled a byte every half second: the sidecar must cut it (408 or a close)."""
    head = b"GET /api/slow HTTP/1.1\r\nHost: soak\r\nX-Trickle: "
    return await slow_client(target, head, trickle=True)


async def stalled_body(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    """A body that stops after 1 kB of 100 kB: the sidecar must cut it (408 or a close)."""
    head = (
        b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n"
        b"Authorization: Bearer " + target.valid[0].encode() + b"\r\n\r\n" + b"s" * 1000
    )
    return await slow_client(target, head, trickle=False)


async def slow_client(target: Target, first: bytes, *, trickle: bool) -> tuple[str, bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    loop = asyncio.get_running_loop()
    try:
        writer.write(first)
        await writer.drain()
        give_up = loop.time() + PATIENCE
        while loop.time() < give_up:
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                if trickle:
                    writer.write(b"a")
                    await writer.drain()
                continue
            if not data:
                return "closed", True
            status = status_of(data)
            return status, status in ("408", "400")
        # Without the sidecar's header and body timeouts this is the old behaviour: held open.
        return "gave_up", not target.enforces_head_timeout
    except ConnectionError:
        return "reset", True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def malformed(http: aiohttp.ClientSession, target: Target, n: int) -> tuple[str, bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(MALFORMED[n % len(MALFORMED)])
            await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(65536), PATIENCE)
        except ConnectionError:
            return "reset", True
        except TimeoutError:
            return "no_answer", False
        if not data:
            return "closed", True
        status = status_of(data)
        return status, status in ("400", "404", "414", "431", "505")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def status_of(data: bytes) -> str:
    parts = data.split(b" ", 2)
    return parts[1].decode("latin-1") if len(parts) > 1 and parts[0].startswith(b"HTTP/") else "garbled"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


Traffic = Callable[[aiohttp.ClientSession, Target, int], Awaitable[tuple[str, bool]]]
# kind -> (concurrent clients, what each one does in a loop)
MIX: dict[str, tuple[int, Traffic]] = {
    "valid": (6, valid_request),
    "invalid_token": (2, invalid_token),
    "denied_path": (1, denied_path),
    "upload": (2, upload),
    "download": (2, download),
    "websocket": (2, websocket),
    "slow_head": (3, slow_head),
    "stalled_body": (2, stalled_body),
    "malformed": (1, malformed),
}
CLIENTS = sum(count for count, _ in MIX.values())


async def client_loop(
    kind: str, traffic: Traffic, target: Target, outcomes: Outcomes, deadline: float, limit: int
) -> None:
    connector = aiohttp.TCPConnector(limit=1, force_close=kind in ("upload", "websocket"))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        n = 0
        while time.monotonic() < deadline and outcomes.total < limit:
            n += 1
            try:
                outcome, expected = await traffic(http, target, n)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome, expected = type(exc).__name__, False
            outcomes.record(kind, outcome, expected)


# -- measuring


def read_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def count_fds(pid: int, upstream_port: int) -> tuple[int, int]:
    """(open descriptors, TCP connections among them whose peer is the application's port)."""
    sockets: set[str] = set()
    names = os.listdir(f"/proc/{pid}/fd")
    for name in names:
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            if link.startswith("socket:["):
                sockets.add(link[8:-1])
    upstream = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[9] in sockets and remote_port == upstream_port:
                    upstream += 1
    return len(names), upstream


async def count_tasks(http: aiohttp.ClientSession, target: Target) -> int:
    async with http.get(f"http://127.0.0.1:{target.admin_port}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("authcar_event_loop_tasks "):
            return int(float(line.split()[1]))
    raise BenchError("the sidecar's /metrics has no authcar_event_loop_tasks")


async def sample(http: aiohttp.ClientSession, target: Target, started: float, outcomes: Outcomes) -> Sample:
    tasks = await count_tasks(http, target)
    fds, upstream = count_fds(target.pid, target.upstream_port)
    return Sample(time.monotonic() - started, read_rss(target.pid), fds, upstream, tasks, outcomes.total)


async def sampler(
    target: Target,
    started: float,
    interval: float,
    outcomes: Outcomes,
    samples: list[Sample],
    stop: asyncio.Event,
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            samples.append(await sample(http, target, started, outcomes))
            print_sample(samples[-1])


def print_sample(s: Sample) -> None:
    print(
        f"{s.seconds:7.1f} {s.rss / MiB:9.1f} {s.fds:6d} {s.upstream:9d} {s.tasks:6d} {s.requests:9d}",
        flush=True,
    )


@dataclass
class Verdict:
    problems: list[str]
    figures: dict[str, object]


def judge(samples: list[Sample], warmup: float, baseline: Sample, settled: Sample) -> Verdict:
    problems: list[str] = []
    loaded = [s for s in samples if s.seconds >= warmup]
    figures: dict[str, object] = {}
    if len(loaded) < 3:
        problems.append(f"only {len(loaded)} samples after the warm-up: run longer or sample more often")
        return Verdict(problems, figures)
    third = max(1, len(loaded) // 3)
    first, last = loaded[:third], loaded[-third:]
    margins = {
        "rss": max(RSS_MARGIN_BYTES, statistics.median(s.rss for s in first) * RSS_MARGIN_FRACTION),
        "fds": 2 * CLIENTS,
        "own_fds": 2 * CLIENTS,
        "tasks": 2 * CLIENTS,
    }
    for name, margin in margins.items():
        early = statistics.median(getattr(s, name) for s in first)
        late = statistics.median(getattr(s, name) for s in last)
        figures[name] = {
            "baseline": getattr(baseline, name),
            "first_third_median": early,
            "last_third_median": late,
            "max": max(getattr(s, name) for s in samples),
            "settled": getattr(settled, name),
            "margin": margin,
        }
        if late > early + margin:
            problems.append(f"{name} grew: median {early:.0f} in the first third, {late:.0f} in the last")
    figures["upstream_connections_max"] = max(s.upstream for s in samples)
    if figures["upstream_connections_max"] > POOL_LIMIT:  # type: ignore[operator]
        problems.append(
            f"{figures['upstream_connections_max']} connections to the application, over {POOL_LIMIT}"
        )
    for name in ("own_fds", "tasks"):
        if getattr(settled, name) > getattr(baseline, name) + SETTLED_MARGIN:
            problems.append(
                f"{name} did not return to baseline: {getattr(baseline, name)} before the load, "
                f"{getattr(settled, name)} after it"
            )
    return Verdict(problems, figures)


# -- the processes


def tokens(idp: IdP, count: int, lifetime: int) -> tuple[list[str], list[str]]:
    valid = [idp.mint(sub=f"soak-{i}", expires_in=lifetime) for i in range(count)]
    good = valid[0]
    invalid = [
        good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),  # bad signature
        idp.mint(sub="late", expires_in=-120),  # expired
        idp.mint(sub="stranger", unpublished_key=True),  # a key the JWKS does not have
        idp.mint(sub="other", aud="another-service"),  # wrong audience
        "not-a-jwt-at-all",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # alg none
    ]
    return valid, invalid


def start_stack(children: Children, work: Path, seconds: float) -> Target:
    idp = IdP("http://127.0.0.1:9")  # never listens: only mints; the sidecar reads its keys from a file
    jwks = work / "jwks.json"
    jwks.write_text(json.dumps(idp.keys))
    policy = work / "policy"
    policy.mkdir()
    (policy / "model.conf").write_text(MODEL)
    (policy / "policy.csv").write_text(POLICY)

    upstream_port = free_port()
    upstream = children.spawn(
        [sys.executable, "-m", "tests.support.upstream_app", str(upstream_port)],
        log=work / "upstream.log",
        cwd=REPO_DIR,
    )
    wait_http_ok(f"http://127.0.0.1:{upstream_port}/ready", upstream, timeout=30, what="upstream")

    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCAR_")}
    env.update(
        AUTHCAR_HOST="127.0.0.1",
        AUTHCAR_PORT=str(port),
        AUTHCAR_ADMIN_HOST="127.0.0.1",
        AUTHCAR_ADMIN_PORT=str(admin_port),
        AUTHCAR_UPSTREAM=f"http://127.0.0.1:{upstream_port}",
        AUTHCAR_WORKERS="1",
        AUTHCAR_OIDC_ISSUER_URL=idp.issuer,
        AUTHCAR_OIDC_AUDIENCE="api",
        AUTHCAR_OIDC_JWKS_FILE=str(jwks),
        AUTHCAR_POLICY_DIR=str(policy),
        AUTHCAR_LOG_LEVEL="warning",
        AUTHCAR_ACCESS_LOG="false",
        AUTHCAR_LOG_FORMAT="json",
        AUTHCAR_UPSTREAM_MAX_CONNECTIONS=str(POOL_LIMIT),
        AUTHCAR_REQUEST_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        AUTHCAR_REQUEST_BODY_TIMEOUT=str(HEADER_TIMEOUT),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = work / "authcar.log"
    sidecar = children.spawn([sys.executable, "-m", "authcar", "run"], log=log, env=env, cwd=REPO_DIR)
    wait_http_ok(f"http://127.0.0.1:{admin_port}/readyz", sidecar, timeout=30, what="authcar", log=log)
    enforced = {f.name for f in dataclasses.fields(Settings)}
    valid, invalid = tokens(idp, 50, int(seconds) + 600)
    return Target(
        port,
        admin_port,
        upstream_port,
        sidecar.pid,  # AUTHCAR_WORKERS=1 serves in this process
        valid,
        invalid,
        enforces_head_timeout={"request_header_timeout", "request_body_timeout"} <= enforced,
    )


async def soak(target: Target, args: argparse.Namespace) -> tuple[Verdict, Outcomes, list[Sample]]:
    outcomes = Outcomes()
    samples: list[Sample] = []
    print("   t(s)  rss(MiB)    fds  upstream  tasks  requests")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        started = time.monotonic()
        baseline = await sample(http, target, started, outcomes)
        print_sample(baseline)
        stop = asyncio.Event()
        watcher = asyncio.create_task(sampler(target, started, args.sample_interval, outcomes, samples, stop))
        deadline = started + args.seconds
        clients = [
            client_loop(kind, traffic, target, outcomes, deadline, args.max_requests)
            for kind, (count, traffic) in MIX.items()
            for _ in range(count)
        ]
        await asyncio.gather(*clients)
        stop.set()
        await watcher
        print(f"load stopped after {time.monotonic() - started:.1f} s; settling", flush=True)
        settle_until = time.monotonic() + args.settle
        while True:
            settled = await sample(http, target, started, outcomes)
            calm = (
                settled.fds <= baseline.fds + SETTLED_MARGIN
                and settled.tasks <= baseline.tasks + SETTLED_MARGIN
            )
            if calm or time.monotonic() > settle_until:
                break
            await asyncio.sleep(0.5)
        print_sample(settled)
    return judge(samples, args.warmup, baseline, settled), outcomes, samples


def report(verdict: Verdict, outcomes: Outcomes) -> None:
    print("\nrequests by kind:")
    for kind, counts in outcomes.by_kind.items():
        detail = ", ".join(f"{outcome}: {n}" for outcome, n in counts.most_common())
        print(f"  {kind:14s} {sum(counts.values()):7d}   {detail}")
    print(f"  {'total':14s} {outcomes.total:7d}")
    if outcomes.unexpected:
        print("\nunexpected outcomes:")
        for (kind, outcome), n in outcomes.unexpected.most_common():
            print(f"  {kind}: {outcome} x{n}")
    else:
        print("\nunexpected outcomes: none")
    print("\nresources (baseline -> first third -> last third median -> after the load; margin):")
    for name, figures in verdict.figures.items():
        if not isinstance(figures, dict):
            print(f"  {name}: {figures}")
            continue
        f = figures
        scale = MiB if name == "rss" else 1
        print(
            f"  {name:8s} {f['baseline'] / scale:8.1f} -> {f['first_third_median'] / scale:8.1f} -> "  # type: ignore[index]
            f"{f['last_third_median'] / scale:8.1f} -> {f['settled'] / scale:8.1f}; "  # type: ignore[index]
            f"margin {f['margin'] / scale:.1f}"  # type: ignore[index]
        )
    for problem in verdict.problems:
        print(f"FAIL: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs (default 60)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="samples before this are not judged (default: a sixth of --seconds)",
    )
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds fds and tasks get to return to baseline"
    )
    parser.add_argument("--json", type=Path, help="also write samples, outcomes and the verdict here")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.seconds / 6
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="authcar-soak-") as work:
            try:
                target = start_stack(children, Path(work), args.seconds)
            except BenchError as exc:
                print(f"soak: {exc}", file=sys.stderr)
                return 2
            verdict, outcomes, samples = asyncio.run(soak(target, args))
            report(verdict, outcomes)
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(
                    json.dumps(
                        {
                            "seconds": args.seconds,
                            "samples": [dataclasses.asdict(s) for s in samples],
                            "requests": {k: dict(v) for k, v in outcomes.by_kind.items()},
                            "unexpected": [[k, o, n] for (k, o), n in outcomes.unexpected.items()],
                            "resources": verdict.figures,
                            "problems": verdict.problems,
                        },
                        indent=2,
                    )
                )
    finally:
        children.stop_all()
    return 1 if verdict.problems or outcomes.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
