"""The full pipeline of issue 14: what a production sidecar does on every request.

A repeated RS256 bearer token (keys from the provider's discovery document), a Casbin policy of
1,000 rules (10,000 for the large-policy row) that the caller's role reaches last, the identity
headers and the signed assertion (authcar's defaults: on), and the JSON access log at info (written
to /dev/null by the harness, so formatting and writing are measured, not the disk).

With the shared-state checks on top (`limits_env`): a rate limit no request of the run reaches (one
GCRA step in the store per request, never a 429) and a revocation list of REVOKED_ENTRIES entries
that the caller's token is not on (the admin API writes them before the load; every request is
looked up in the worker's copy, which polls the store four times a second).
"""

from __future__ import annotations

import secrets
from pathlib import Path

CALLER_ROLE = "reader"  # what tests/idp puts in realm_access.roles by default


def policy_text(rules: int) -> tuple[str, str]:
    """(model.conf, policy.csv): bench/policy.py's many-roles shape at `rules` rules, plus the one
    rule that lets the run's caller (role `reader`) through on every route and method the
    workloads use; written after the others, so the index finds it among them, not first."""
    from policy import MODEL, roles_policy  # bench/policy.py (imports authcar: run from the repo)

    body, _, _ = roles_policy(rules)
    allow = f"p, role:{CALLER_ROLE}, /*, ^(GET|HEAD|POST)$, allow\n"
    return MODEL, body + allow


def write_policy_dir(tmp: Path, rules: int) -> Path:
    directory = tmp / f"policy-{rules}"
    if not directory.exists():
        model, policy = policy_text(rules)
        directory.mkdir()
        (directory / "model.conf").write_text(model)
        (directory / "policy.csv").write_text(policy)
    return directory


def full_pipeline_env(policy_dir: Path, *, workers: int, redis_url: str | None) -> dict[str, str]:
    """The AUTHCAR_* settings on top of the token scenarios' (issuer, audience, tokens required)."""
    env = {
        "AUTHCAR_POLICY_DIR": str(policy_dir),
        "AUTHCAR_WORKERS": str(workers),
        "AUTHCAR_LOG_LEVEL": "info",
        "AUTHCAR_ACCESS_LOG": "true",
        # Identity headers and the signed assertion are on by default; said here so a change of
        # default cannot silently make the row cheaper.
        "AUTHCAR_CLAIM_HEADERS": (
            "X-Auth-Request-Email=email,X-Auth-Request-Preferred-Username=preferred_username"
        ),
        "AUTHCAR_MAX_CONNECTIONS": "4096",  # the idle-1k workload holds 1,000 connections
    }
    if redis_url is not None:
        env["AUTHCAR_REDIS_URL"] = redis_url
    return env


# Far above what one sidecar serves here, so no request is refused: each still costs its GCRA step.
UNREACHED_RATE_LIMIT = "1000000/s"
REVOKED_ENTRIES = 100


def limits_env() -> tuple[dict[str, str], str]:
    """The settings that turn rate limiting and the admin API on, and the admin token."""
    token = secrets.token_urlsafe(32)
    return {"AUTHCAR_RATE_LIMIT": UNREACHED_RATE_LIMIT, "AUTHCAR_ADMIN_TOKEN": token}, token
