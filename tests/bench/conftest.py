"""bench/ is a directory of scripts that import each other by bare name (`from procs import ...`),
as `python bench/run.py` puts their directory first on sys.path; the tests do the same."""

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
