"""CPU per request and memory from /proc samples, and the same-run ratios (bench/accounting.py)."""

from __future__ import annotations

import os

import pytest
from accounting import (
    Figures,
    ProcStat,
    compare,
    cpu_us_per_request,
    group_rss_mib,
    group_ticks,
    parse_rss_kib,
    parse_stat,
)


def stat_line(pid: int, comm: str, pgrp: int, utime: int, stime: int) -> bytes:
    # Fields 3.. of /proc/<pid>/stat: state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime ...
    rest = f"S 1 {pgrp} {pgrp} 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 12345"
    return f"{pid} ({comm}) {rest}\n".encode()


@pytest.mark.parametrize("comm", ["nginx", "apache2", "a b", "x) S 1 2 (y", "((", ")"])
def test_stat_fields_are_read_after_the_last_parenthesis_whatever_the_command_name(comm: str) -> None:
    stat = parse_stat(stat_line(4242, comm, 4200, 150, 25))
    assert stat == ProcStat(pid=4242, pgrp=4200, cpu_ticks=175)


def test_a_line_without_a_command_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not a /proc"):
        parse_stat(b"garbage")


def test_group_ticks_add_up_every_process_of_the_group_and_only_it() -> None:
    sample = [
        ProcStat(10, 10, 100),  # the master
        ProcStat(11, 10, 900),  # its worker
        ProcStat(12, 12, 5000),  # another group (wrk, the upstream)
    ]
    assert group_ticks(sample, 10) == 1000
    assert group_ticks(sample, 99) is None  # nothing of that group is alive: unknown, not zero


def test_cpu_per_request_is_the_window_delta_over_the_requests() -> None:
    # 250 ticks at 100 Hz = 2.5 s over 50,000 requests = 50 µs each
    assert cpu_us_per_request(1000, 1250, 50_000, clk_tck=100) == pytest.approx(50.0)
    assert cpu_us_per_request(7, 7, 10, clk_tck=100) == 0.0


@pytest.mark.parametrize(("before", "after", "requests"), [(10, 5, 100), (0, 10, 0), (0, 10, -1)])
def test_impossible_windows_are_refused_rather_than_reported(before: int, after: int, requests: int) -> None:
    with pytest.raises(ValueError, match=r"no requests|backwards"):
        cpu_us_per_request(before, after, requests, clk_tck=100)


def test_rss_comes_from_vmrss_and_is_absent_for_a_kernel_thread() -> None:
    assert parse_rss_kib("Name:\tnginx\nVmPeak:\t 9000 kB\nVmRSS:\t    6840 kB\nThreads:\t1\n") == 6840
    assert parse_rss_kib("Name:\tkthreadd\nThreads:\t1\n") is None


def test_the_live_readers_see_this_process_group() -> None:
    pgid = os.getpgrp()
    rss = group_rss_mib(pgid)
    assert os.getpid() in rss
    assert rss[os.getpid()] > 1  # a Python interpreter is more than 1 MiB


def figures(rps: float, p50: float = 1.0, p99: float = 2.0, cpu: float | None = None) -> Figures:
    return Figures(requests_per_s=rps, p50_ms=p50, p99_ms=p99, cpu_us=cpu)


def test_ratios_compare_rows_of_the_same_workload_only() -> None:
    rows = {
        ("direct", "saturation"): figures(100_000, 0.2, 0.5),
        ("haproxy", "saturation"): figures(20_000, 1.0, 2.5, cpu=40.0),
        ("apache", "saturation"): figures(10_000, 3.0, 6.0, cpu=80.0),
        ("authcar-full", "saturation"): figures(10_000, 4.0, 9.0, cpu=60.0),
        ("haproxy", "upload-1m"): figures(500, cpu=800.0),
        ("authcar-full", "upload-1m"): figures(250, cpu=1600.0),
    }
    out = compare(rows)
    full = out[("authcar-full", "saturation")]
    assert full["rps_vs_haproxy"] == pytest.approx(0.5)
    assert full["rps_vs_apache"] == pytest.approx(1.0)
    assert full["rps_vs_direct"] == pytest.approx(0.1)
    assert full["cpu_vs_haproxy"] == pytest.approx(1.5)
    assert full["cpu_vs_apache"] == pytest.approx(0.75)
    assert full["p50_added_ms"] == pytest.approx(3.8)
    assert full["p99_added_ms"] == pytest.approx(8.5)
    upload = out[("authcar-full", "upload-1m")]
    assert upload["rps_vs_haproxy"] == pytest.approx(0.5)
    assert upload["cpu_vs_haproxy"] == pytest.approx(2.0)
    # No direct, nginx or apache row under upload-1m: no ratio against them, rather than a guess.
    assert not {"rps_vs_direct", "rps_vs_nginx", "rps_vs_apache", "cpu_vs_apache", "p50_added_ms"} & set(
        upload
    )
    assert "p50_added_ms" not in out[("direct", "saturation")]


def test_a_row_without_cpu_figures_gets_no_cpu_ratio() -> None:
    rows = {("haproxy", "s"): figures(10, cpu=None), ("authcar", "s"): figures(5, cpu=50.0)}
    assert "cpu_vs_haproxy" not in compare(rows)[("authcar", "s")]


def test_fixed_rate_workloads_get_latency_added_but_no_throughput_ratio() -> None:
    rows = {
        ("direct", "rate-500"): figures(500, 0.10, 0.40),
        ("authcar-full", "rate-500"): figures(499, 0.45, 1.30, cpu=90.0),
        ("haproxy", "rate-500"): figures(500, 0.20, 0.60, cpu=45.0),
    }
    full = compare(rows, fixed_rate=["rate-500"])[("authcar-full", "rate-500")]
    assert not any(k.startswith("rps_vs_") for k in full)
    assert full["p50_added_ms"] == pytest.approx(0.35)
    assert full["p99_added_ms"] == pytest.approx(0.90)
    assert full["cpu_vs_haproxy"] == pytest.approx(2.0)
