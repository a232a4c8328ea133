"""What a new user meets in the first hour, run as they would run it: `authcar` in a subprocess,
from a directory that is not the checkout, and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


def authcar(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authcar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def warnings_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("authcar: warning:")]


def test_a_missing_relative_policy_directory_is_named_by_its_absolute_path(tmp_path: Path) -> None:
    for command in ("check-config", "run"):
        result = authcar(command, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert f"(looked for at {tmp_path / 'policies'})" in result.stderr
        assert "Traceback" not in result.stderr


def test_unknown_variables_are_reported_even_when_the_configuration_fails(tmp_path: Path) -> None:
    # A misspelt policy directory is the likeliest reason the policy is not found.
    env = {"AUTHCAR_POLCY_DIR": str(POLICIES), "AUTHCAR_WORKERS": "-1"}
    result = authcar("check-config", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "ignoring unknown environment variable AUTHCAR_POLCY_DIR" in result.stderr
    # Also when the settings are fine and only the policy directory is missing.
    result = authcar("check-config", cwd=tmp_path, env={"AUTHCAR_POLCY_DIR": str(POLICIES)})
    assert result.returncode == 1
    assert "ignoring unknown environment variable AUTHCAR_POLCY_DIR" in result.stderr
