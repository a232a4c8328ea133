"""Benchmark authcar against a direct baseline, nginx and a bare Python proxy.

    python bench/run.py [--duration 10] [--connections 32] [--threads 1] [--repeat 1]
                        [--only direct,nginx,...] [--json out.json] [--profile DIR]

Every scenario loads the same fast local upstream with wrk, one scenario at a
time, in a single run; see bench/README.md for how to read the numbers. The
authcar-jwt* scenarios also start the test identity provider (tests/idp).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from shutil import rmtree
from typing import Any

import baselines
from accounting import Figures, compare, group_rss_mib
from fast_upstream import UPSTREAM_BODY
from nginx_conf import (
    DOWNLOAD_PATH,
    download_body,
    nginx_argv,
    nginx_path,
    nginx_version,
    proxy_conf,
    upstream_conf,
)
from procs import (
    BenchError,
    Children,
    free_port,
    group_cpu_seconds,
    http_get,
    pin_process,
    wait_http_ok,
    wait_tcp,
)
from wrk import WrkResult, require_wrk, run_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PACKAGES = ("uvicorn", "aiohttp", "uvloop", "httptools", "pyjwt", "cryptography")
BUSY_WARN_PCT = 15.0
FIRST_SEEN_SCRIPT = BENCH_DIR / "first_seen.lua"
UPLOAD_SCRIPT = BENCH_DIR / "upload.lua"
UPLOAD_BYTES = 1024 * 1024  # what bench/upload.lua sends
IDLE_CONNECTIONS = 1000  # idle-1k: keep-alive connections held open, idle, during the load
# "saturation" is wrk's closed loop at --connections; the others change what is sent or how.
WORKLOADS = ("saturation", "upload-1m", "download-1m", "idle-1k", "rate-500", "rate-2000")
FULL_PIPELINE_RULES = 1_000
LARGE_POLICY_RULES = 10_000
REFUSED = (401, 403)  # what an auth-doing row must answer to a forged or missing token
PROXY_CPU, LOAD_CPU = 1, 0  # --pin: the measured proxy alone on CPU 1, everything else on CPU 0
TOKEN_LIFETIME_S = 6 * 3600  # outlives any run: the cached token must not expire mid-run
AUDIENCE = "api"  # what tests/idp puts in `aud` by default
TOKEN_METRIC = re.compile(rb'^authcar_token_validations_total\{result="([^"]+)"\} ([0-9.e+]+)$', re.M)
STORE_METRIC = re.compile(
    rb'^authcar_store_seconds_count\{operation="([^"]+)",result="([^"]+)"\} ([0-9.e+]+)$', re.M
)
# The shared-state rows against their baselines, each (row, baseline, what the difference is).
SHARED_STATE_PAIRS = (
    ("authcar-full-limits", "authcar-full", "rate limit + revocation check, in-memory store"),
    ("authcar-full-limits-redis", "authcar-full", "rate limit + revocation check, Redis"),
    ("authcar-full-limits-redis", "authcar-full-limits", "the same checks: Redis instead of memory"),
    ("authcar-full-redis", "authcar-full", "Redis configured, no per-request check"),
)
# Tracing's rows against the full pipeline without it (spans exported to the upstream nginx, which
# answers OTLP's POST /v1/traces with 200 like any request).
TRACING_PAIRS = (
    ("authcar-full-trace", "authcar-full", "tracing on, every request sampled"),
    ("authcar-full-trace-1pct", "authcar-full", "tracing on, 1% of requests sampled"),
)


@dataclass
class TokenKit:
    """The test identity provider of this run and the tokens it issued (one run-level set)."""

    issuer: str
    token: str  # the repeated token of authcar-jwt
    public_key: Any
    private_key: Any  # the provider's own, to sign first-seen tokens and certify its key
    kid: str
    tokens_file: Path | None  # authcar-jwt-first-seen: distinct tokens, one per line
    first_seen_count: int

    @property
    def auth_header(self) -> tuple[str, str]:
        return "Authorization", f"Bearer {self.token}"

    @property
    def pad_header(self) -> tuple[str, str]:
        """An `X-Pad` header line exactly as long as the Authorization line: equal request bytes."""
        name, value = self.auth_header
        return "X-Pad", "p" * (len(name) + len(value) - len("X-Pad"))

    def token_checks(self, tmp: Path) -> baselines.TokenChecks:
        """What HAProxy and Apache verify this run's token against (key files written once)."""
        return baselines.write_token_checks(tmp, self.private_key, self.kid, self.issuer, AUDIENCE)


@dataclass
class Context:
    """What a scenario needs to start its proxy in front of the upstream."""

    children: Children
    tmp: Path
    nginx: str | None
    upstream_port: int
    tokens: TokenKit | None = None
    threads: int = 1
    workload: str = "saturation"
    install: bool = True  # apt-get install a missing baseline (when root)

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"


@dataclass
class Target:
    """What a started scenario is: where to send load, what to send, and which process to watch."""

    url: str
    proc: subprocess.Popen[bytes] | None = None  # its process group's CPU time is measured
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (wrk -H) and the sanity check
    wrk_options: tuple[str, ...] = ()  # extra wrk options (a Lua script)
    script_args: tuple[str, ...] = ()
    metrics_url: str | None = None  # authcar's admin /metrics: token validation counters
    verifies_tokens: bool = False  # must refuse a forged and a missing token before it is measured
    store_proc: subprocess.Popen[bytes] | None = None  # a redis-server of its own: its CPU is measured too


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    start: Callable[[Context], Target]  # starts what it needs, returns what to load
    needs_nginx: bool = False
    needs_tokens: bool = False  # the test identity provider and its tokens
    python: bool = False  # the measured process is Python (py-spy can profile it)
    workloads: tuple[str, ...] = ("saturation",)  # the side-by-side systems: every one of WORKLOADS


@dataclass
class Measurement:
    """One repetition of one scenario."""

    wrk: WrkResult
    cpu_s: float | None  # the measured process group's user+system CPU during the wrk run
    token_results: dict[str, int] | None  # authcar_token_validations_total increments during the run
    profile: str | None = None
    rss_mib: dict[int, float] | None = None  # each process of the group, right after the run
    load_detail: dict[str, Any] | None = None  # the open-loop generator's own report (rate-* rows)
    store_cpu_s: float | None = None  # the scenario's redis-server, user+system CPU during the run
    store_calls: dict[str, int] | None = None  # authcar_store_seconds_count increments, "<op> <result>"

    @property
    def store_cpu_us_per_request(self) -> float | None:
        if self.store_cpu_s is None or self.wrk.requests <= 0:
            return None
        return self.store_cpu_s * 1e6 / self.wrk.requests

    @property
    def store_calls_per_request(self) -> float | None:
        if self.store_calls is None or self.wrk.requests <= 0:
            return None
        return sum(n for key, n in self.store_calls.items() if key.endswith(" ok")) / self.wrk.requests

    @property
    def rss_worker_mib(self) -> float | None:
        """The largest process of the group: the worker (nginx, Apache and uvicorn masters are smaller)."""
        return max(self.rss_mib.values()) if self.rss_mib else None

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.cpu_s is None or self.wrk.requests <= 0:
            return None
        return self.cpu_s * 1e6 / self.wrk.requests

    @property
    def cache_hit_share(self) -> float | None:
        if not self.token_results:
            return None
        total = sum(self.token_results.values())
        return self.token_results.get("valid_cached", 0) / total if total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.wrk.to_dict(),
            "cpu_s": self.cpu_s,
            "cpu_us_per_request": self.cpu_us_per_request,
            "token_validations": self.token_results,
            "profile": self.profile,
            "rss_mib_by_pid": self.rss_mib,
            "rss_worker_mib": self.rss_worker_mib,
            "load_detail": self.load_detail,
            "store_cpu_s": self.store_cpu_s,
            "store_cpu_us_per_request": self.store_cpu_us_per_request,
            "store_calls": self.store_calls,
            "store_calls_per_request": self.store_calls_per_request,
        }


