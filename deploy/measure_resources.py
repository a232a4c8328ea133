"""Measure what the sidecar needs, for the resource requests and limits in deploy/base/.

    .venv/bin/python deploy/measure_resources.py [--duration 10] [--connections 8] [--source DIR]

Starts the benchmark's fixed-200 upstream, the test identity provider and authcar configured as in
the Deployment (one worker, bearer tokens required, the book service's policy from policies/,
`GET /healthz` public, JSON access log on), then reports:
- idle RSS once ready;
- CPU microseconds per request and requests/s under wrk: `GET /healthz` without a token (a public
  path: the floor), `GET /books` with one repeated RS256 token of a reader (cache hits, the common
  case), and with a different token on every request (more distinct tokens than the
  verified-token cache holds: the cache full, the worst case);
- peak RSS (VmHWM) after each load.
Needs wrk (`apt-get install -y wrk`) and the dev dependencies (`python3 dev.py test` once).
`--source` runs authcar from another tree, e.g. a release: `git archive v0.1.0 | tar -x -C /tmp/rel`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from procs import Children, free_port, group_cpu_seconds, wait_http_ok  # noqa: E402
from wrk import require_wrk, run_wrk  # noqa: E402

AUDIENCE = "book-service"
SCENARIOS = ("anonymous", "jwt", "jwt-distinct")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of one process, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing for pid {pid}")


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except ProcessLookupError:
                continue
    return pids


def group_rss_mib(pgid: int, field: str = "VmRSS") -> float:
    return sum(rss_kib(pid, field) for pid in group_pids(pgid)) / 1024


def start_identity_provider(children: Children, tmp: Path, distinct: int) -> tuple[str, str, Path]:
    """tests/idp on a free port; returns (issuer, a bearer token for AUDIENCE, a file of `distinct`
    more tokens, one a line, signed here with the provider's key: minting each over HTTP is slow)."""
    import jwt
    from tokens import sign_many

    from tests.idp.client import IdPClient

    port = free_port()
    log = tmp / "idp.log"
    proc = children.spawn([sys.executable, "-m", "tests.idp", "--port", str(port)], cwd=REPO, log=log)
    base = f"http://127.0.0.1:{port}"
    discovery = base + "/realms/test/.well-known/openid-configuration"
    wait_http_ok(discovery, proc, timeout=30, what="identity provider", log=log)
    with IdPClient(base) as idp:
        token = idp.mint({"aud": AUDIENCE, "roles": ["reader"]}, expires_in=3600)
        kid = jwt.get_unverified_header(token)["kid"]
        claims = jwt.decode(token, options={"verify_signature": False})
        tokens_file = tmp / "tokens.txt"
        tokens_file.write_text("\n".join(sign_many(idp.private_key(kid), kid, claims, distinct)) + "\n")
        return idp.issuer, token, tokens_file


def start_sidecar(children: Children, tmp: Path, source: Path, upstream: str, issuer: str) -> tuple[int, str]:
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCAR_")}
    env |= {
        "AUTHCAR_HOST": "127.0.0.1",
        "AUTHCAR_PORT": str(port),
        "AUTHCAR_ADMIN_HOST": "127.0.0.1",
        "AUTHCAR_ADMIN_PORT": str(admin_port),
        "AUTHCAR_UPSTREAM": upstream,
        "AUTHCAR_WORKERS": "1",
        "AUTHCAR_OIDC_ISSUER_URL": issuer,
        "AUTHCAR_OIDC_AUDIENCE": AUDIENCE,
        "AUTHCAR_POLICY_DIR": str(source / "policies"),
        "AUTHCAR_PUBLIC_PATHS": "GET /healthz,HEAD /healthz",
    }
    log = tmp / f"authcar-{port}.log"
    # The access log goes to the log file, like a container's stdout: its cost is part of the figure.
    # `python -m` puts the cwd first on sys.path: the package comes from `source`.
    proc = children.spawn([sys.executable, "-m", "authcar", "run"], env=env, cwd=source, log=log)
    wait_http_ok(f"http://127.0.0.1:{admin_port}/readyz", proc, timeout=30, what="authcar", log=log)
    return proc.pid, f"http://127.0.0.1:{port}"


def measure(
    children: Children,
    tmp: Path,
    upstream: str,
    issuer: str,
    args: argparse.Namespace,
    path: str,
    options: tuple[str, ...] = (),
    script_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    pgid, base = start_sidecar(children, tmp, args.source, upstream, issuer)
    time.sleep(2)  # let start-up allocations settle
    idle = group_rss_mib(pgid)
    before = group_cpu_seconds(pgid) or 0.0
    result = run_wrk(
        children,
        base + path,
        duration=args.duration,
        connections=args.connections,
        threads=1,
        options=options,
        script_args=script_args,
    )
    cpu = (group_cpu_seconds(pgid) or 0.0) - before
    return {
        "idle_rss_mib": round(idle, 1),
        "peak_rss_mib": round(group_rss_mib(pgid, "VmHWM"), 1),
        "requests_per_s": round(result.requests_per_s),
        "cpu_us_per_request": round(cpu / max(result.requests, 1) * 1e6),
        "cpu_cores_at_that_rate": round(cpu / args.duration, 2),
        "non_2xx": result.non_2xx,
    }


def check_all_passed(report: dict[str, Any]) -> None:
    # Figures from refused or failed requests would describe the error path, not the sidecar.
    for name in SCENARIOS:
        if report[name]["non_2xx"]:
            raise SystemExit(f"{name}: {report[name]['non_2xx']} answers were not 2xx; figures discarded")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per scenario")
    parser.add_argument("--connections", type=int, default=8, help="wrk -c")
    parser.add_argument("--source", type=Path, default=REPO, help="tree to run authcar from")
    parser.add_argument(
        "--distinct", type=int, default=12_000, help="tokens for jwt-distinct (above the 10,000-entry cache)"
    )
    args = parser.parse_args()
    require_wrk()

    children = Children()
    with tempfile.TemporaryDirectory(prefix="authcar-measure-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            upstream_port = free_port()
            up = children.spawn(
                [sys.executable, str(REPO / "bench" / "fast_upstream.py"), "--port", str(upstream_port)]
            )
            upstream = f"http://127.0.0.1:{upstream_port}"
            wait_http_ok(upstream + "/", up, timeout=10, what="upstream")
            issuer, token, tokens_file = start_identity_provider(children, tmp, args.distinct)
            bearer = ("-H", f"Authorization: Bearer {token}")
            distinct = ("-s", str(REPO / "bench" / "first_seen.lua"))
            report = {
                "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
                "connections": args.connections,
                "duration_s": args.duration,
                "anonymous": measure(children, tmp, upstream, issuer, args, "/healthz"),
                "jwt": measure(children, tmp, upstream, issuer, args, "/books", bearer),
                "jwt-distinct": measure(
                    children, tmp, upstream, issuer, args, "/books", distinct, (str(tokens_file),)
                ),
            }
        finally:
            children.stop_all()
    print(json.dumps(report, indent=2))
    check_all_passed(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
