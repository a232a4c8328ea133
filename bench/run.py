"""Benchmark authcar against a direct baseline, nginx and a bare Python proxy.

    python bench/run.py [--duration 10] [--connections 32] [--threads 1]
                        [--only direct,nginx,...] [--json out.json]

Every scenario loads the same fast local upstream with wrk, one scenario at a
time, in a single run; see bench/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
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

from fast_upstream import UPSTREAM_BODY
from nginx_conf import nginx_argv, nginx_path, nginx_version, proxy_conf, upstream_conf
from procs import BenchError, Children, free_port, http_get, wait_http_ok
from wrk import WrkResult, require_wrk, run_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PACKAGES = ("uvicorn", "aiohttp", "uvloop", "httptools")
BUSY_WARN_PCT = 15.0


@dataclass
class Context:
    """What a scenario needs to start its proxy in front of the upstream."""

    children: Children
    tmp: Path
    nginx: str | None
    upstream_port: int

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    start: Callable[[Context], str]  # starts what it needs, returns the URL to load
    needs_nginx: bool = False


@dataclass
class Row:
    scenario: str
    description: str
    result: WrkResult | None = None
    error: str | None = None
    ratios: dict[str, float] = field(default_factory=dict)


# --- scenarios ---------------------------------------------------------------


def start_direct(ctx: Context) -> str:
    return ctx.upstream_url + "/"


def start_nginx_proxy(ctx: Context) -> str:
    assert ctx.nginx is not None
    port = free_port()
    prefix = ctx.tmp / "nginx-proxy"
    argv = nginx_argv(ctx.nginx, prefix, proxy_conf(prefix, port, ctx.upstream_port))
    log = prefix / "stdout.log"
    proc = ctx.children.spawn(argv, log=log)
    url = f"http://127.0.0.1:{port}/"
    wait_http_ok(url, proc, timeout=10, what="nginx proxy", log=prefix / "error.log")
    return url


def start_bare_python(ctx: Context) -> str:
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
    return url


def authcar_env(port: int, admin_port: int, upstream_url: str, *, logged: bool) -> dict[str, str]:
    # Drop inherited AUTHCAR_* so a developer's shell config cannot skew the run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCAR_")}
    env.update(
        AUTHCAR_PORT=str(port),
        AUTHCAR_ADMIN_PORT=str(admin_port),
        AUTHCAR_HOST="127.0.0.1",
        AUTHCAR_ADMIN_HOST="127.0.0.1",
        AUTHCAR_UPSTREAM=upstream_url,
        AUTHCAR_ALLOW_ANONYMOUS="true",
        AUTHCAR_WORKERS="1",
        AUTHCAR_LOG_LEVEL="info" if logged else "warning",
        # The per-request JSON line is its own switch; events follow the log level.
        AUTHCAR_ACCESS_LOG="true" if logged else "false",
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


def start_authcar(ctx: Context, *, logged: bool) -> str:
    check_authcar_importable()
    port, admin_port = free_port(), free_port()
    env = authcar_env(port, admin_port, ctx.upstream_url, logged=logged)
    # Logged: the per-request JSON access log is written (cost measured) but discarded.
    log = None if logged else ctx.tmp / "authcar.log"
    proc = ctx.children.spawn([sys.executable, "-m", "authcar", "run"], env=env, cwd=REPO_DIR, log=log)
    wait_http_ok(f"http://127.0.0.1:{admin_port}/healthz", proc, timeout=30, what="authcar", log=log)
    return f"http://127.0.0.1:{port}/"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("direct", "wrk -> upstream (baseline)", start_direct),
    Scenario("nginx", "wrk -> nginx proxy_pass, keepalive pool -> upstream", start_nginx_proxy, True),
    Scenario("bare-python", "wrk -> bare uvicorn+aiohttp pass-through -> upstream", start_bare_python),
    Scenario(
        "authcar",
        "wrk -> authcar (anonymous, log warning) -> upstream",
        lambda c: start_authcar(c, logged=False),
    ),
    Scenario(
        "authcar-logged",
        "wrk -> authcar (anonymous, JSON access log at info to /dev/null) -> upstream",
        lambda c: start_authcar(c, logged=True),
    ),
)


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


def check_response(url: str) -> None:
    """One request before loading: a 401 or wrong body would make the numbers meaningless."""
    try:
        status, body = http_get(url, timeout=5)
    except OSError as exc:
        raise BenchError(f"sanity request to {url} failed: {exc}") from exc
    if status != 200 or body != UPSTREAM_BODY:
        raise BenchError(
            f"sanity request to {url}: expected 200 {UPSTREAM_BODY!r}, got {status} {body[:200]!r}"
        )


def measure(scenario: Scenario, ctx: Context, args: argparse.Namespace) -> WrkResult:
    url = scenario.start(ctx)
    check_response(url)
    log(f"{scenario.name}: warm-up {args.warmup}s, then {args.duration}s on {url}")
    load = {"connections": args.connections, "threads": args.threads}
    if args.warmup > 0:
        run_wrk(ctx.children, url, duration=args.warmup, **load)
    return run_wrk(ctx.children, url, duration=args.duration, **load)


def run_scenario(
    scenario: Scenario, tmp: Path, nginx: str | None, upstream_port: int, args: argparse.Namespace
) -> Row:
    row = Row(scenario.name, scenario.description)
    if scenario.needs_nginx and nginx is None:
        row.error = "skipped: nginx not installed (apt-get install -y nginx)"
        return row
    children = Children()
    try:
        row.result = measure(scenario, Context(children, tmp, nginx, upstream_port), args)
    except (BenchError, OSError) as exc:
        row.error = str(exc)
        log(f"{scenario.name}: FAILED: {exc}")
    finally:
        children.stop_all()  # before the next scenario, so it gets the CPU alone
    return row


def add_ratios(rows: list[Row]) -> None:
    refs = {
        r.scenario: r.result.requests_per_s for r in rows if r.result and r.scenario in ("direct", "nginx")
    }
    for row in rows:
        if row.result is None:
            continue
        for ref_name, ref_rps in refs.items():
            if ref_rps > 0:
                row.ratios[ref_name] = row.result.requests_per_s / ref_rps


# --- output ------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def format_table(rows: list[Row]) -> str:
    header = ("scenario", "req/s", "p50 ms", "p99 ms", "vs direct", "vs nginx", "notes")
    lines = [header]
    for row in rows:
        if row.result is None:
            lines.append((row.scenario, "-", "-", "-", "-", "-", (row.error or "").splitlines()[0]))
            continue
        res = row.result
        notes = []
        if res.non_2xx:
            notes.append(f"{res.non_2xx} non-2xx!")
        if res.socket_errors:
            notes.append(f"{res.socket_errors} socket errors")
        lines.append(
            (
                row.scenario,
                f"{res.requests_per_s:,.0f}",
                f"{res.p50_ms:.2f}",
                f"{res.p99_ms:.2f}",
                _ratio(row, "direct"),
                _ratio(row, "nginx"),
                ", ".join(notes),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        cells = [
            c.ljust(w) if j in (0, 6) else c.rjust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _ratio(row: Row, ref: str) -> str:
    return f"{row.ratios[ref]:.2f}x" if ref in row.ratios else "-"


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
    }


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
    # Read-only: records which commit produced the numbers.
    res = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return res.stdout.strip() if res.returncode == 0 else None


def write_json(
    path: Path, rows: list[Row], args: argparse.Namespace, upstream: str, machine: dict[str, Any]
) -> None:
    data = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "upstream": upstream,
            "upstream_body_bytes": len(UPSTREAM_BODY),
        },
        "machine": machine,
        "results": [
            {
                "scenario": r.scenario,
                "description": r.description,
                **(r.result.to_dict() if r.result else {}),
                "ratio_vs_direct": r.ratios.get("direct"),
                "ratio_vs_nginx": r.ratios.get("nginx"),
                "error": r.error,
            }
            for r in rows
        ],
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
    parser.add_argument("--only", default=",".join(names), help=f"comma list of: {','.join(names)}")
    parser.add_argument("--json", type=Path, help="also write results and machine info here")
    parser.add_argument(
        "--upstream",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="upstream server: nginx when installed (auto), or bench/fast_upstream.py",
    )
    args = parser.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.threads < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --connections and --threads >= 1")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections (wrk requirement)")
    return args


def run(args: argparse.Namespace) -> int:
    require_wrk()
    nginx = nginx_path()
    selected = [s for s in SCENARIOS if s.name in args.only]
    machine = machine_info(nginx)
    busy = machine["cpu_busy_before_pct"]
    if busy is not None and busy > BUSY_WARN_PCT:
        # Other load (a test suite, another benchmark) skews every ratio.
        log(f"WARNING: CPU already {busy:.0f}% busy before starting; numbers will be noisy")
    tmp = Path(tempfile.mkdtemp(prefix="authcar-bench-"))
    upstream_children = Children()
    try:
        upstream_port, upstream_desc = start_upstream(upstream_children, tmp, nginx, args.upstream)
        log(f"upstream: {upstream_desc} on 127.0.0.1:{upstream_port}; temp dir {tmp}")
        rows = [run_scenario(s, tmp, nginx, upstream_port, args) for s in selected]
    finally:
        upstream_children.stop_all()
        rmtree(tmp, ignore_errors=True)
    add_ratios(rows)
    print(
        f"\nupstream: {upstream_desc}; wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(warm-up {args.warmup}s); nproc={machine['nproc']}"
    )
    print(format_table(rows))
    if busy is not None and busy > BUSY_WARN_PCT:
        print(f"WARNING: CPU was {busy:.0f}% busy before the run: rerun on a quiet machine")
    if args.json:
        write_json(args.json, rows, args, upstream_desc, machine)
        log(f"wrote {args.json}")
    failed = any(r.result is None and not (r.error or "").startswith("skipped") for r in rows)
    non_2xx = any(r.result is not None and r.result.non_2xx for r in rows)
    return 1 if failed or non_2xx else 0


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