@dataclass
class Row:
    scenario: str
    description: str
    workload: str = "saturation"
    runs: list[Measurement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.scenario if self.workload == "saturation" else f"{self.scenario} @{self.workload}"

    @property
    def rss_worker_mib(self) -> float | None:
        values = [v for m in self.runs if (v := m.rss_worker_mib) is not None]
        return statistics.median(values) if values else None

    @property
    def error(self) -> str | None:
        return self.errors[0] if self.errors else None

    @property
    def result(self) -> WrkResult | None:
        """Medians over the repetitions (counts summed); None when nothing was measured."""
        if not self.runs:
            return None
        wrks = [m.wrk for m in self.runs]
        return WrkResult(
            requests_per_s=statistics.median(w.requests_per_s for w in wrks),
            p50_ms=statistics.median(w.p50_ms for w in wrks),
            p99_ms=statistics.median(w.p99_ms for w in wrks),
            requests=sum(w.requests for w in wrks),
            non_2xx=sum(w.non_2xx for w in wrks),
            socket_errors=sum(w.socket_errors for w in wrks),
        )

    @property
    def cpu_us_per_request(self) -> float | None:
        values = [v for m in self.runs if (v := m.cpu_us_per_request) is not None]
        return statistics.median(values) if values else None

    @property
    def store_cpu_us_per_request(self) -> float | None:
        values = [v for m in self.runs if (v := m.store_cpu_us_per_request) is not None]
        return statistics.median(values) if values else None

    @property
    def store_calls_per_request(self) -> float | None:
        values = [v for m in self.runs if (v := m.store_calls_per_request) is not None]
        return statistics.median(values) if values else None

    @property
    def cache_hit_share(self) -> float | None:
        hits = sum(m.token_results.get("valid_cached", 0) for m in self.runs if m.token_results)
        total = sum(sum(m.token_results.values()) for m in self.runs if m.token_results)
        return hits / total if total else None


# --- scenarios ---------------------------------------------------------------


def start_direct(ctx: Context) -> Target:
    return Target(ctx.upstream_url + "/")


def start_nginx_proxy(ctx: Context) -> Target:
    assert ctx.nginx is not None
    port = free_port()
    prefix = ctx.tmp / "nginx-proxy"
    argv = nginx_argv(ctx.nginx, prefix, proxy_conf(prefix, port, ctx.upstream_port))
    log = prefix / "stdout.log"
    proc = ctx.children.spawn(argv, log=log)
    url = f"http://127.0.0.1:{port}/"
    wait_http_ok(url, proc, timeout=10, what="nginx proxy", log=prefix / "error.log")
    return Target(url, proc)


def start_bare_python(ctx: Context) -> Target:
    port = free_port()
    log = ctx.tmp / "bare-python.log"
    argv = [
        sys.executable,
        str(BENCH_DIR / "bare_proxy.py"),
        "--port",
        str(port),
        "--upstream",
        ctx.upstream_url,
    ]
    proc = ctx.children.spawn(argv, log=log)
    url = f"http://127.0.0.1:{port}/"
    wait_http_ok(url, proc, timeout=20, what="bare-python proxy", log=log)
    return Target(url, proc)


def authcar_env(
    port: int, admin_port: int, upstream_url: str, *, logged: bool, issuer: str | None = None
) -> dict[str, str]:
    # Drop inherited AUTHCAR_* so a developer's shell config cannot skew the run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCAR_")}
    env.update(
        AUTHCAR_PORT=str(port),
        AUTHCAR_ADMIN_PORT=str(admin_port),
        AUTHCAR_HOST="127.0.0.1",
        AUTHCAR_ADMIN_HOST="127.0.0.1",
        AUTHCAR_UPSTREAM=upstream_url,
        AUTHCAR_ALLOW_ANONYMOUS="true",
        # Every caller allowed: the scenarios measure the pipeline, with one policy decision each.
        AUTHCAR_POLICY_DIR=str(REPO_DIR / "tests" / "policies" / "allow-all"),
        AUTHCAR_WORKERS="1",
        AUTHCAR_LOG_LEVEL="info" if logged else "warning",
        # The per-request JSON line is its own switch; events follow the log level.
        AUTHCAR_ACCESS_LOG="true" if logged else "false",
    )
    if issuer is not None:
        # Bearer tokens required: keys from the issuer's discovery document, `aud` as minted.
        env.update(
            AUTHCAR_ALLOW_ANONYMOUS="false",
            AUTHCAR_OIDC_ISSUER_URL=issuer,
            AUTHCAR_OIDC_AUDIENCE=AUDIENCE,
        )
    return env


def check_authcar_importable() -> None:
    # The logged variant sends output to /dev/null, so surface this failure here.
    # find_spec imports the package but does not execute __main__.
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('authcar.__main__') is None)"
    res = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["No module named 'authcar.__main__'"])[-1]
        raise BenchError(f"`python -m authcar` cannot run from {REPO_DIR}: {last}")


def start_authcar(
    ctx: Context,
    *,
    logged: bool = False,
    mode: str = "anonymous",
    rules: int | None = None,
    workers: int = 1,
    redis: bool = False,
    limits: bool = False,
    tracing: float | None = None,
    server: str = "authcar",
) -> Target:
    """mode: anonymous (no extra header), pad (X-Pad as long as the token header), jwt, first-seen.

    With `rules`, the full pipeline (bench/pipeline.py): a policy of that many rules, identity
    headers, the signed assertion and the JSON access log; `workers` and a Redis store on top, and
    with `limits` a rate limit and a revocation list (bench/pipeline.py's `limits_env`).
    `server`: "authcar" (`authcar run`: uvicorn with authcar's protocol) or one of
    bench/asgi_servers.py's, serving the same gate without an admin listener.
    """
    check_authcar_importable()
    port, admin_port = free_port(), free_port()
    kit = ctx.tokens
    issuer = None
    if mode != "anonymous":
        assert kit is not None, "token scenarios need the run's TokenKit"
        issuer = kit.issuer if mode in ("jwt", "first-seen") else None
    env = authcar_env(port, admin_port, ctx.upstream_url, logged=logged, issuer=issuer)
    store_proc = admin_token = None
    if rules is not None:
        from pipeline import full_pipeline_env, limits_env, write_policy_dir

        redis_url = None
        if redis:
            redis_url, store_proc = start_redis(ctx)
        env.update(full_pipeline_env(write_policy_dir(ctx.tmp, rules), workers=workers, redis_url=redis_url))
        if limits:
            extra, admin_token = limits_env()
            env.update(extra)
        if tracing is not None:
            env.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=ctx.upstream_url.rstrip("/"),
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG=str(tracing),
            )
        logged = True  # the access log goes to /dev/null below
    # Logged: the per-request JSON access log is written (cost measured) but discarded.
    log = None if logged else ctx.tmp / f"authcar-{mode}.log"
    if server != "authcar":
        return start_other_server(ctx, server, env, port, log)
    proc = ctx.children.spawn([sys.executable, "-m", "authcar", "run"], env=env, cwd=REPO_DIR, log=log)
    admin = f"http://127.0.0.1:{admin_port}"
    # With an issuer, /readyz also waits for the signing keys: the first token must not hit a 401.
    ready = "/readyz" if issuer else "/healthz"
    wait_http_ok(admin + ready, proc, timeout=30, what="authcar", log=log)
    target = Target(
        f"http://127.0.0.1:{port}/",
        proc,
        metrics_url=admin + "/metrics",
        verifies_tokens=issuer is not None,
        store_proc=store_proc,
    )
    if admin_token is not None:
        revoke_others(admin, admin_token)
    if mode == "pad":
        assert kit is not None
        target.headers = (kit.pad_header,)
    elif mode == "jwt":
        assert kit is not None
        target.headers = (kit.auth_header,)
    elif mode == "first-seen":
        assert kit is not None
        assert kit.tokens_file is not None
        # The sanity request carries the repeated token (never in the file); wrk cycles the file.
        target.headers = (kit.auth_header,)
        target.wrk_options = ("-s", str(FIRST_SEEN_SCRIPT))
        # The state file carries each wrk thread's position from the warm-up to the measured run.
        state = ctx.tmp / f"first-seen-state-{port}.txt"
        target.script_args = (str(kit.tokens_file), str(ctx.threads), str(state))
    return target


