"""Time from `exec authcar run` to a 200 from /healthz, with the upstream up (the issue's "startup to
ready in under a second when dependencies are up").

    python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from bench.procs import free_port  # noqa: E402


def ready_after(upstream_port: int) -> float:
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCAR_")}
    env.update(
        AUTHCAR_HOST="127.0.0.1",
        AUTHCAR_ADMIN_HOST="127.0.0.1",
        AUTHCAR_PORT=str(port),
        AUTHCAR_ADMIN_PORT=str(admin_port),
        AUTHCAR_UPSTREAM=f"http://127.0.0.1:{upstream_port}",
        AUTHCAR_ALLOW_ANONYMOUS="true",
        AUTHCAR_LOG_LEVEL="warning",
    )
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "authcar", "run"], env=env, cwd=REPO_DIR)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.005)
            if time.perf_counter() - started > 30:
                raise RuntimeError("authcar did not become ready in 30 s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(REPO_DIR / "bench" / "fast_upstream.py"), "--port", str(upstream_port)]
    )
    try:
        time.sleep(0.5)
        timings = [ready_after(upstream_port) for _ in range(args.runs)]
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    print(
        f"ready after: median {statistics.median(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms "
        f"over {len(timings)} runs (exec to /readyz 200, upstream up)"
    )


if __name__ == "__main__":
    main()
