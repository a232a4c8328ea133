"""AUTHCAR_ADMIN_TOKEN and AUTHCAR_REVOCATION_FAIL_OPEN: a token too weak to guard the admin API, or
one that cannot travel in a Bearer header, is a problem that never repeats the token; several workers
on memory stores would each hold their own revocation list, so that is refused too."""

from __future__ import annotations

from pathlib import Path

import pytest

from authcar.config import ConfigError, load_settings, validation_warnings

BASE = {"AUTHCAR_UPSTREAM": "http://127.0.0.1:8080", "AUTHCAR_ALLOW_ANONYMOUS": "true"}
GOOD = "k" * 31 + "-._~+/="


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={**BASE, **env})
    return caught.value.messages


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("short-secret", "AUTHCAR_ADMIN_TOKEN: must be at least 32 characters (it is 12)"),
        ("a" * 40 + " b", "AUTHCAR_ADMIN_TOKEN: may hold only letters"),
        ("a" * 40 + "\u00e9", "AUTHCAR_ADMIN_TOKEN: may hold only letters"),
        ("a" * 40 + '"', "AUTHCAR_ADMIN_TOKEN: may hold only letters"),
        ("=" + "a" * 40, "AUTHCAR_ADMIN_TOKEN: may hold only letters"),
    ],
)
def test_a_weak_or_unsendable_admin_token_is_refused_without_repeating_it(token: str, expected: str) -> None:
    messages = problems_of({"AUTHCAR_ADMIN_TOKEN": token})
    assert any(expected in message for message in messages), messages
    assert not any(token in message for message in messages)


def test_several_workers_need_a_shared_store_for_one_revocation_list() -> None:
    messages = problems_of({"AUTHCAR_ADMIN_TOKEN": GOOD, "AUTHCAR_WORKERS": "2"})
    assert any("AUTHCAR_ADMIN_TOKEN: with AUTHCAR_WORKERS > 1 needs AUTHCAR_REDIS_URL" in m for m in messages)
    shared = load_settings(
        {},
        environ={
            **BASE,
            "AUTHCAR_ADMIN_TOKEN": GOOD,
            "AUTHCAR_WORKERS": "2",
            "AUTHCAR_REDIS_URL": "redis://127.0.0.1:6379",
        },
    )
    assert shared.settings.admin_token == GOOD


def test_the_token_reads_from_a_file_and_fail_open_is_off_by_default(tmp_path: Path) -> None:
    secret = tmp_path / "admin-token"
    secret.write_text(GOOD + "\n")
    loaded = load_settings({}, environ={**BASE, "AUTHCAR_ADMIN_TOKEN_FILE": str(secret)})
    assert loaded.settings.admin_token == GOOD
    assert loaded.settings.revocation_fail_open is False
    assert GOOD not in repr(loaded.settings)


def test_failing_open_without_a_shared_store_is_a_warning_that_it_does_nothing() -> None:
    alone = load_settings({}, environ={**BASE, "AUTHCAR_REVOCATION_FAIL_OPEN": "true"}).settings
    assert any("AUTHCAR_REVOCATION_FAIL_OPEN: has no effect" in w.message for w in validation_warnings(alone))
    shared = {**BASE, "AUTHCAR_REVOCATION_FAIL_OPEN": "true", "AUTHCAR_REDIS_URL": "redis://127.0.0.1:6379"}
    assert not [
        w for w in validation_warnings(load_settings({}, environ=shared).settings) if "FAIL_OPEN" in w.message
    ]
