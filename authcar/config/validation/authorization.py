"""Authorization's inputs and what the application is told: public and dry-run paths, the role
prefix the policy sees, the claim headers and the signed assertion. (The policy files themselves
are checked by `authcar check-config`, which loads them.)"""

from __future__ import annotations

from authcar.claim_headers import claim_header_problems
from authcar.config.problems import Problem
from authcar.config.settings import Settings
from authcar.config.validation.checks import problem
from authcar.paths import parse_public_path

# Shorter outlives no clock skew between sidecar and app; longer makes a leaked one useful.
ASSERTION_LIFETIME = (5, 3600)


def validate_authorization(s: Settings) -> list[Problem]:
    problems = [problem("claim_headers", text) for text in claim_header_problems(s.claim_headers)]
    for name in ("public_paths", "dry_run_paths"):
        for entry in getattr(s, name):
            try:
                parse_public_path(entry)
            except ValueError as exc:
                problems.append(problem(name, str(exc)))
    prefix = s.policy_role_prefix
    if not prefix or prefix.startswith("authcar:") or any(c in prefix for c in ", \t"):
        # Without a prefix a subject `admin` would hold the role `admin`'s rules; `authcar:` names the
        # built-in roles; commas and blanks would split in policy CSV lines.
        problems.append(problem("policy_role_prefix", "must not start with `authcar:` or hold , or blanks"))
    shortest, longest = ASSERTION_LIFETIME
    if not shortest <= s.assertion_lifetime <= longest:
        problems.append(problem("assertion_lifetime", f"must be between {shortest} and {longest} seconds"))
    audience = s.assertion_audience
    if not audience or not audience.isprintable() or " " in audience:
        problems.append(problem("assertion_audience", "must be a non-empty value without spaces"))
    if not (
        s.reserved_prefix.startswith("/") and s.reserved_prefix.endswith("/") and len(s.reserved_prefix) > 2
    ):
        problems.append(problem("reserved_prefix", f"must look like /name/ (got {s.reserved_prefix!r})"))
    return problems
