"""Packaging: the wheel and the container image.

There is no Docker engine in CI, so the image is checked twice without one:
- a slow test does what the Dockerfile does (build context filtered by .dockerignore, `pip wheel`,
  offline install into a clean environment, run the entry point);
- a fast test reviews the Dockerfile text for its security properties, and proves the review
  can fail by feeding it broken variants.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def _run(
    cmd: list[str | Path], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


def _clean_env(*, offline_pip: bool = False) -> dict[str, str]:
    # No PYTHONPATH/PYTHONHOME, so the fresh venv can't see this checkout or the test venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if offline_pip:
        # Like the image's `pip install --no-index --find-links /wheels`: no machine-wide pip
        # config (extra find-links, indexes, constraints) may supply a missing wheel.
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


# ---- the build context, as docker sends it ---------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching: `*` and `?` stay within one path segment, `**` spans any number."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _copy_build_context(dest: Path) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip().strip("/") for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    # Exceptions would need docker's last-match-wins logic; keep the file simple instead.
    assert not any(p.startswith("!") for p in patterns), "this test doesn't model ! exceptions"
    regexes = [_dockerignore_regex(p) for p in patterns]

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel_dir = Path(directory).relative_to(REPO)
        return {n for n in names if any(r.fullmatch((rel_dir / n).as_posix()) for r in regexes)}

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


def test_dockerignore_matching() -> None:
    assert _dockerignore_regex("**/__pycache__").fullmatch("__pycache__")
    assert _dockerignore_regex("**/__pycache__").fullmatch("authcar/sub/__pycache__")
    assert _dockerignore_regex("**/*.py[cod]").fullmatch("authcar/x.pyc")
    assert not _dockerignore_regex("*.egg-info").fullmatch("a/b.egg-info")
    assert not _dockerignore_regex("bench/results").fullmatch("bench/results.py")


# ---- what the image build does ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first run downloads every dependency; later runs hit pip's cache
def test_wheel_installs_offline_into_fresh_venv(tmp_path: Path) -> None:
    context, wheels, venv = tmp_path / "context", tmp_path / "wheels", tmp_path / "venv"
    # A filtered copy, like docker's context; it also keeps build/ and *.egg-info out of the checkout.
    _copy_build_context(context)
    assert (context / "pyproject.toml").is_file()
    assert (context / "authcar" / "__init__.py").is_file()

    # Builder stage: wheels for the project and all its dependencies.
    _run([sys.executable, "-m", "pip", "wheel", "--wheel-dir", wheels, context], timeout=1200)

    ours = sorted(wheels.glob("authcar-*.whl"))
    assert len(ours) == 1, ours
    names = zipfile.ZipFile(ours[0]).namelist()
    assert "authcar/__main__.py" in names, "`authcar` and `python -m authcar` need it"

    def allowed(name: str) -> bool:
        top = name.split("/", 1)[0]
        dist_info = top.startswith("authcar-") and top.endswith(".dist-info")
        return top in ("authcar", "book_service") or dist_info

    assert not [n for n in names if not allowed(n)], (
        "the wheel must hold only authcar/, the demo's book_service/ and the dist-info"
    )
    assert not [n for n in names if "/tests/" in f"/{n}" or "conftest" in n]

    # Final stage: a clean interpreter, offline install from those wheels only.
    _run([sys.executable, "-m", "venv", venv], timeout=300, env=_clean_env())
    _run(
        [venv / "bin" / "pip", "install", "--no-index", "--find-links", wheels, "authcar"],
        timeout=600,
        env=_clean_env(offline_pip=True),
    )

    # Run from tmp_path: `python -m` puts the cwd on sys.path, and the checkout must not shadow
    # the installed package.
    env = _clean_env()
    where = _run(
        [venv / "bin" / "python", "-c", "import authcar; print(authcar.__file__)"],
        cwd=tmp_path,
        timeout=60,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    helped = _run([venv / "bin" / "authcar", "--help"], cwd=tmp_path, timeout=60, env=env)
    assert re.search(r"\brun\b", helped.stdout), helped.stdout
    _run([venv / "bin" / "python", "-m", "authcar", "--help"], cwd=tmp_path, timeout=60, env=env)


# ---- review of the Dockerfile ------------------------------------------------------------------

_COMPILERS = re.compile(
    r"(?<![\w.-])(gcc|g\+\+|cc|clang|make|build-essential|python3?(\.\d+)?-dev|libc6?-dev)(?![\w.+-])"
)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\[ \t]*\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        keyword, _, args = line.strip().partition(" ")
        if keyword:
            result.append((keyword.upper(), args.strip()))
    return result


def dockerfile_problems(text: str) -> list[str]:
    instructions = _instructions(text)
    global_args = {}
    for keyword, args in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, default = args.partition("=")
            global_args[name] = default
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            stages.append((args, []))
        elif stages:
            stages[-1][1].append((keyword, args))
    if len(stages) < 2:
        return ["not a multi-stage build"]

    problems = []
    base_of_final, final = stages[-1]
    image = re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m[1] or m[2], m[0]), base_of_final.split()[0]
    )
    if image in {s.split()[-1] for s, _ in stages[:-1] if " AS " in s.upper()}:
        problems.append("the final stage is built on another stage (its compilers and sources come along)")
    elif "slim" not in image:
        problems.append(f"the final stage's base {image!r} is not a slim image")

    users = [args for keyword, args in final if keyword == "USER"]
    numeric = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1]) if users else None
    if not numeric or int(numeric[1]) == 0 or (numeric[2] is not None and int(numeric[2]) == 0):
        problems.append(f"the final stage must end as a numeric non-root USER, not {users[-1:]}")

    for keyword, args in final:
        if keyword == "RUN" and _COMPILERS.search(args):
            problems.append(f"compiler in the final stage: RUN {args}")
        if keyword == "RUN" and "pip install" in args and "--no-index" not in args:
            problems.append("the final stage must install from the builder's wheels only (--no-index)")

    def exec_form(keyword: str) -> object:
        values = [args for k, args in final if k == keyword]
        try:
            return json.loads(values[-1]) if values else None
        except json.JSONDecodeError:
            return values[-1]  # shell form: wraps in /bin/sh -c, so signals miss authcar

    if exec_form("ENTRYPOINT") != ["authcar"]:
        problems.append(f'ENTRYPOINT must be ["authcar"], not {exec_form("ENTRYPOINT")!r}')
    if exec_form("CMD") != ["run"]:
        problems.append(f'CMD must be ["run"], not {exec_form("CMD")!r}')
    exposed = {p.split("/")[0] for k, args in final if k == "EXPOSE" for p in args.split()}
    if not {"4180", "9901"} <= exposed:
        problems.append(f"EXPOSE must list 4180 and 9901, has {sorted(exposed)}")
    return problems


def test_dockerfile_passes_review() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("USER 65532:65532", "USER root"),
        ("USER 65532:65532", "USER 0:0"),
        ("USER 65532:65532", "USER 65532:0"),
        ("USER 65532:65532", "USER authcar"),
        ("USER 65532:65532", ""),
        ("USER 65532:65532", "USER 65532:65532\nUSER root"),
        ("USER 65532:65532", "RUN apt-get update && apt-get install -y build-essential\nUSER 65532:65532"),
        ("USER 65532:65532", "RUN apt-get install -y --no-install-recommends gcc\nUSER 65532:65532"),
        ('ENTRYPOINT ["authcar"]', "ENTRYPOINT authcar"),
        ('ENTRYPOINT ["authcar"]', 'ENTRYPOINT ["python"]'),
        ('CMD ["run"]', 'CMD ["demo"]'),
        ("EXPOSE 4180 9901", "EXPOSE 4180"),
        ("--no-index ", ""),
        ("FROM ${PYTHON_IMAGE}\n", "FROM builder\n"),
        ("ARG PYTHON_IMAGE=python:3.12-slim", "ARG PYTHON_IMAGE=python:3.12"),
    ],
)
def test_dockerfile_review_catches(old: str, new: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the Dockerfile changed; update this mutation: {old!r}"
    # Replace the last occurrence: the final stage's instruction.
    head, _, tail = text.rpartition(old)
    assert dockerfile_problems(head + new + tail), f"review missed: {old!r} -> {new!r}"
