#!/usr/bin/env python3
"""Developer commands for authcar, needing nothing but Python 3.11+.

    python3 dev.py demo                 run the demo
    python3 dev.py test [pytest args]   run the test suite (default: all of it)
    python3 dev.py fuzz [pytest args]   the property tests (marker `property`) with the long
                                        Hypothesis profile "fuzz" and no per-test timeout
    python3 dev.py lint                 ruff check + ruff format --check

The first run creates .venv and installs the project (editable) with its dev extras;
later runs reinstall only when pyproject.toml has changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

MIN_PYTHON = (3, 11)
ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PYTHON = BIN / "python"
# Hash of the pyproject.toml the venv was last installed from.
STAMP = VENV / ".authcar-installed"

USAGE = __doc__.split("\n\n")[1].rstrip() + "\n"


def die(message: str) -> NoReturn:
    print(f"dev.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def create_venv() -> None:
    # Debian/Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package.
    if importlib.util.find_spec("venv") is None or importlib.util.find_spec("ensurepip") is None:
        die("the Python venv module is missing; install it with: apt-get install python3-venv")
    print(f"dev.py: creating {VENV}", flush=True)
    if subprocess.run([sys.executable, "-m", "venv", str(VENV)]).returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)  # don't leave a half-made venv behind
        die("could not create .venv (on Debian/Ubuntu: apt-get install python3-venv)")


def ensure_venv() -> None:
    if sys.version_info < MIN_PYTHON:
        die(f"Python {'.'.join(map(str, MIN_PYTHON))}+ is needed, this is {sys.version.split()[0]}")
    if not os.access(PYTHON, os.X_OK):
        shutil.rmtree(VENV, ignore_errors=True)  # a venv without its python is unusable
        create_venv()
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text().strip() == digest:
        return
    print("dev.py: installing -e '.[dev]' into .venv (pyproject.toml is new or changed)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "-e", ".[dev]"]
    if subprocess.run(pip, cwd=ROOT).returncode != 0:
        die("installing the project into .venv failed (see pip's output above)")
    STAMP.write_text(digest + "\n")  # only after success, so a failed install is retried


def venv_python_version() -> str:
    # pyvenv.cfg records the version without starting an interpreter.
    for line in (VENV / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            return value.strip()
    return "unknown"


def exec_in_venv(program: str, *args: str) -> NoReturn:
    # exec, so the exit code and signals (Ctrl-C) belong to the real program.
    os.chdir(ROOT)
    path = BIN / program
    os.execv(path, [str(path), *args])  # noqa: S606 - fixed program in our own venv


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage:\n" + USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command not in ("demo", "test", "fuzz", "lint"):
        die(f"unknown command {command!r}; use demo, test, fuzz or lint")
    ensure_venv()
    if command == "test":
        print(f"dev.py: Python {venv_python_version()}, venv {VENV}", flush=True)
        exec_in_venv("python", "-m", "pytest", *args)
    if command == "fuzz":
        # tests/conftest.py loads the profile named here; the examples database keeps what it finds.
        os.environ["AUTHCAR_HYPOTHESIS_PROFILE"] = "fuzz"
        print(f"dev.py: Python {venv_python_version()}, Hypothesis profile fuzz", flush=True)
        exec_in_venv("python", "-m", "pytest", "-m", "property", "-o", "timeout=0", *args)
    if command == "demo":
        exec_in_venv("authcar", "demo", *args)
    # lint: run both, so one run reports everything.
    ruff = str(BIN / "ruff")
    check = subprocess.run([ruff, "check", "."], cwd=ROOT).returncode
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT).returncode
    return 1 if check or fmt else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
