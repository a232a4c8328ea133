"""The README's configuration table and quick start stay true to the code and to CI."""

from __future__ import annotations

import re
from pathlib import Path

from authcar.config import setting_docs

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(AUTHCAR_[A-Z_]+)` \| ([^|]+) \|", readme, flags=re.MULTILINE))
    for name, default, _ in setting_docs():
        assert name in rows, f"{name} is missing from the README's configuration table"
        shown = rows[name].strip().strip("`")
        assert shown == default, f"{name}: README says {shown!r}, code says {default!r}"
    documented = set(rows)
    known = {name for name, _, _ in setting_docs()}
    assert documented <= known, f"README documents settings that do not exist: {documented - known}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 dev.py test    # the whole test suite" in readme
    assert "python3 dev.py demo" in readme
    commands = [
        line.strip() for line in ci.splitlines() if "dev.py" in line and not line.lstrip().startswith("#")
    ]
    assert commands == ["exec python3 dev.py test"]


def test_every_test_the_security_model_names_exists() -> None:
    """docs/security.md proves each defence by naming its test; a renamed or deleted test fails here."""
    text = (ROOT / "docs" / "security.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?", text)
    assert len(named) >= 20, "docs/security.md should name the tests behind its defences"
    for path, name in named:
        source = ROOT / path
        assert source.is_file(), f"docs/security.md names {path}, which does not exist"
        if name:
            assert re.search(rf"^(?:async )?def {name}\(", source.read_text(), re.MULTILINE), (
                f"docs/security.md names {path}::{name}, which does not exist"
            )


# Names the docs may mention that are not settings, on purpose, each with why. Prefer fixing the
# docs: a name here is one a reader could set to no effect.
NOT_SETTINGS: dict[str, str] = {}


def mentioned_setting_names() -> dict[str, list[str]]:
    """Every AUTHCAR_* name in the README, docs/ and deploy/, with the files that mention it."""
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    sources += sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file() and p.suffix != ".pyc")
    mentions: dict[str, list[str]] = {}
    for source in sources:
        # \b: BOOKS_AUTHCAR_JWKS_URL is the book service's setting, not ours.
        for name in set(re.findall(r"\bAUTHCAR_[A-Z0-9_]*", source.read_text(encoding="utf-8"))):
            mentions.setdefault(name, []).append(str(source.relative_to(ROOT)))
    return mentions


def names_a_setting(name: str, known: set[str]) -> bool:
    """A setting, a family of them (`AUTHCAR_`, `AUTHCAR_OIDC_`) or a secret's `_FILE` form."""
    if name in known:
        return True
    if name.endswith("_"):
        return any(k.startswith(name) for k in known)
    return name.endswith("_FILE") and name.removesuffix("_FILE") in known


def test_every_setting_name_the_docs_mention_exists() -> None:
    known = {name for name, _, _ in setting_docs()}
    unknown = {
        name: files
        for name, files in mentioned_setting_names().items()
        if not names_a_setting(name, known) and name not in NOT_SETTINGS
    }
    assert not unknown, f"the docs mention settings that do not exist: {unknown}"


def test_the_list_of_names_that_are_not_settings_is_still_needed() -> None:
    mentioned = mentioned_setting_names()
    known = {name for name, _, _ in setting_docs()}
    stale = {name for name in NOT_SETTINGS if name not in mentioned or names_a_setting(name, known)}
    assert not stale, f"NOT_SETTINGS lists names no doc needs it for: {stale}"


# Error codes that never reach a client: the client had gone (the access log records it as 499).
UNANSWERED_CODES = {"client_closed_request"}
# Defaults of base classes in authcar/errors.py that every raise replaces with its own code.
BASE_CLASS_CODES = {"unauthorized", "forbidden", "unavailable"}


def test_every_error_code_the_sidecar_answers_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### What the client receives on errors") :]
    table = table[: table.index("\n\n", table.index("| status |"))]
    listed = set(re.findall(r"`([a-z_]+)`", table))
    raised = {
        code
        for source in (ROOT / "authcar").rglob("*.py")
        for code in re.findall(r'\bcode\s*=\s*"([a-z_]+)"', source.read_text(encoding="utf-8"))
    }
    assert len(raised) > 30, "the search for error codes found too few: has the spelling changed?"
    missing = raised - listed - UNANSWERED_CODES - BASE_CLASS_CODES
    assert not missing, f"error codes the README's error table does not list: {sorted(missing)}"
