"""Summarise py-spy collapsed stacks (`bench/run.py --profile DIR`): where the sidecar's CPU goes.

    python bench/profile_summary.py DIR/authcar-jwt-run1.txt [more files of the same scenario ...]
    python bench/profile_summary.py --base DIR/authcar-pad-run*.txt --cpu-us 117 \\
                                    --compare DIR/authcar-jwt-run*.txt --cpu-us 129

Samples are of the sidecar's busy time only (py-spy skips a thread waiting in epoll), so a function's
share of samples is its share of the sidecar's CPU; given the scenario's CPU µs/request (the harness
prints it), `--cpu-us` turns shares into µs per request, which is what two scenarios can be compared
by. Functions are aggregated over line numbers; "self" is time in the function's own Python code
(including C functions it calls), "incl." includes its callees, counted once per stack (recursion).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FRAME_LINE = re.compile(r":\d+\)$")


@dataclass
class Profile:
    total: int = 0
    self_: Counter[str] = field(default_factory=Counter)
    incl: Counter[str] = field(default_factory=Counter)
    files: int = 0

    def add_file(self, path: Path) -> None:
        self.files += 1
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [short(f) for f in stack.split(";")]
            self.total += count
            self.self_[frames[-1]] += count
            for name in set(frames):
                self.incl[name] += count
            for pattern in self.patterns:
                if any(pattern in f for f in frames):
                    self.matched[pattern] += count

    matched: Counter[str] = field(default_factory=Counter)
    patterns: tuple[str, ...] = ()

    def share(self, counter: Counter[str], name: str) -> float:
        return counter.get(name, 0) / self.total if self.total else 0.0


def short(frame: str) -> str:
    """`Gate.handle (authcar/gate.py:100)` -> `Gate.handle (authcar/gate.py)`: one row per function."""
    return FRAME_LINE.sub(")", frame)


def load(paths: list[Path], patterns: tuple[str, ...] = ()) -> Profile:
    profile = Profile(patterns=patterns)
    for path in paths:
        profile.add_file(path)
    if profile.total == 0:
        raise SystemExit(f"no samples in {', '.join(map(str, paths))}")
    return profile


def matches(profile: Profile, title: str, cpu_us: float | None) -> str:
    lines = []
    for pattern in profile.patterns:
        share = profile.matched[pattern] / profile.total
        us = f", {share * cpu_us:.1f} µs/req" if cpu_us else ""
        lines.append(
            f"{title}: {share:.1%} of samples under a frame containing {pattern!r}{us}; "
            f"+{share / (1 - share):.1%} on top of the rest"
        )
    return "\n".join(lines)


def top(profile: Profile, counter: Counter[str], n: int, cpu_us: float | None, title: str) -> str:
    lines = [f"{title} ({profile.total} samples, {profile.files} file(s))"]
    for name, count in counter.most_common(n):
        pct = count / profile.total
        us = f"  {pct * cpu_us:6.1f} µs/req" if cpu_us else ""
        lines.append(f"  {pct:6.1%}{us}  {name}")
    return "\n".join(lines)


def compare(base: Profile, other: Profile, base_cpu: float, other_cpu: float, n: int) -> str:
    """Functions whose inclusive µs/request grew (or shrank) most from base to other.

    The share columns tell real extra work from a uniform slowdown (other load on the machine, the
    profiler): a function that only got slower with everything else keeps its share.
    """
    names = set(base.incl) | set(other.incl)
    rows = []
    for name in names:
        b_share, o_share = base.share(base.incl, name), other.share(other.incl, name)
        dself = other.share(other.self_, name) * other_cpu - base.share(base.self_, name) * base_cpu
        rows.append((o_share * other_cpu - b_share * base_cpu, name, b_share, o_share, dself))
    rows.sort(key=lambda r: -abs(r[0]))
    lines = [
        f"inclusive µs/request, base -> compare (total {base_cpu:.1f} -> {other_cpu:.1f}, "
        f"{other_cpu - base_cpu:+.1f}); biggest changes first",
        f"  {'delta':>7}  {'base':>7}  {'compare':>7}  {'base %':>6}  {'cmp %':>6}  {'self d':>7}  function",
    ]
    for delta, name, b_share, o_share, dself in rows[:n]:
        lines.append(
            f"  {delta:+7.1f}  {b_share * base_cpu:7.1f}  {o_share * other_cpu:7.1f}  "
            f"{b_share:6.1%}  {o_share:6.1%}  {dself:+7.1f}  {name}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="*", type=Path, help="collapsed-stack files of one scenario")
    parser.add_argument("--base", nargs="+", type=Path, help="files of the baseline scenario")
    parser.add_argument("--compare", nargs="+", type=Path, help="files of the scenario to compare")
    parser.add_argument(
        "--cpu-us",
        type=float,
        action="append",
        default=[],
        help="CPU µs/request of the scenario (given twice with --base/--compare: base first)",
    )
    parser.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    parser.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="TEXT",
        help="also print the share of samples with a frame containing TEXT (e.g. authcar/authn/), "
        "and what it adds on top of the rest: share / (1 - share)",
    )
    args = parser.parse_args(argv)
    if args.base or args.compare:
        if not (args.base and args.compare) or len(args.cpu_us) != 2:
            parser.error("--base and --compare need each other and two --cpu-us values")
        patterns = tuple(args.match)
        base, other = load(args.base, patterns), load(args.compare, patterns)
        base_cpu, other_cpu = args.cpu_us
        print(top(base, base.self_, args.top, base_cpu, "base: self"))
        print()
        print(top(other, other.self_, args.top, other_cpu, "compare: self"))
        print()
        print(compare(base, other, base_cpu, other_cpu, args.top))
        if patterns:
            print()
            print(matches(base, "base", base_cpu))
            print(matches(other, "compare", other_cpu))
        return 0
    if not args.files:
        parser.error("give collapsed-stack files, or --base and --compare")
    profile = load(args.files, tuple(args.match))
    cpu = args.cpu_us[0] if args.cpu_us else None
    print(top(profile, profile.self_, args.top, cpu, "self"))
    print()
    print(top(profile, profile.incl, args.top, cpu, "inclusive"))
    if args.match:
        print()
        print(matches(profile, "profile", cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
