"""Run wrk and parse its text report (requests/s, p50, p99, errors)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from procs import BenchError, Children

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PCT_RE = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_TOTAL_RE = re.compile(r"^\s+(\d+) requests in ", re.M)
_NON2XX_RE = re.compile(r"^\s+Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKERR_RE = re.compile(r"^\s+Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M)


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError("wrk not found on PATH: install it with `apt-get install -y wrk`")
    return path


def wrk_version() -> str:
    # `wrk -v` prints the version line then the usage text, and exits 1.
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def run_wrk(
    children: Children,
    url: str,
    *,
    duration: int,
    connections: int,
    threads: int,
    options: Sequence[str] = (),
    script_args: Sequence[str] = (),
) -> WrkResult:
    """`options` go before the URL (`-H ...`, `-s script.lua`), `script_args` after it (to the script)."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",  # wrk accepts whole seconds only
        "--latency",
        *options,
        url,
        *(["--", *script_args] if script_args else []),
    ]
    proc = children.spawn(argv, capture=True)
    try:
        # wrk stops by itself after -d; the margin only guards against a hang.
        out, err = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {shown(argv)}") from exc
    finally:
        children.stop(proc)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        detail = (err.decode(errors="replace") or text).strip()
        raise BenchError(f"wrk failed ({proc.returncode}): {shown(argv)}: {detail}")
    return parse_wrk(text)


def shown(argv: Sequence[str], limit: int = 80) -> str:
    """The command line for an error message, long arguments (a bearer token header) shortened."""
    return " ".join(a if len(a) <= limit else a[: limit - 3] + "..." for a in argv)


def parse_wrk(text: str) -> WrkResult:
    rps = _RPS_RE.search(text)
    pcts = {m.group(1): float(m.group(2)) * _TIME_UNITS_MS[m.group(3)] for m in _PCT_RE.finditer(text)}
    total = _TOTAL_RE.search(text)
    if rps is None or total is None or set(pcts) != {"50", "99"}:
        raise BenchError(f"could not parse wrk output:\n{text}")
    non2xx = _NON2XX_RE.search(text)
    sockerr = _SOCKERR_RE.search(text)
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=pcts["50"],
        p99_ms=pcts["99"],
        requests=int(total.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sockerr.groups()) if sockerr else 0,
    )
