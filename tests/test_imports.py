"""Every module imports on its own: no import cycle hides behind the order the app imports them in.

A cycle shows only when a module is the first of its cycle to be imported, so each module is
imported into an interpreter that holds no authcar module yet. One child process runs them all,
dropping every authcar module between imports (third-party modules stay: they cannot be part of
an authcar cycle).
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import authcar

ROOT = Path(__file__).resolve().parent.parent

IMPORT_EACH_ALONE = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "authcar" or m.startswith("authcar.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def authcar_modules() -> list[str]:
    found = ["authcar"]
    for module in pkgutil.walk_packages(authcar.__path__, prefix="authcar."):
        found.append(module.name)
    return sorted(found)


def test_the_module_list_covers_every_source_file() -> None:
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "authcar").rglob("*.py")
    }
    assert files == set(authcar_modules())


def test_every_module_imports_alone() -> None:
    modules = authcar_modules()
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, json.dumps(modules)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert failures == {}, "\n".join(f"{name}:\n{trace}" for name, trace in failures.items())


def test_the_check_sees_a_cycle(tmp_path: Path) -> None:
    # The same child, given a package whose two modules import each other's names.
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic.b import B\nA = 1\n")
    (package / "b.py").write_text("from cyclic.a import A\nB = 2\n")
    script = IMPORT_EACH_ALONE.replace('"authcar"', '"cyclic"').replace('"authcar."', '"cyclic."')
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(["cyclic.a"])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert "partially initialized" in failures["cyclic.a"]


def test_redis_authlib_and_opentelemetry_load_only_when_configured() -> None:
    # Each costs a worker megabytes of memory (redis-py ~8 MiB, authlib ~3 MiB): a sidecar without
    # AUTHCAR_REDIS_URL, AUTHCAR_LOGIN or an OTLP endpoint builds everything without importing them.
    script = (
        "import sys; from authcar.app import Sidecar; from authcar.config import load_settings;"
        "s = load_settings({'allow_anonymous': True}, environ={}).settings; Sidecar(s);"
        "print(sorted(m for m in ('redis', 'authlib', 'opentelemetry', 'grpc') if m in sys.modules))"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env=environ,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