def start_other_server(ctx: Context, server: str, env: dict[str, str], port: int, log: Path | None) -> Target:
    """The full pipeline's gate under another ASGI server (bench/asgi_servers.py), ready once the
    repeated token is answered 200 (no admin listener: no metrics for this row)."""
    module = "uvicorn" if server == "uvicorn-stock" else server
    if importlib.util.find_spec(module) is None:
        raise BenchError(f"skipped: {module} not installed (.venv/bin/pip install {module})")
    kit = ctx.tokens
    assert kit is not None
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, (str(BENCH_DIR), env.get("PYTHONPATH"))))}
    argv = [sys.executable, str(BENCH_DIR / "asgi_servers.py"), server, str(port)]
    proc = ctx.children.spawn(argv, env=env, cwd=REPO_DIR, log=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise BenchError(f"{server} exited with code {proc.returncode} before ready")
        try:
            if http_get(url, timeout=1.0, headers=dict([kit.auth_header]))[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{server} serving the gate did not answer 200 within 30 s")
        time.sleep(0.1)
    return Target(url, proc, headers=(kit.auth_header,), verifies_tokens=True)


def revoke_others(admin: str, token: str) -> None:
    """Fill the revocation list through the admin API with jti's no token of the run carries."""
    from pipeline import REVOKED_ENTRIES

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for i in range(REVOKED_ENTRIES):
        body = json.dumps({"jti": f"bench-revoked-{i:04d}", "expires_in": 3600}).encode()
        status, answer = http_get(admin + "/api/v1/revocations", timeout=10, headers=headers, data=body)
        if status != 201:
            raise BenchError(f"the admin API answered {status} to a revocation: {answer[:200]!r}")


def start_redis(ctx: Context) -> tuple[str, subprocess.Popen[bytes]]:
    """A private redis-server (no persistence) for the shared-state rows; its URL and process."""
    binary, note = baselines.find_or_install(baselines.REDIS, install=ctx.install)
    if binary is None:
        raise BenchError(note)
    port = free_port()
    directory = ctx.tmp / f"redis-{port}"
    directory.mkdir()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(directory)]
    proc = ctx.children.spawn(argv, log=directory / "redis.log")
    wait_tcp(port, proc, what="redis-server", log=directory / "redis.log")
    return f"redis://127.0.0.1:{port}/0", proc


def start_gateway(ctx: Context, tool: baselines.Tool) -> Target:
    """HAProxy or Apache (bench/baselines.py) checking the run's token, in front of the upstream."""
    binary, note = baselines.find_or_install(tool, install=ctx.install)
    if binary is None:
        raise BenchError(note)
    kit = ctx.tokens
    assert kit is not None
    checks = kit.token_checks(ctx.tmp)
    proc, port = baselines.launch(tool, binary, ctx.children, ctx.tmp, ctx.upstream_port, checks)
    return Target(f"http://127.0.0.1:{port}/", proc, headers=(kit.auth_header,), verifies_tokens=True)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("direct", "wrk -> upstream (baseline)", start_direct, workloads=WORKLOADS),
    Scenario(
        "nginx",
        "wrk -> nginx proxy_pass, keepalive pool -> upstream",
        start_nginx_proxy,
        needs_nginx=True,
        workloads=WORKLOADS,
    ),
    Scenario(
        "haproxy",
        "wrk + RS256 bearer -> HAProxy 1 thread, jwt_verify + iss/aud/exp on every request -> upstream",
        lambda c: start_gateway(c, baselines.HAPROXY),
        needs_tokens=True,
        workloads=WORKLOADS,
    ),
    Scenario(
        "apache",
        f"wrk + RS256 bearer -> Apache mpm_event 1 x {baselines.APACHE_THREADS} threads,"
        " mod_auth_openidc oauth20 (JWT, iss/aud/exp) -> upstream",
        lambda c: start_gateway(c, baselines.APACHE),
        needs_tokens=True,
        workloads=WORKLOADS,
    ),
    Scenario(
        "authcar-full",
        f"wrk + RS256 bearer -> authcar full pipeline ({FULL_PIPELINE_RULES:,} rules, identity headers,"
        " assertion, JSON access log), 1 worker -> upstream",
        lambda c: start_authcar(c, mode="jwt", rules=FULL_PIPELINE_RULES),
        needs_tokens=True,
        python=True,
        workloads=WORKLOADS,
    ),
    Scenario(
        "authcar-full-2w",
        "same, 2 workers",
        lambda c: start_authcar(c, mode="jwt", rules=FULL_PIPELINE_RULES, workers=2),
        needs_tokens=True,
        python=True,
        workloads=WORKLOADS,
    ),
    *(
        Scenario(
            f"server-{server}",
            f"the full pipeline's gate under {server} instead of authcar's protocol on uvicorn"
            " (bench/asgi_servers.py; no admin listener)",
            lambda c, server=server: start_authcar(c, mode="jwt", rules=FULL_PIPELINE_RULES, server=server),
            needs_tokens=True,
            python=True,
        )
        for server in ("uvicorn-stock", "hypercorn", "granian")
    ),
    Scenario(
        "authcar-full-first-seen",
        "full pipeline, 1 worker, a different RS256 token per request (Lua)",
        lambda c: start_authcar(c, mode="first-seen", rules=FULL_PIPELINE_RULES),
        needs_tokens=True,
        python=True,
        # With idle-1k, the memory target's steady state: the token cache full (10,000 distinct
        # live tokens) and 1,000 idle keep-alive connections held.
        workloads=("saturation", "idle-1k"),
    ),
    Scenario(
        "authcar-full-10k",
        f"full pipeline, 1 worker, {LARGE_POLICY_RULES:,}-rule policy",
        lambda c: start_authcar(c, mode="jwt", rules=LARGE_POLICY_RULES),
        needs_tokens=True,
        python=True,
    ),
    Scenario(
        "authcar-full-redis",
        "full pipeline, 1 worker, AUTHCAR_REDIS_URL set (private redis-server): the revocation list"
        " polled from it, no rate limit; a JWT request makes no store call",
        lambda c: start_authcar(c, mode="jwt", rules=FULL_PIPELINE_RULES, redis=True),
        needs_tokens=True,
        python=True,
    ),
    Scenario(
        "authcar-full-limits",
        "full pipeline, 1 worker, in-memory store: a rate limit no request reaches (one GCRA step"
        " each) and 100 revocations the token is not on",
        lambda c: start_authcar(c, mode="jwt", rules=FULL_PIPELINE_RULES, limits=True),
        needs_tokens=True,
        python=True,
    ),
    Scenario(
        "authcar-full-limits-redis",
        "the same checks with the store in a private redis-server: one Redis call (EVALSHA) per request",
        lambda c: start_authcar(c, mode="jwt", rules=FULL_PIPELINE_RULES, redis=True, limits=True),
        needs_tokens=True,
        python=True,
    ),
    Scenario(
        "authcar-full-trace",
        "full pipeline, 1 worker, OpenTelemetry on: every request sampled, four spans each, exported"
        " over OTLP/HTTP in batches",
        lambda c: start_authcar(c, mode="jwt", rules=FULL_PIPELINE_RULES, tracing=1.0),
        needs_tokens=True,
        python=True,
    ),
    Scenario(
        "authcar-full-trace-1pct",
        "the same with OTEL_TRACES_SAMPLER=parentbased_traceidratio at 0.01: 1 request in 100 sampled",
        lambda c: start_authcar(c, mode="jwt", rules=FULL_PIPELINE_RULES, tracing=0.01),
        needs_tokens=True,
        python=True,
    ),
    Scenario(
        "bare-python",
        "wrk -> bare uvicorn+aiohttp pass-through -> upstream",
        start_bare_python,
        python=True,
    ),
    Scenario(
        "authcar",
        "wrk -> authcar (anonymous, log warning) -> upstream",
        lambda c: start_authcar(c),
        python=True,
    ),
    Scenario(
        "authcar-logged",
        "wrk -> authcar (anonymous, JSON access log at info to /dev/null) -> upstream",
        lambda c: start_authcar(c, logged=True),
        python=True,
    ),
    Scenario(
        "authcar-pad",
        "wrk + X-Pad header as long as the bearer header -> authcar (anonymous) -> upstream",
        lambda c: start_authcar(c, mode="pad"),
        needs_tokens=True,
        python=True,
    ),
    Scenario(
        "authcar-jwt",
        "wrk + one repeated RS256 bearer token -> authcar (tokens required) -> upstream",
        lambda c: start_authcar(c, mode="jwt"),
        needs_tokens=True,
        python=True,
    ),
    Scenario(
        "authcar-jwt-first-seen",
        "wrk + a different RS256 token per request (Lua) -> authcar (tokens required) -> upstream",
        lambda c: start_authcar(c, mode="first-seen"),
        needs_tokens=True,
        python=True,
    ),
)
AUTH_BASELINES = ("authcar-pad", "authcar")  # the anonymous row authcar-jwt is compared with


