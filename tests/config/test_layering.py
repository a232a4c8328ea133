"""The configuration is shared vocabulary: importing it loads no pipeline stage, so every stage may
import it and none of them can come back round into it (issue 11, point 4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What authcar.config may load besides itself: vocabulary that knows no request, token or policy.
# headers and paths hold header-name sets and path syntax (they import only errors and types);
# redis_url the Redis URL syntax and setting rules, rate_spec the rate limit's (neither imports
# anything of authcar).
VOCABULARY = {
    "authcar",
    "authcar.claim_headers",
    "authcar.errors",
    "authcar.headers",
    "authcar.jose",
    "authcar.paths",
    "authcar.rate_spec",
    "authcar.redis_url",
    "authcar.types",
}


def authcar_modules_after_importing(module: str) -> set[str]:
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'authcar' or m.startswith('authcar.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    return set(json.loads(result.stdout))


def test_the_configuration_loads_no_pipeline_stage() -> None:
    loaded = authcar_modules_after_importing("authcar.config")
    own = {m for m in loaded if m == "authcar.config" or m.startswith("authcar.config.")}
    assert {"authcar.config.loading", "authcar.config.validation"} <= own  # the check sees the package
    assert loaded - own <= VOCABULARY, sorted(loaded - own - VOCABULARY)


def test_validation_has_no_lazy_import_of_a_pipeline_stage() -> None:
    # A function-level import would not show in sys.modules until the function runs: run them all.
    code = (
        "import json, sys\n"
        "from authcar.config import Settings, validate, validation_warnings\n"
        "s = Settings(oidc_issuer_url='https://idp.example', claim_headers=('X-A=a', 'bad'),"
        " public_paths=('GET /x',), dry_run_paths=('/y',), issuers=())\n"
        "validate(s); validation_warnings(s); validate(Settings())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('authcar.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    loaded = set(json.loads(result.stdout))
    outside = {m for m in loaded if not m.startswith("authcar.config")} - VOCABULARY
    assert not outside, sorted(outside)


def test_the_vocabulary_modules_import_nothing_of_the_pipeline_either() -> None:
    for module in sorted(VOCABULARY - {"authcar"}):
        assert authcar_modules_after_importing(module) <= VOCABULARY, module
