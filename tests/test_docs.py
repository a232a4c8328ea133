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