# --- tokens ------------------------------------------------------------------


def start_token_kit(
    children: Children, tmp: Path, *, first_seen: int, idp_port: int | None = None
) -> TokenKit:
    """Start tests/idp, mint the repeated token, and sign `first_seen` distinct ones (0 = none).

    The distinct tokens are signed here with the provider's own key (fetched through its admin API),
    same header and claims as the minted token but a fresh `jti` each: minting them over HTTP one by
    one would take minutes.
    """
    if str(REPO_DIR) not in sys.path:
        sys.path.insert(0, str(REPO_DIR))
    try:
        import jwt
        from tokens import sign_many

        from tests.idp.client import IdPClient
    except ImportError as exc:
        raise BenchError(
            f"token scenarios need the project's dev dependencies (run with .venv/bin/python): {exc}"
        ) from exc
    port = idp_port or free_port()
    log_path = tmp / "idp.log"
    proc = children.spawn(
        [sys.executable, "-m", "tests.idp", "--port", str(port)], cwd=REPO_DIR, log=log_path
    )
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(
        base + "/realms/test/.well-known/openid-configuration",
        proc,
        timeout=30,
        what="test identity provider",
        log=log_path,
    )
    with IdPClient(base) as idp:
        token = idp.mint(expires_in=TOKEN_LIFETIME_S)
        header = jwt.get_unverified_header(token)
        kid = header["kid"]
        private = idp.private_key(kid)
        issuer = idp.issuer
    claims = jwt.decode(token, options={"verify_signature": False})
    tokens_file = None
    if first_seen > 0:
        started = time.monotonic()
        log(f"signing {first_seen} distinct RS256 tokens for authcar-jwt-first-seen ...")
        tokens = sign_many(private, kid, claims, first_seen, alg=header["alg"])
        tokens_file = tmp / "first-seen-tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        log(f"signed in {time.monotonic() - started:.0f}s ({len(tokens[0])} bytes each)")
    return TokenKit(
        issuer=issuer,
        token=token,
        public_key=private.public_key(),  # type: ignore[union-attr]
        private_key=private,
        kid=kid,
        tokens_file=tokens_file,
        first_seen_count=first_seen,
    )


