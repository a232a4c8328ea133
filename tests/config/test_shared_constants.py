"""What the settings accept is what the token validator enforces: both read authcar/jose.py."""

from __future__ import annotations

from typing import Any

import pytest

from authcar.authn.jwt import SIGNATURE_ALGORITHMS, IssuerPolicy
from authcar.config import ConfigError, Settings, load_settings, setting_docs
from authcar.jose import ASYMMETRIC_ALGORITHMS, DEFAULT_LEEWAY, MAX_LEEWAY


def accepted_by_settings(**env: str) -> bool:
    try:
        load_settings({}, environ={"AUTHCAR_ALLOW_ANONYMOUS": "true", **env})
    except ConfigError:
        return False
    return True


def accepted_by_validator(**rules: Any) -> bool:
    try:
        IssuerPolicy(issuer="https://idp.example", audiences=frozenset({"api"}), **rules)
    except ValueError:
        return False
    return True


def test_every_algorithm_the_settings_accept_has_a_verifier() -> None:
    # A setting that passed check-config must not fail when the issuer is built at start.
    assert set(SIGNATURE_ALGORITHMS) == ASYMMETRIC_ALGORITHMS
    for algorithm in sorted(ASYMMETRIC_ALGORITHMS):
        assert accepted_by_settings(AUTHCAR_OIDC_ALGORITHMS=algorithm), algorithm
        assert accepted_by_validator(algorithms=frozenset({algorithm})), algorithm
    for algorithm in ("HS256", "none", "rs256", "ES256X"):
        assert not accepted_by_settings(AUTHCAR_OIDC_ALGORITHMS=algorithm), algorithm
        assert not accepted_by_validator(algorithms=frozenset({algorithm})), algorithm


@pytest.mark.parametrize("leeway", [0.0, DEFAULT_LEEWAY, MAX_LEEWAY, MAX_LEEWAY + 0.001, -0.001, 86400.0])
def test_the_leeway_bound_is_the_same_in_the_settings_and_the_validator(leeway: float) -> None:
    inside = 0 <= leeway <= MAX_LEEWAY
    assert accepted_by_settings(AUTHCAR_OIDC_LEEWAY=repr(leeway)) is inside
    assert accepted_by_validator(algorithms=frozenset({"RS256"}), leeway=leeway) is inside


def test_the_documented_bound_and_default_are_the_enforced_ones() -> None:
    (row,) = [row for row in setting_docs() if row[0] == "AUTHCAR_OIDC_LEEWAY"]
    assert row[1] == str(DEFAULT_LEEWAY)
    assert f"at most {MAX_LEEWAY:g})" in row[2]
    assert (
        Settings().oidc_leeway
        == DEFAULT_LEEWAY
        == IssuerPolicy("i", frozenset(), frozenset({"RS256"})).leeway
    )
