"""What one authorization decision costs: authcar's compiled policy against pycasbin's Enforcer.

    python -m bench.policy                    # 10 / 1,000 / 10,000 rules, both policy shapes
    python -m bench.policy --quick            # fewer samples
    python -m bench.policy --json bench/results/policy.json

Two policy shapes, each at 10, 1,000 and 10,000 `p` rules, same model as the book service
(`g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && regexMatch(r.act, p.act)`, allow-and-deny effect):

    roles     many roles of 20 rules each (500 roles at 10,000 rules): keyMatch2 paths such as
              /tenants/:tenant/svc7/books/:id, a regex-like keyMatch2 rule, a deny rule; a role
              hierarchy; the caller holds one service role and `authcar:authenticated`
    one-role  one role holding every rule (`/api/v1/res123/:id` and such): the index's worst case
              by subject, pycasbin's usual case

and four requests each: an allow, a deny by a deny rule, a deny because no rule matches (pycasbin
scans every rule), and a deny of a method. Each decision is timed alone (perf_counter_ns); p50 and
p99 are over all samples. Both engines decide the same requests in the same run, and must agree.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import casbin

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from authcar.policy import PolicyRequest  # noqa: E402
from authcar.policy.engine import compile_policy  # noqa: E402

MODEL = """[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && regexMatch(r.act, p.act)
"""

ROLE_TEMPLATES = [
    ("/tenants/:tenant/svc{k}/books", "^(GET|HEAD)$", "allow"),
    ("/tenants/:tenant/svc{k}/books", "^POST$", "allow"),
    ("/tenants/:tenant/svc{k}/books/:id", "^(GET|HEAD)$", "allow"),
    ("/tenants/:tenant/svc{k}/books/:id", "^(PUT|PATCH|DELETE)$", "allow"),
    ("/tenants/:tenant/svc{k}/books/:id/reviews", "^(GET|POST)$", "allow"),
    ("/tenants/:tenant/svc{k}/books/:id/reviews/:review", "^(GET|PUT|DELETE)$", "allow"),
    ("/tenants/:tenant/svc{k}/authors", "^GET$", "allow"),
    ("/tenants/:tenant/svc{k}/authors/:id", "^(GET|PUT)$", "allow"),
    ("/tenants/:tenant/svc{k}/shelves/:shelf/books/:id", "^(GET|PUT|DELETE)$", "allow"),
    ("/tenants/:tenant/svc{k}/admin/*", ".*", "deny"),
    ("/svc{k}/public/*", "^(GET|HEAD)$", "allow"),
    ("/svc{k}/reports/[0-9]+/[a-z]+", "^GET$", "allow"),  # keyMatch2 keeps regex syntax
    ("/svc{k}/exports/:format", "^POST$", "allow"),
    ("/svc{k}/health", "^GET$", "allow"),
    ("/tenants/:tenant/svc{k}/search", "^(GET|POST)$", "allow"),
    ("/tenants/:tenant/svc{k}/tags/:tag", "^(GET|PUT|DELETE)$", "allow"),
    ("/tenants/:tenant/svc{k}/orders/:id", "^(GET|POST)$", "allow"),
    ("/tenants/:tenant/svc{k}/orders/:id/items/:item", "^(GET|DELETE)$", "allow"),
    ("/tenants/:tenant/svc{k}/settings", "^(GET|PUT)$", "allow"),
    ("/tenants/:tenant/svc{k}/audit/*", "^GET$", "allow"),
]


def roles_policy(rules: int) -> tuple[str, PolicyRequest, dict[str, PolicyRequest]]:
    roles = max(1, rules // len(ROLE_TEMPLATES))
    lines = []
    for k in range(roles):
        for template, methods, effect in ROLE_TEMPLATES[: min(rules, len(ROLE_TEMPLATES))]:
            lines.append(f"p, role:svc{k}, {template.format(k=k)}, {methods}, {effect}")
        if k:
            lines.append(f"g, role:svc{k}, role:base{k % 7}")
    k = roles - 1  # the caller's service: the last one written, the farthest from the top
    caller = ("role:authcar:authenticated", f"role:svc{k}")
    requests = {
        "allow": PolicyRequest("user-42", caller, f"/tenants/acme/svc{k}/books/17", "GET", {}),
        "deny_rule": PolicyRequest("user-42", caller, f"/tenants/acme/svc{k}/admin/users", "GET", {}),
        "deny_nomatch": PolicyRequest("user-42", caller, f"/tenants/acme/svc{k}/secrets/17", "GET", {}),
        "deny_method": PolicyRequest("user-42", caller, f"/tenants/acme/svc{k}/books/17", "POST", {}),
    }
    if rules < 10:  # too few rules for the deny template: use what exists
        requests.pop("deny_rule")
    return "\n".join(lines) + "\n", requests["allow"], requests


def one_role_policy(rules: int) -> tuple[str, PolicyRequest, dict[str, PolicyRequest]]:
    methods = ["^(GET|HEAD)$", "^(PUT|DELETE)$", "^POST$", ".*"]
    lines = []
    for i in range(rules):
        if i % 50 == 49:
            lines.append(f"p, role:api, /api/v1/res{i}/[0-9]+/raw, ^GET$, allow")  # regex syntax
        elif i % 100 == 10:
            lines.append(f"p, role:api, /api/v1/res{i}/:id/admin, .*, deny")
        else:
            lines.append(f"p, role:api, /api/v1/res{i}/:id, {methods[i % len(methods)]}, allow")
    last = rules - 1 if (rules - 1) % 50 != 49 and (rules - 1) % 100 != 10 else rules - 2
    caller = ("role:api",)
    deny_rule = 10 if rules > 10 else None
    requests = {
        "allow": PolicyRequest(
            "user-42", caller, f"/api/v1/res{last}/7", "GET" if last % 4 in (0, 3) else "POST", {}
        ),
        "deny_nomatch": PolicyRequest("user-42", caller, "/api/v1/nothing/7", "GET", {}),
        "deny_method": PolicyRequest("user-42", caller, "/api/v1/res0/7", "PATCH", {}),
    }
    if last % 4 == 1:
        requests["allow"] = PolicyRequest("user-42", caller, f"/api/v1/res{last}/7", "PUT", {})
    if deny_rule is not None:
        requests["deny_rule"] = PolicyRequest("user-42", caller, f"/api/v1/res{deny_rule}/7/admin", "GET", {})
    return "\n".join(lines) + "\n", requests["allow"], requests


def timings(decide: Callable[[], Any], samples: int, budget: float) -> list[float]:
    """Microseconds per call, each call timed alone; stops early when the time budget is spent."""
    for _ in range(min(50, samples)):
        decide()
    result = []
    deadline = time.perf_counter() + budget
    clock = time.perf_counter_ns
    for _ in range(samples):
        start = clock()
        decide()
        result.append((clock() - start) / 1000)
        if len(result) >= 20 and time.perf_counter() > deadline:
            break
    return result


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(quick: bool) -> list[dict[str, Any]]:
    ours_samples = 5_000 if quick else 30_000
    casbin_budget = 1.0 if quick else 4.0
    rows = []
    for shape, build in (("roles", roles_policy), ("one-role", one_role_policy)):
        for size in (10, 1_000, 10_000):
            policy, _allow, requests = build(size)
            started = time.perf_counter()
            compiled = compile_policy(MODEL, policy, version="bench")
            compile_seconds = time.perf_counter() - started
            with tempfile.TemporaryDirectory() as directory:
                (Path(directory) / "model.conf").write_text(MODEL)
                (Path(directory) / "policy.csv").write_text(policy)
                started = time.perf_counter()
                enforcer = casbin.Enforcer(f"{directory}/model.conf", f"{directory}/policy.csv")
                casbin_load_seconds = time.perf_counter() - started
            enforcer.enable_auto_save(False)
            for role in next(iter(requests.values())).roles:
                enforcer.add_grouping_policy("user-42", role)
            for kind, request in requests.items():
                decision = compiled.decide(request)
                expected = enforcer.enforce_ex(request.subject, request.path, request.method)
                if (decision.allowed, decision.rule) != (expected[0], tuple(expected[1])):
                    raise SystemExit(f"disagreement on {shape}/{size}/{kind}: {decision} vs {expected}")
                if decision.allowed != (kind == "allow"):
                    raise SystemExit(f"{shape}/{size}/{kind}: unexpected verdict {decision}")
                ours = timings(partial(compiled.decide, request), ours_samples, 5.0)
                theirs = timings(
                    partial(enforcer.enforce, request.subject, request.path, request.method),
                    2_000,
                    casbin_budget,
                )
                rows.append(
                    {
                        "shape": shape,
                        "rules": compiled.rule_count,
                        "request": kind,
                        "ours_p50_us": statistics.median(ours),
                        "ours_p99_us": percentile(ours, 0.99),
                        "ours_samples": len(ours),
                        "casbin_p50_us": statistics.median(theirs),
                        "casbin_p99_us": percentile(theirs, 0.99),
                        "casbin_samples": len(theirs),
                        "compile_s": compile_seconds,
                        "casbin_load_s": casbin_load_seconds,
                    }
                )
                print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    ratio = row["casbin_p50_us"] / row["ours_p50_us"]
    return (
        f"| {row['shape']:<8} | {row['rules']:>6} | {row['request']:<12} | {row['ours_p50_us']:>7.1f} | "
        f"{row['ours_p99_us']:>7.1f} | {row['casbin_p50_us']:>10.1f} | {row['casbin_p99_us']:>10.1f} | "
        f"{ratio:>8.0f}x | {row['compile_s'] * 1000:>8.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (a rough figure in ~30 s)")
    parser.add_argument("--json", type=Path, help="also write the rows and machine info as JSON")
    arguments = parser.parse_args()
    print(
        "| shape    |  rules | request      | p50 µs  | p99 µs  | casbin p50 | casbin p99 | casbin/us "
        "| compile ms |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    rows = run(arguments.quick)
    worst = max(row["ours_p50_us"] for row in rows if row["rules"] >= 10_000)
    print(f"\nworst p50 at 10,000 rules: {worst:.1f} µs (target: 30 µs)")
    if arguments.json:
        machine = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": _cpus()}
        arguments.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


def _cpus() -> int | None:
    import os

    return os.cpu_count()


if __name__ == "__main__":
    main()
