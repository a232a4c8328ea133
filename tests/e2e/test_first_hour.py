"""What a new user meets in the first hour, run as they would run it: `authcar` in a subprocess,
from a directory that is not the checkout, and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.process import start_sidecar_process

ROOT = Path(__file__).resolve().parents[2]
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
    assert (
        "ignoring unknown environment variable AUTHCAR_POLCY_DIR (did you mean AUTHCAR_POLICY_DIR?)"
        in result.stderr
    )
    # Also when the settings are fine and only the policy directory is missing.
    result = authcar("check-config", cwd=tmp_path, env={"AUTHCAR_POLCY_DIR": str(POLICIES)})
    assert result.returncode == 1
    assert "ignoring unknown environment variable AUTHCAR_POLCY_DIR" in result.stderr


def policy_dir(tmp_path: Path, rules: str) -> Path:
    directory = tmp_path / "policy"
    directory.mkdir()
    (directory / "model.conf").write_text((POLICIES / "model.conf").read_text())
    (directory / "policy.csv").write_text(rules)
    return directory


READER_ONLY = "p, role:reader, /books, ^GET$, allow, *\n"


def test_without_an_issuer_the_401_for_every_request_is_announced(tmp_path: Path) -> None:
    env = {"AUTHCAR_POLICY_DIR": str(policy_dir(tmp_path, READER_ONLY))}
    check = authcar("check-config", cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stderr
    (warning,) = warnings_of(check)
    assert "no issuer is configured" in warning
    assert "refused with 401" in warning
    # Not when anonymous callers are let through on purpose, nor with an issuer.
    quiet = authcar("check-config", cwd=tmp_path, env={**env, "AUTHCAR_ALLOW_ANONYMOUS": "true"})
    assert warnings_of(quiet) == []
    issuer = {"AUTHCAR_OIDC_ISSUER_URL": "https://idp.example", "AUTHCAR_OIDC_AUDIENCE": "api"}
    assert warnings_of(authcar("check-config", cwd=tmp_path, env={**env, **issuer})) == []


def test_a_public_path_the_policy_refuses_to_anonymous_callers_is_warned_about(tmp_path: Path) -> None:
    env = {
        "AUTHCAR_POLICY_DIR": str(
            policy_dir(
                tmp_path,
                READER_ONLY
                + "p, authcar:anonymous, /open, ^GET$, allow, *\n"
                + "p, authcar:anonymous, /both, ^(GET|HEAD)$, allow, *\n",
            )
        ),
        # GET covers HEAD, which the rule below does not allow.
        "AUTHCAR_PUBLIC_PATHS": "GET /open,/docs/*,POST /open,GET|HEAD /both",
        "AUTHCAR_ALLOW_ANONYMOUS": "false",
        "AUTHCAR_OIDC_ISSUER_URL": "https://idp.example",
        "AUTHCAR_OIDC_AUDIENCE": "api",
    }
    result = authcar("check-config", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    warned = warnings_of(result)
    assert len(warned) == 3, warned
    assert "'GET /open' skips authentication, but the policy does not allow HEAD /open" in warned[0]
    assert "'/docs/*' skips authentication, but the policy does not allow GET /docs/" in warned[1]
    assert "`p, authcar:anonymous, /docs/*, ...`" in warned[1]
    assert "'POST /open'" in warned[2]


def test_a_rule_for_a_bare_role_name_is_named_as_the_likely_mistake(tmp_path: Path) -> None:
    rules = (
        "p, viewer, /books, ^GET$, allow, *\n"  # the mistake: tokens' role viewer is role:viewer
        "p, viewer, /books/:id, ^GET$, allow, *\n"
        "p, alice@example.com, /audit, ^GET$, allow, *\n"  # a subject, plainly
        "g, bob, editors\n"  # a role the policy itself defines
        "p, editors, /books, ^POST$, allow, *\n"
        "p, role:reader, /books, ^GET$, allow, *\n"
    )
    env = {
        "AUTHCAR_POLICY_DIR": str(policy_dir(tmp_path, rules)),
        "AUTHCAR_OIDC_ISSUER_URL": "https://idp.example",
        "AUTHCAR_OIDC_AUDIENCE": "api",
    }
    result = authcar("check-config", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    (warning,) = warnings_of(result)
    assert "`p, viewer, /books, ^GET$, allow, *` names 'viewer'" in warning
    assert "write role:viewer (2 rules)" in warning


def test_at_start_the_sidecar_warns_about_the_public_path_it_will_refuse(tmp_path: Path) -> None:
    env = {
        "AUTHCAR_POLICY_DIR": str(policy_dir(tmp_path, READER_ONLY)),
        "AUTHCAR_PUBLIC_PATHS": "GET /open",
        "AUTHCAR_ALLOW_ANONYMOUS": "false",
    }
    sidecar = start_sidecar_process(tmp_path, env)
    try:
        # What the warning says: the public path gets 401, like everything else without an issuer.
        assert httpx.get(sidecar.url + "/open", timeout=10).status_code == 401
        assert httpx.get(sidecar.url + "/books", timeout=10).status_code == 401
        log = sidecar.log_path.read_text()
        assert "authcar: warning: no issuer is configured" in log
        assert "authcar: warning: AUTHCAR_PUBLIC_PATHS: 'GET /open' skips authentication" in log
    finally:
        sidecar.stop()


def test_start_and_stop_are_each_logged_once(tmp_path: Path) -> None:
    sidecar = start_sidecar_process(tmp_path, {"AUTHCAR_ALLOW_ANONYMOUS": "true"})
    try:
        sidecar.signal()
        assert sidecar.wait(timeout=30) == 0
    finally:
        sidecar.stop()
    events = [str(e["event"]) for e in sidecar.events()]
    assert events.count("listening") == 1
    assert events[-1] == "stopped", events
    # Two uvicorn servers (public, admin) each announced start and stop: every line came twice.
    assert len(events) == len(set(events)), events
