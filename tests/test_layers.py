"""The layers keep one direction, read from the source: every import of every module, including
the ones inside functions and under TYPE_CHECKING (a lazy import is still a dependency).

    shared vocabulary   config, errors, observe, types, identity, claims, claim_headers, jose, headers,
                        paths, extensions, exchange: the words every part uses; they know no stage
    wire level          protocol (uvicorn's HTTP protocol), http1 (the upstream client): they know
                        no tokens, no policy, no gate
    stages              authn (who is calling) and policy (may they) know nothing of each other, the
                        forwarding, or the gate; revocation reads identities, not tokens
    composition         app builds the gate from its parts; nothing else builds it
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "authcar"

VOCABULARY = (
    "authcar.errors",
    "authcar.observe",
    "authcar.types",
    "authcar.identity",
    "authcar.claims",
    "authcar.claim_headers",
    "authcar.jose",
    "authcar.headers",
    "authcar.paths",
    "authcar.extensions",
    "authcar.exchange",
    "authcar.redis_url",
    "authcar.rate_spec",
)
CONFIGURATION = ("authcar.config",)  # a module or a package: the rule covers either
PIPELINE_STAGES = (
    "authcar.gate",
    "authcar.forward_auth",
    "authcar.authn",
    "authcar.login",
    "authcar.policy",
    "authcar.rate_limit",
    "authcar.upstream",
    "authcar.protocol",
    "authcar.identity_headers",
    "authcar.http1",
    "authcar.reserved",
    "authcar.admin",
    "authcar.admin_api",
    "authcar.revocation",
)
COMPOSITION = ("authcar.app", "authcar.server", "authcar.demo", "authcar.__main__")
ABOVE_THE_WIRE = (
    "authcar.authn",
    "authcar.login",
    "authcar.policy",
    "authcar.rate_limit",
    "authcar.gate",
    "authcar.upstream",
    "authcar.identity_headers",
    "authcar.reserved",
    "authcar.admin",
    "authcar.admin_api",
    "authcar.revocation",
    *COMPOSITION,
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def imports_of(name: str) -> list[Import]:
    """Every authcar module `name` imports, wherever in the module the import statement is."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package upwards
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from authcar import devissuer` imports a module; `from authcar.policy import
                # authorize` imports from one.
                submodule = f"{base}.{alias.name}"
                found.append(Import(name, submodule if submodule in MODULES else base, node.lineno))
    return [found_import for found_import in found if in_group(found_import.imported, ("authcar",))]


def in_group(module: str, group: Iterable[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in group)


def modules_in(group: Iterable[str]) -> list[str]:
    return [name for name in MODULES if in_group(name, group)]


def violations(importers: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    forbidden = tuple(forbidden)
    return [str(i) for name in importers for i in imports_of(name) if in_group(i.imported, forbidden)]


def test_every_module_named_by_a_rule_exists() -> None:
    """A renamed or moved module must not make a rule pass by matching nothing."""
    named = {*VOCABULARY, *CONFIGURATION, *PIPELINE_STAGES, *COMPOSITION, *ABOVE_THE_WIRE}
    assert sorted(name for name in named if not modules_in([name])) == []


def test_the_import_reader_sees_lazy_and_type_checking_imports() -> None:
    """The reader itself: app.py imports the gate at the top, server.py imports lazily nowhere, and
    __main__ imports most commands inside functions."""
    assert "authcar.gate" in {i.imported for i in imports_of("authcar.app")}
    lazy = {i.imported for i in imports_of("authcar.__main__")}
    assert {"authcar.server", "authcar.demo", "authcar.policy.testing"} <= lazy
    assert "authcar.app" in {i.imported for i in imports_of("authcar.admin")}  # under TYPE_CHECKING


def test_the_shared_vocabulary_imports_no_pipeline_stage() -> None:
    assert violations(modules_in(VOCABULARY), (*PIPELINE_STAGES, *COMPOSITION)) == []


def test_configuration_imports_no_pipeline_stage() -> None:
    assert violations(modules_in(CONFIGURATION), (*PIPELINE_STAGES, *COMPOSITION)) == []


def test_the_wire_level_knows_no_tokens_policy_or_gate() -> None:
    """protocol.py hands requests a per-connection slot (authcar.extensions) that the stages fill;
    http1.py is the upstream's HTTP client and knows only bytes."""
    assert violations(["authcar.protocol", "authcar.http1"], ABOVE_THE_WIRE) == []


def test_authentication_and_authorization_know_nothing_of_each_other_or_what_follows() -> None:
    later = ("authcar.gate", "authcar.upstream", "authcar.identity_headers", "authcar.protocol", *COMPOSITION)
    assert violations(modules_in(["authcar.authn"]), ("authcar.policy", *later)) == []
    assert violations(modules_in(["authcar.policy"]), ("authcar.authn", "authcar.login", *later)) == []


def test_the_revocation_list_reads_identities_and_knows_no_token_validator_or_policy() -> None:
    """Every authenticator's identity is checked the same way, cached ones included, because the
    list sees only the Identity; the admin API writes the list and knows no other stage."""
    stages = ("authcar.authn", "authcar.policy", "authcar.login", "authcar.gate", "authcar.upstream")
    assert violations(["authcar.revocation", "authcar.admin_api"], (*stages, *COMPOSITION)) == []


def test_the_rate_limit_knows_only_the_identity_and_the_store() -> None:
    """It counts who authentication found; how they were found, what the policy says and where the
    request goes are not its business."""
    others = ("authcar.authn", "authcar.login", "authcar.policy", "authcar.upstream", "authcar.gate")
    assert violations(["authcar.rate_limit"], (*others, "authcar.protocol", *COMPOSITION)) == []


def test_forwarding_knows_no_identity_stage() -> None:
    stages = ("authcar.authn", "authcar.policy", "authcar.gate", "authcar.protocol", *COMPOSITION)
    assert violations(["authcar.upstream", "authcar.http1"], stages) == []


def test_only_the_composition_builds_the_gate() -> None:
    importers = sorted(
        {i.importer for name in MODULES for i in imports_of(name) if i.imported == "authcar.gate"}
    )
    assert importers == ["authcar.app"]


@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "policy").glob("*.py")), ids=lambda p: p.name)
def test_policy_tests_build_identities_without_the_token_validator(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert [name for name in imported if name and in_group(name, ["authcar.authn"])] == []
