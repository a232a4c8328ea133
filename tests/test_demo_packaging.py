"""`authcar demo` after `pip install`: the wheel ships the book service and the demo policy.

Both come from one source each: `book_service` from examples/book-service/book_service, the policy from
the repository's policies/ (as authcar/demo_policy). pyproject.toml maps them into the wheel; in a
checkout (editable install) the demo reads them where they are, so there is no copy to drift.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.test_demo import Demo, curl, start_demo, wait_printed

REPO = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
BOOK_SERVICE_DIR = "examples/book-service/book_service"
POLICY_FILES = ["model.conf", "policy.csv"]


def authcar_packages() -> set[str]:
    """Every package under authcar/, as the wheel must list them."""
    return {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "authcar").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_pyproject_maps_the_demo_parts_from_their_one_source() -> None:
    assert SETUPTOOLS.get("package-dir", {}).get("book_service") == BOOK_SERVICE_DIR
    assert SETUPTOOLS.get("package-dir", {}).get("authcar.demo_policy") == "policies"
    assert sorted(SETUPTOOLS.get("package-data", {}).get("authcar.demo_policy", [])) == POLICY_FILES


def test_pyproject_lists_every_package() -> None:
    # An explicit list (a directory mapped to another name cannot be found by `find`): a new
    # subpackage missing from it would be missing from the wheel.
    listed = set(SETUPTOOLS.get("packages", []))
    assert listed == authcar_packages() | {"book_service", "authcar.demo_policy"}


def test_this_checkout_serves_the_demo_from_its_sources() -> None:
    # The editable install maps book_service to the example's directory (reinstall after a
    # pyproject.toml change: python3 dev.py test does it).
    spec = importlib.util.find_spec("book_service")
    assert spec is not None, "book_service is not installed: pip install -e '.[dev]'"
    assert Path(spec.origin or "").is_relative_to(REPO / BOOK_SERVICE_DIR), spec.origin


def copy_sources(destination: Path) -> None:
    """The checkout without build output, caches or virtual environments (pip builds in place)."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".*_cache", ".hypothesis", "results"
    )
    shutil.copytree(REPO, destination, ignore=ignore, symlinks=True)


def run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=False, **kwargs
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(600)  # pip fetches the build backend into its isolated environment
def test_the_installed_wheel_runs_the_demo(tmp_path: Path) -> None:
    copy_sources(tmp_path / "src")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "wheels", tmp_path / "src"],
        timeout=300,
    )
    [wheel] = (tmp_path / "wheels").glob("authcar-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"authcar/demo_policy/{name}" for name in POLICY_FILES} <= names
    assert "book_service/__init__.py" in names
    assert not [name for name in names if "/tests/" in name or name.endswith(".yaml")]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", wheel])
    # The dependencies come from this test environment's site-packages, added as a plain path: its
    # .pth files (among them the editable install of this checkout) are not run, so authcar and
    # book_service can only come from the wheel. (tests/test_packaging.py installs every dependency.)
    [venv_site] = (venv / "lib").glob("python3*/site-packages")
    ours = [path for path in sys.path if Path(path).name in ("site-packages", "dist-packages")]
    (venv_site / "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    environment = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    elsewhere = tmp_path / "elsewhere"  # no policies/ or examples/ around: only what was installed
    elsewhere.mkdir()

    where = run(
        [
            venv / "bin" / "python",
            "-c",
            "import authcar.demo, book_service\nprint(authcar.demo.demo_policy_dir(), book_service.__file__)",
        ],
        cwd=elsewhere,
        env=environment,
        timeout=60,
    ).stdout.split()
    assert all(Path(path).is_relative_to(venv_site) for path in where), where

    demo = start_demo(tmp_path, command=[venv / "bin" / "authcar", "demo"], cwd=elsewhere, env=environment)
    try:
        wait_printed(demo)
        walk_through(demo)
    finally:
        if demo.process.poll() is None:
            demo.process.terminate()
            assert demo.process.wait(timeout=15) == 0, demo.printed


def walk_through(demo: Demo) -> None:
    for step in demo.walkthrough():
        answer = curl(step.command, demo.variables())
        assert answer.status_code == step.status, f"{step.says}: {answer.text}"
