"""What each proxy costs, from /proc samples, and how rows compare within one run.

Pure functions over the text of /proc/<pid>/stat and /proc/<pid>/status (so they can be tested
with made-up samples) plus the thin readers that feed them from the live system.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
REFERENCES = ("direct", "nginx", "haproxy", "apache")  # req/s ratios against each, same workload
CPU_REFERENCES = ("haproxy", "apache")  # CPU-per-request ratios against each, same workload


@dataclass(frozen=True)
class ProcStat:
    pid: int
    pgrp: int
    cpu_ticks: int  # utime + stime, every thread of the process


def parse_stat(raw: bytes) -> ProcStat:
    """One /proc/<pid>/stat line. The command name (field 2) may hold spaces and parentheses, so the
    fields are split after its last ')'."""
    close = raw.rfind(b")")
    if close < 0:
        raise ValueError("not a /proc/<pid>/stat line")
    pid = int(raw[: raw.index(b"(")].strip())
    fields = raw[close + 2 :].split()
    # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
    return ProcStat(pid=pid, pgrp=int(fields[2]), cpu_ticks=int(fields[11]) + int(fields[12]))


def group_ticks(stats: Iterable[ProcStat], pgid: int) -> int | None:
    """CPU ticks of every process of group `pgid` in one sample; None if the group has none."""
    ticks = [s.cpu_ticks for s in stats if s.pgrp == pgid]
    return sum(ticks) if ticks else None


def cpu_us_per_request(before_ticks: int, after_ticks: int, requests: int, clk_tck: int = CLK_TCK) -> float:
    """The group's CPU time over the window, per request served in it, in µs."""
    if requests <= 0:
        raise ValueError("no requests in the window")
    if after_ticks < before_ticks:
        raise ValueError("CPU time went backwards: a process of the group exited in the window")
    return (after_ticks - before_ticks) * 1e6 / clk_tck / requests


def parse_rss_kib(status_text: str) -> int | None:
    """VmRSS from /proc/<pid>/status, in KiB (None for a zombie or kernel thread)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def live_stats() -> Iterator[ProcStat]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                yield parse_stat(f.read())
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile


def group_rss_mib(pgid: int) -> dict[int, float]:
    """Resident memory of each live process of group `pgid`, MiB by pid."""
    out = {}
    for stat in live_stats():
        if stat.pgrp != pgid:
            continue
        try:
            with open(f"/proc/{stat.pid}/status") as f:
                kib = parse_rss_kib(f.read())
        except OSError:
            continue
        if kib is not None:
            out[stat.pid] = kib / 1024
    return out


@dataclass(frozen=True)
class Figures:
    """One row's headline numbers, for comparing rows of the same workload."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None


def compare(
    rows: Mapping[tuple[str, str], Figures], fixed_rate: Collection[str] = ()
) -> dict[tuple[str, str], dict[str, float]]:
    """For each (system, workload) row: req/s against each reference system under the same
    workload, CPU per request against HAProxy's and Apache's, and p50/p99 added over `direct`.

    Workloads in `fixed_rate` get no req/s ratios: every row serves the rate it was offered. A
    reference missing from the run (skipped, failed) leaves its ratios out rather than guessing.
    """
    out: dict[tuple[str, str], dict[str, float]] = {}
    for (system, workload), row in rows.items():
        ratios: dict[str, float] = {}
        for ref in () if workload in fixed_rate else REFERENCES:
            other = rows.get((ref, workload))
            if other is not None and other.requests_per_s > 0:
                ratios[f"rps_vs_{ref}"] = row.requests_per_s / other.requests_per_s
        for ref in CPU_REFERENCES:
            other = rows.get((ref, workload))
            if other is not None and other.cpu_us and row.cpu_us is not None:
                ratios[f"cpu_vs_{ref}"] = row.cpu_us / other.cpu_us
        direct = rows.get(("direct", workload))
        if direct is not None and system != "direct":
            ratios["p50_added_ms"] = row.p50_ms - direct.p50_ms
            ratios["p99_added_ms"] = row.p99_ms - direct.p99_ms
        out[(system, workload)] = ratios
    return out