def token_counts(metrics_url: str | None) -> dict[str, int] | None:
    """authcar_token_validations_total by result, from the sidecar's /metrics (None if unavailable)."""
    if metrics_url is None:
        return None
    try:
        status, body = http_get(metrics_url, timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    return {m.group(1).decode(): int(float(m.group(2))) for m in TOKEN_METRIC.finditer(body)}


def store_call_counts(metrics_url: str | None) -> dict[str, int] | None:
    """authcar_store_seconds_count as "<operation> <result>" -> calls (None if unavailable)."""
    if metrics_url is None:
        return None
    try:
        status, body = http_get(metrics_url, timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    return {
        f"{m.group(1).decode()} {m.group(2).decode()}": int(float(m.group(3)))
        for m in STORE_METRIC.finditer(body)
    }


def count_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in delta.items() if v} or None


# --- upstream ----------------------------------------------------------------


def start_upstream(children: Children, tmp: Path, nginx: str | None, kind: str) -> tuple[int, str]:
    """Start the fixed-200 upstream; returns (port, description)."""
    port = free_port()
    if kind == "nginx" or (kind == "auto" and nginx):
        if nginx is None:
            raise BenchError("--upstream nginx but nginx is not installed (apt-get install -y nginx)")
        prefix = tmp / "upstream"
        argv = nginx_argv(nginx, prefix, upstream_conf(prefix, port))
        proc = children.spawn(argv, log=prefix / "stdout.log")
        desc, log = "nginx return 200 (1 worker)", prefix / "error.log"
    else:
        log = tmp / "upstream.log"
        proc = children.spawn(
            [sys.executable, str(BENCH_DIR / "fast_upstream.py"), "--port", str(port)], log=log
        )
        desc = "bench/fast_upstream.py (uvloop + httptools)"
    wait_http_ok(f"http://127.0.0.1:{port}/", proc, timeout=10, what="upstream", log=log)
    return port, desc


# --- measuring ---------------------------------------------------------------


def load_url(target: Target, workload: str) -> str:
    return target.url.rstrip("/") + DOWNLOAD_PATH if workload == "download-1m" else target.url


def check_response(target: Target, workload: str = "saturation") -> None:
    """One request before loading: a 401 or wrong body would make the numbers meaningless."""
    url = load_url(target, workload)
    expected = download_body() if workload == "download-1m" else UPSTREAM_BODY
    data = b"0123456789abcdef" * (UPLOAD_BYTES // 16) if workload == "upload-1m" else None
    try:
        status, body = http_get(url, timeout=10, headers=dict(target.headers), data=data)
    except OSError as exc:
        raise BenchError(f"sanity request to {url} failed: {exc}") from exc
    if status != 200 or body != expected:
        raise BenchError(
            f"sanity request to {url}: expected 200 with the upstream's {len(expected)}-byte body,"
            f" got {status} {len(body)} bytes {body[:200]!r}"
        )


def check_refuses_bad_tokens(target: Target) -> None:
    """A row that claims to verify tokens must refuse a forged signature and a missing token: a
    gateway that let them through would be benchmarked doing less than authcar does."""
    name, value = next((h for h in target.headers if h[0].lower() == "authorization"), ("", ""))
    if not value.startswith("Bearer "):
        raise BenchError("an auth-doing row without a bearer token to forge")
    forged = baselines.forged(value.removeprefix("Bearer "))
    for what, headers in (("a forged signature", {name: f"Bearer {forged}"}), ("no token", {})):
        try:
            status, _ = http_get(target.url, timeout=10, headers=headers)
        except OSError as exc:
            raise BenchError(f"request with {what} to {target.url} failed: {exc}") from exc
        if status not in REFUSED:
            raise BenchError(
                f"{target.url} answered {status} to a request with {what}: it does not check the"
                " token, so its figures would not compare; not measured"
            )


class IdleConnections:
    """Keep-alive connections that each made one request, then sit idle while the load runs."""

    def __init__(self, target: Target, count: int) -> None:
        request = build_request(target)
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = socket.create_connection(_address(target.url), timeout=10)
                self.sockets.append(sock)
                sock.sendall(request)
                if not _read_response(sock).startswith(b"HTTP/1.1 200"):
                    raise BenchError(f"an idle connection's request to {target.url} was not answered 200")
        except BaseException:
            self.close()
            raise

    def still_open(self) -> int:
        """How many the proxy has not closed (a peek that finds EOF means closed)."""
        alive = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                alive += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def build_request(target: Target) -> bytes:
    host, port = _address(target.url)
    lines = ["GET / HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in target.headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _address(url: str) -> tuple[str, int]:
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def _read_response(sock: socket.socket) -> bytes:
    """One small Content-Length response (the upstream's 17-byte 200)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [
        int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")
    ]
    length = lengths[0] if lengths else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


def run_open_loop(ctx: Context, target: Target, rate: int, duration: int) -> tuple[WrkResult, dict[str, Any]]:
    """bench/openloop.py in its own process (its CPU is not the proxy's): latency at a fixed rate."""
    argv = [sys.executable, str(BENCH_DIR / "openloop.py"), "--url", target.url]
    argv += ["--rate", str(rate), "--duration", str(duration)]
    for name, value in target.headers:
        argv += ["-H", f"{name}: {value}"]
    proc = ctx.children.spawn(argv, capture=True)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError("bench/openloop.py did not finish") from exc
    finally:
        ctx.children.stop(proc)
    if proc.returncode != 0:
        detail = err.decode(errors="replace")[-500:]
        raise BenchError(f"bench/openloop.py failed ({proc.returncode}): {detail}")
    report = json.loads(out)
    if not report.get("completed"):
        raise BenchError(f"bench/openloop.py completed no request: {report}")
    result = WrkResult(
        requests_per_s=report["achieved_rps"],
        p50_ms=report["p50_ms"],
        p99_ms=report["p99_ms"],
        requests=report["completed"],
        non_2xx=report["non_2xx"],
        socket_errors=report["errors"],
    )
    return result, report


def start_profiler(ctx: Context, target: Target, path: Path, duration: int) -> subprocess.Popen[bytes] | None:
    """py-spy record on the measured process for the measured run, as collapsed stacks.

    Blocking mode (py-spy pauses the process for each sample): --nonblocking reads torn coroutine
    stacks under this load (about one sample in eight unusable), which ruins inclusive shares.
    """
    if target.proc is None:
        return None
    argv = [
        "py-spy", "record", "--pid", str(target.proc.pid), "--duration", str(duration),
        "--rate", "250", "--format", "raw", "--output", str(path),
    ]  # fmt: skip
    return ctx.children.spawn(argv, log=path.with_suffix(".log"))


def measure(scenario: Scenario, ctx: Context, args: argparse.Namespace, rep: int) -> Measurement:
    target = scenario.start(ctx)
    if args.pin and target.proc is not None:
        # Everything else (wrk, upstream, this harness) inherited the other CPU from run().
        pin_process(target.proc.pid, {PROXY_CPU})
    workload = ctx.workload
    check_response(target, workload)
    if target.verifies_tokens:
        check_refuses_bad_tokens(target)
    url = load_url(target, workload)
    label = scenario.name if workload == "saturation" else f"{scenario.name} @{workload}"
    log(f"{label}: warm-up {args.warmup}s, then {args.duration}s on {url} (run {rep})")
    options = [*(o for h in target.headers for o in ("-H", f"{h[0]}: {h[1]}")), *target.wrk_options]
    if workload == "upload-1m":
        options += ["-s", str(UPLOAD_SCRIPT)]
    load: dict[str, Any] = {
        "connections": args.connections,
        "threads": args.threads,
        "options": options,
        "script_args": target.script_args,
    }
    idle = IdleConnections(target, IDLE_CONNECTIONS) if workload == "idle-1k" else None
    try:
        if args.warmup > 0:
            run_wrk(ctx.children, url, duration=args.warmup, **load)
        pgid = target.proc.pid if target.proc is not None else None
        tokens_before = token_counts(target.metrics_url)
        store_before = store_call_counts(target.metrics_url) if target.store_proc is not None else None
        profiler = profile_path = None
        if args.profile and scenario.python:
            profile_path = args.profile / f"{scenario.name}-{workload}-run{rep}.txt"
            profiler = start_profiler(ctx, target, profile_path, args.duration)
        detail: dict[str, Any] | None = None
        cpu_before = group_cpu_seconds(pgid) if pgid is not None else None
        store_pgid = target.store_proc.pid if target.store_proc is not None else None
        store_cpu_before = group_cpu_seconds(store_pgid) if store_pgid is not None else None
        if workload.startswith("rate-"):
            result, detail = run_open_loop(ctx, target, int(workload.removeprefix("rate-")), args.duration)
        else:
            result = run_wrk(ctx.children, url, duration=args.duration, **load)
        cpu_after = group_cpu_seconds(pgid) if pgid is not None else None
        store_cpu_after = group_cpu_seconds(store_pgid) if store_pgid is not None else None
        rss = group_rss_mib(pgid) if pgid is not None else None
        tokens_after = token_counts(target.metrics_url)
        store_after = store_call_counts(target.metrics_url) if target.store_proc is not None else None
        if idle is not None:
            detail = {"idle_connections": IDLE_CONNECTIONS, "idle_still_open_after": idle.still_open()}
    finally:
        if idle is not None:
            idle.close()
    if profiler is not None:
        try:
            profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log(f"{scenario.name}: py-spy did not finish; profile may be incomplete")
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    store_cpu = None
    if store_cpu_before is not None and store_cpu_after is not None:
        store_cpu = store_cpu_after - store_cpu_before
    return Measurement(
        result,
        cpu,
        count_delta(tokens_before, tokens_after),
        str(profile_path) if profile_path and profile_path.exists() else None,
        rss_mib=rss,
        load_detail=detail,
        store_cpu_s=store_cpu,
        store_calls=count_delta(store_before, store_after) if store_before is not None else None,
    )


def run_scenario(
    scenario: Scenario,
    tmp: Path,
    nginx: str | None,
    upstream_port: int,
    tokens: TokenKit | None,
    args: argparse.Namespace,
    row: Row,
    rep: int,
) -> None:
    if scenario.needs_nginx and nginx is None:
        if not row.errors:
            row.errors.append("skipped: nginx not installed (apt-get install -y nginx)")
        return
    if scenario.needs_tokens and tokens is None:
        if not row.errors:
            row.errors.append("skipped: the test identity provider could not be started")
        return
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet, scenario.name)
    children = Children()
    try:
        ctx = Context(
            children, tmp, nginx, upstream_port, tokens, args.threads, row.workload, not args.no_install
        )
        row.runs.append(measure(scenario, ctx, args, rep))
    except (BenchError, OSError) as exc:
        row.errors.append(str(exc))
        if str(exc).startswith("skipped"):
            del row.errors[1:]  # one skip note per row, not one per repetition
        log(f"{row.label}: FAILED: {exc}")
    finally:
        children.stop_all()  # before the next scenario, so it gets the CPU alone


def wait_quiet(limit_s: float, name: str) -> None:
    """Wait until other load on the machine drops under BUSY_WARN_PCT (at most limit_s seconds)."""
    started = time.monotonic()
    busy = cpu_busy_pct()
    while busy is not None and busy > BUSY_WARN_PCT:
        if time.monotonic() - started > limit_s:
            log(f"{name}: machine still {busy:.0f}% busy after {limit_s:.0f}s of waiting; measuring anyway")
            return
        log(f"{name}: machine {busy:.0f}% busy, waiting for it to calm down")
        time.sleep(4)
        busy = cpu_busy_pct()


def add_ratios(rows: list[Row]) -> None:
    """Each row against the reference systems under the same workload (bench/accounting.py)."""
    figures = {
        (r.scenario, r.workload): Figures(res.requests_per_s, res.p50_ms, res.p99_ms, r.cpu_us_per_request)
        for r in rows
        if (res := r.result) is not None
    }
    ratios = compare(figures, fixed_rate=[w for w in WORKLOADS if w.startswith("rate-")])
    for row in rows:
        row.ratios = ratios.get((row.scenario, row.workload), {})


def paired(a: Row, b: Row, value: Callable[[Measurement], float | None]) -> list[float]:
    """value(a) / value(b) per repetition measured for both (same repetition = closest in time)."""
    out = []
    for ma, mb in zip(a.runs, b.runs, strict=False):
        va, vb = value(ma), value(mb)
        if va is not None and vb is not None and vb > 0:
            out.append(va / vb)
    return out


def cpu_values(row: Row) -> list[float]:
    return [v for m in row.runs if (v := m.cpu_us_per_request) is not None]


def auth_summary(rows: list[Row], kit: TokenKit | None, costs: dict[str, float] | None) -> dict[str, Any]:
    """What authentication costs: authcar-jwt against the anonymous row, first-seen against repeated."""
    by_name = {r.scenario: r for r in rows if r.runs and r.workload == "saturation"}
    summary: dict[str, Any] = {}
    if costs:
        summary["token_costs_us"] = costs
    if kit is not None:
        summary["token_bytes"] = len(kit.token)
        summary["first_seen_tokens"] = kit.first_seen_count
    jwt_row = by_name.get("authcar-jwt")
    base = next((by_name[n] for n in AUTH_BASELINES if n in by_name), None)
    rps = lambda m: m.wrk.requests_per_s  # noqa: E731
    cpu = lambda m: m.cpu_us_per_request  # noqa: E731
    if jwt_row is not None and base is not None:
        rps_ratios = paired(jwt_row, base, rps)
        cpu_ratios = paired(jwt_row, base, cpu)
        summary["jwt_vs_anonymous"] = {
            "baseline": base.scenario,
            "rps_ratio_median": statistics.median(rps_ratios) if rps_ratios else None,
            "rps_ratios": rps_ratios,
            "cpu_ratio_median": statistics.median(cpu_ratios) if cpu_ratios else None,
            "cpu_ratios": cpu_ratios,
            "cpu_us_per_request": {
                base.scenario: base.cpu_us_per_request,
                "authcar-jwt": jwt_row.cpu_us_per_request,
            },
            "cache_hit_share": jwt_row.cache_hit_share,
        }
        best = [min(v) for v in (cpu_values(jwt_row), cpu_values(base)) if v]
        if len(best) == 2:
            # Other load on the box only ever adds CPU per request: the lowest run is the least disturbed.
            summary["jwt_vs_anonymous"]["cpu_us_per_request_best"] = {
                base.scenario: best[1],
                "authcar-jwt": best[0],
            }
            summary["jwt_vs_anonymous"]["cpu_ratio_best"] = best[0] / best[1]
    first = by_name.get("authcar-jwt-first-seen")
    if first is not None and jwt_row is not None:
        extra = [
            a - b
            for ma, mb in zip(first.runs, jwt_row.runs, strict=False)
            if (a := ma.cpu_us_per_request) is not None and (b := mb.cpu_us_per_request) is not None
        ]
        entry: dict[str, Any] = {
            "cpu_us_per_request": first.cpu_us_per_request,
            "extra_cpu_us_per_request": extra,
            "extra_cpu_us_median": statistics.median(extra) if extra else None,
            "rps_ratio_vs_jwt": statistics.median(r) if (r := paired(first, jwt_row, rps)) else None,
            "cache_hit_share": first.cache_hit_share,
        }
        if costs and entry["extra_cpu_us_median"] is not None:
            entry["jwt_decodes"] = entry["extra_cpu_us_median"] / costs["jwt_decode_us"]
            entry["rsa_verifies"] = entry["extra_cpu_us_median"] / costs["rsa_verify_us"]
        summary["first_seen_vs_repeated"] = entry
    return summary


def shared_state_summary(rows: list[Row]) -> dict[str, Any]:
    """What the shared-state checks and tracing cost the sidecar, paired per repetition against
    their baseline, and what each request costs Redis (its own CPU, and the calls authcar counted)."""
    by_name = {r.scenario: r for r in rows if r.runs and r.workload == "saturation"}
    rps = lambda m: m.wrk.requests_per_s  # noqa: E731
    cpu = lambda m: m.cpu_us_per_request  # noqa: E731
    pairs = []
    for name, base_name, what in (*SHARED_STATE_PAIRS, *TRACING_PAIRS):
        row, base = by_name.get(name), by_name.get(base_name)
        if row is None or base is None:
            continue
        rps_ratios, cpu_ratios = paired(row, base, rps), paired(row, base, cpu)
        pairs.append(
            {
                "scenario": name,
                "baseline": base_name,
                "what": what,
                "rps_ratio_median": statistics.median(rps_ratios) if rps_ratios else None,
                "rps_ratios": rps_ratios,
                "cpu_ratio_median": statistics.median(cpu_ratios) if cpu_ratios else None,
                "cpu_ratios": cpu_ratios,
                "cpu_us_per_request": {base_name: base.cpu_us_per_request, name: row.cpu_us_per_request},
            }
        )
    redis = {
        r.scenario: {
            "redis_cpu_us_per_request": r.store_cpu_us_per_request,
            "store_calls_per_request": r.store_calls_per_request,
        }
        for r in by_name.values()
        if r.store_cpu_us_per_request is not None
    }
    return {"pairs": pairs, "redis": redis} if pairs or redis else {}


def format_shared_state_summary(summary: dict[str, Any]) -> str:
    lines = []
    for pair in summary.get("pairs", []):
        name, base = pair["scenario"], pair["baseline"]
        line = f"{name} / {base} ({pair['what']}):"
        if pair["cpu_ratio_median"] is not None:
            cpus = pair["cpu_us_per_request"]
            line += (
                f" sidecar CPU/request {pair['cpu_ratio_median']:.3f}x ({_list(pair['cpu_ratios'])}),"
                f" {cpus[base]:.1f} -> {cpus[name]:.1f} µs"
            )
        if pair["rps_ratio_median"] is not None:
            line += f"; req/s {pair['rps_ratio_median']:.3f}x ({_list(pair['rps_ratios'])})"
        lines.append(line)
    for name, figures in summary.get("redis", {}).items():
        line = f"{name}: redis-server CPU {figures['redis_cpu_us_per_request']:.1f} µs/request"
        if (calls := figures["store_calls_per_request"]) is not None:
            line += f", {calls:.2f} store calls/request (authcar_store_seconds_count)"
        lines.append(line)
    return "\n".join(lines)


def format_auth_summary(summary: dict[str, Any]) -> str:
    lines = []
    costs = summary.get("token_costs_us")
    jv = summary.get("jwt_vs_anonymous")
    if jv:
        base = jv["baseline"]
        cpus = jv["cpu_us_per_request"]
        line = f"authcar-jwt / {base}:"
        if jv["rps_ratio_median"] is not None:
            line += f" req/s {jv['rps_ratio_median']:.3f}x ({_list(jv['rps_ratios'])})"
        if jv["cpu_ratio_median"] is not None:
            line += (
                f"; sidecar CPU/request {jv['cpu_ratio_median']:.3f}x ({_list(jv['cpu_ratios'])}),"
                f" {cpus[base]:.1f} -> {cpus['authcar-jwt']:.1f} µs"
            )
        lines.append(line)
        if "cpu_ratio_best" in jv:
            best = jv["cpu_us_per_request_best"]
            lines.append(
                f"  best run of each: CPU/request {jv['cpu_ratio_best']:.3f}x,"
                f" {best[base]:.1f} -> {best['authcar-jwt']:.1f} µs"
            )
        if jv["cache_hit_share"] is not None:
            lines.append(f"  authcar-jwt answered from the token cache: {jv['cache_hit_share']:.2%}")
    fs = summary.get("first_seen_vs_repeated")
    if fs:
        line = "authcar-jwt-first-seen vs authcar-jwt:"
        if fs["extra_cpu_us_median"] is not None:
            runs = _list(fs["extra_cpu_us_per_request"], ".0f")
            line += f" +{fs['extra_cpu_us_median']:.0f} µs CPU/request ({runs})"
        if "jwt_decodes" in fs:
            line += f" = {fs['jwt_decodes']:.2f} jwt.decode = {fs['rsa_verifies']:.2f} RSA verify"
        if fs["rps_ratio_vs_jwt"] is not None:
            line += f"; req/s {fs['rps_ratio_vs_jwt']:.2f}x"
        lines.append(line)
        if fs["cache_hit_share"] is not None:
            lines.append(
                f"  first-seen requests answered from the token cache: {fs['cache_hit_share']:.2%} (want ~0)"
            )
    if costs:
        lines.append(
            f"in this process, one RS256 check of the {summary.get('token_bytes', '?')}-byte token:"
            f" jwt.decode with claim checks {costs['jwt_decode_us']:.1f} µs,"
            f" signature only {costs['jwt_decode_signature_only_us']:.1f} µs,"
            f" bare RSA verify {costs['rsa_verify_us']:.1f} µs"
        )
    return "\n".join(lines)


def _list(values: list[float], fmt: str = ".3f") -> str:
    return " ".join(format(v, fmt) for v in values)


# --- output ------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def format_table(rows: list[Row], repeat: int = 1) -> str:
    header = (
        "scenario",
        "req/s",
        "range",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "CPU µs/req",
        "RSS MiB",
        "vs direct",
        "vs nginx",
        "vs haproxy",
        "CPU/haproxy",
        "vs apache",
        "CPU/apache",
        "notes",
    )
    left = {0, len(header) - 1}
    lines = [header]
    for row in rows:
        res = row.result
        if res is None:
            lines.append((row.label, *["-"] * (len(header) - 2), (row.error or "").splitlines()[0]))
            continue
        notes = []
        if res.non_2xx:
            notes.append(f"{res.non_2xx} non-2xx!")
        if res.socket_errors:
            notes.append(f"{res.socket_errors} socket errors")
        if row.errors:
            notes.append(f"{len(row.errors)} of {len(row.errors) + len(row.runs)} runs failed")
        if (share := row.cache_hit_share) is not None:
            notes.append(f"token cache hits {share:.1%}")
        if (store_cpu := row.store_cpu_us_per_request) is not None:
            notes.append(f"redis-server CPU {store_cpu:.1f} µs/req")
        notes.extend(_load_notes(row))
        all_rps = [m.wrk.requests_per_s for m in row.runs]
        cpu = row.cpu_us_per_request
        rss = row.rss_worker_mib
        lines.append(
            (
                row.label,
                f"{res.requests_per_s:,.0f}",
                f"{min(all_rps):,.0f}-{max(all_rps):,.0f}" if len(all_rps) > 1 else "-",
                f"{res.p50_ms:.2f}",
                f"{res.p99_ms:.2f}",
                _added(row, "p50_added_ms"),
                _added(row, "p99_added_ms"),
                f"{cpu:.1f}" if cpu is not None else "-",
                f"{rss:.1f}" if rss is not None else "-",
                _ratio(row, "rps_vs_direct"),
                _ratio(row, "rps_vs_nginx"),
                _ratio(row, "rps_vs_haproxy"),
                _ratio(row, "cpu_vs_haproxy"),
                _ratio(row, "rps_vs_apache"),
                _ratio(row, "cpu_vs_apache"),
                ", ".join(notes),
            )
        )
    if repeat == 1:  # no range column for a single run
        lines = [line[:2] + line[3:] for line in lines]
        left = {0, len(lines[0]) - 1}
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for i, line in enumerate(lines):
        cells = [
            c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _ratio(row: Row, key: str) -> str:
    return f"{row.ratios[key]:.2f}x" if key in row.ratios else "-"


def _added(row: Row, key: str) -> str:
    return f"{row.ratios[key]:+.2f}" if key in row.ratios else "-"


def _load_notes(row: Row) -> list[str]:
    """What the last run's load generator said about itself (open-loop precision, idle connections)."""
    detail = row.runs[-1].load_detail if row.runs else None
    if not detail:
        return []
    if "idle_connections" in detail:
        still, held = detail["idle_still_open_after"], detail["idle_connections"]
        return [f"{still} of {held} idle connections still open"]
    return [f"open loop {detail['rate']:.0f}/s, generator woke p99 {detail['wake_lag_p99_ms']:.2f} ms late"]


def machine_info(nginx: str | None) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "loadavg_at_start": os.getloadavg(),
        "cpu_busy_before_pct": cpu_busy_pct(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _pkg_version(name) for name in PACKAGES},
        "nginx": nginx_version(nginx) if nginx else None,
        "wrk": wrk_version(),
        "authcar_commit": _git_head(),
        "authcar_tree_sha256": source_fingerprint(),
    }


def source_fingerprint() -> str:
    """SHA-256 over authcar/**/*.py (paths and contents): which code ran, commit or not.

    Compared at the end of the run: an edit in between means the repetitions did not all measure
    the same code.
    """
    digest = hashlib.sha256()
    for path in sorted((REPO_DIR / "authcar").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_DIR)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cpu_busy_pct(interval: float = 1.0) -> float | None:
    """Share of all CPUs busy over `interval`, from /proc/stat (None if unreadable)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # guest time is already inside user

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 100.0 * (1 - (idle1 - idle0) / total) if total > 0 else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _pkg_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_head() -> str | None:
    """The checked-out commit, read from .git without running git (records what produced the numbers)."""
    git = REPO_DIR / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (REPO_DIR / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        for base in (git, _common_dir(git)):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
    except OSError:
        pass
    return None


def _common_dir(git: Path) -> Path:
    common = git / "commondir"
    return (git / common.read_text().strip()).resolve() if common.is_file() else git


def write_json(
    path: Path,
    rows: list[Row],
    args: argparse.Namespace,
    upstream: str,
    machine: dict[str, Any],
    auth: dict[str, Any] | None = None,
    shared: dict[str, Any] | None = None,
) -> None:
    data = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "repeat": args.repeat,
            "upstream": upstream,
            "upstream_body_bytes": len(UPSTREAM_BODY),
            "first_seen_tokens": args.first_seen_tokens,
            "profiled": bool(args.profile),
            "wait_quiet_s": args.wait_quiet,
            "pinned": args.pin,
            "workloads": args.workloads,
            "idle_connections": IDLE_CONNECTIONS,
            "upload_bytes": UPLOAD_BYTES,
            "full_pipeline_rules": FULL_PIPELINE_RULES,
        },
        "machine": machine,
        "results": [
            {
                "scenario": r.scenario,
                "label": r.label,
                "description": r.description,
                **(res.to_dict() if (res := r.result) else {}),
                "cpu_us_per_request": r.cpu_us_per_request,
                "store_cpu_us_per_request": r.store_cpu_us_per_request,
                "store_calls_per_request": r.store_calls_per_request,
                "workload": r.workload,
                "rss_worker_mib": r.rss_worker_mib,
                "ratios": r.ratios,
                "ratio_vs_direct": r.ratios.get("rps_vs_direct"),
                "ratio_vs_nginx": r.ratios.get("rps_vs_nginx"),
                "error": r.error,
                "runs": [m.to_dict() for m in r.runs],
                "errors": r.errors,
            }
            for r in rows
        ],
        "auth": auth or {},
        "shared_state": shared or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# --- main --------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = [s.name for s in SCENARIOS]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=int, default=10, help="whole seconds measured per scenario (default 10)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="whole seconds of unmeasured load first, 0 = none (default 2)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the selected scenarios N times, round-robin (default 1)"
    )
    parser.add_argument("--only", default=",".join(names), help=f"comma list of: {','.join(names)}")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma list of: {','.join(WORKLOADS)}; all but saturation run only for the side-by-side"
        " systems (direct, nginx, haproxy, apache, authcar-full, authcar-full-2w)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never apt-get install a missing baseline (its row is skipped with the command to run)",
    )
    parser.add_argument("--json", type=Path, help="also write results and machine info here")
    parser.add_argument(
        "--upstream",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="upstream server: nginx when installed (auto), or bench/fast_upstream.py",
    )
    parser.add_argument(
        "--first-seen-tokens",
        type=int,
        default=20000,
        help="distinct tokens cycled by authcar-jwt-first-seen; must exceed authcar's token cache "
        "(10,000) or some are answered from it (default 20000)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each scenario, wait up to SECONDS for other CPU load to drop under "
        f"{BUSY_WARN_PCT:.0f}%% (for shared machines; default 0 = do not wait)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help=f"pin the measured proxy to CPU {PROXY_CPU}, wrk, the upstream and the rest to CPU "
        f"{LOAD_CPU} (steadier CPU µs/request; req/s then pits a one-core proxy against one-core load)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record every Python scenario's measured run into DIR (collapsed stacks; "
        "summarise with bench/profile_summary.py). py-spy takes CPU too: do not publish these figures",
    )
    args = parser.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = sorted(set(args.workloads) - set(WORKLOADS))
    if bad or not args.workloads:
        parser.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}")
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.threads < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --connections and --threads >= 1")
    if args.repeat < 1 or args.first_seen_tokens < 1:
        parser.error("--repeat and --first-seen-tokens must be >= 1")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections (wrk requirement)")
    if args.pin and not {PROXY_CPU, LOAD_CPU} <= os.sched_getaffinity(0):
        parser.error(f"--pin needs CPUs {LOAD_CPU} and {PROXY_CPU}")
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    return args


def run(args: argparse.Namespace) -> int:
    for tool in (baselines.WRK, baselines.NGINX):  # the load generator, the upstream and its row
        _, note = baselines.find_or_install(tool, install=not args.no_install)
        if note:
            log(f"{tool.binary}: {note}")
    require_wrk()
    nginx = nginx_path()
    selected = [s for s in SCENARIOS if s.name in args.only]
    machine = machine_info(nginx)
    busy = machine["cpu_busy_before_pct"]
    if busy is not None and busy > BUSY_WARN_PCT:
        # Other load (a test suite, another benchmark) skews every ratio.
        log(f"WARNING: CPU already {busy:.0f}% busy before starting; numbers will be noisy")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.pin:
        # Inherited by every child: wrk, the upstream and the identity provider share CPU 0.
        os.sched_setaffinity(0, {LOAD_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="authcar-bench-"))
    run_children = Children()  # upstream and identity provider: live for the whole run
    plan = [(s, Row(s.name, s.description, w)) for w in args.workloads for s in selected if w in s.workloads]
    rows = [row for _, row in plan]
    raise_fd_limit()  # idle-1k: 1,000 sockets here, and as many in the proxy (inherited)
    kit: TokenKit | None = None
    costs: dict[str, float] | None = None
    try:
        upstream_port, upstream_desc = start_upstream(run_children, tmp, nginx, args.upstream)
        log(f"upstream: {upstream_desc} on 127.0.0.1:{upstream_port}; temp dir {tmp}")
        if any(s.needs_tokens for s in selected):
            first_seen = args.first_seen_tokens if any("first-seen" in n for n in args.only) else 0
            try:
                kit = start_token_kit(run_children, tmp, first_seen=first_seen)
                log(f"identity provider: {kit.issuer}; token {len(kit.token)} bytes")
            except (BenchError, OSError) as exc:
                log(f"token scenarios skipped: {exc}")
        for rep in range(1, args.repeat + 1):
            for scenario, row in plan:
                run_scenario(scenario, tmp, nginx, upstream_port, kit, args, row, rep)
        if kit is not None:
            from tokens import decode_cost_us  # needs pyjwt: only with the token scenarios

            # Measured with every scenario stopped: one signature check on a quiet machine.
            costs = decode_cost_us(kit.token, kit.public_key, issuer=kit.issuer, audience=AUDIENCE)
    finally:
        run_children.stop_all()
        rmtree(tmp, ignore_errors=True)
    add_ratios(rows)
    auth = auth_summary(rows, kit, costs)
    shared = shared_state_summary(rows)
    changed = source_fingerprint() != machine["authcar_tree_sha256"]
    machine["authcar_tree_changed_during_run"] = changed
    print(
        f"\nupstream: {upstream_desc}; wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(warm-up {args.warmup}s); nproc={machine['nproc']}"
        + (f"; medians of {args.repeat} runs" if args.repeat > 1 else "")
    )
    print(format_table(rows, args.repeat))
    text = format_auth_summary(auth)
    if text:
        print("\n" + text)
    text = format_shared_state_summary(shared)
    if text:
        print("\n" + text)
    if args.profile:
        print(f"\npy-spy profiles in {args.profile} (figures above include py-spy's own load)")
    if busy is not None and busy > BUSY_WARN_PCT:
        print(f"WARNING: CPU was {busy:.0f}% busy before the run: rerun on a quiet machine")
    if changed:
        print("WARNING: authcar/*.py changed during the run: the repetitions measured different code")
    if args.json:
        write_json(args.json, rows, args, upstream_desc, machine, auth, shared)
        log(f"wrote {args.json}")
    failed = any(r.errors and not r.errors[0].startswith("skipped") for r in rows)
    non_2xx = any(m.wrk.non_2xx for r in rows for m in r.runs)
    return 1 if failed or non_2xx else 0


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _exit_on_signal(signum: int, _frame: object) -> None:
    # Turn SIGTERM/SIGHUP into SystemExit so `finally` blocks reap the children.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    started = time.monotonic()
    try:
        code = run(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; child processes stopped", file=sys.stderr)
        return 130
    log(f"done in {time.monotonic() - started:.0f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
