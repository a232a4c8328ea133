"""AUTHCAR_REDIS_*: each mistake is a problem naming its setting (and never the password), the
refinements without a URL are warnings, and the settings build the store they describe."""

from __future__ import annotations

from pathlib import Path

import pytest

from authcar.config import ConfigError, load_settings, validation_warnings
from authcar.store import MemoryStore
from authcar.store.redis import RedisStore
from authcar.store.setup import store_from_settings

BASE = {"AUTHCAR_UPSTREAM": "http://127.0.0.1:8080", "AUTHCAR_ALLOW_ANONYMOUS": "true"}


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={**BASE, **env})
    return caught.value.messages


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AUTHCAR_REDIS_URL": "memcached://h"}, "'memcached://h': the scheme must be one of"),
        ({"AUTHCAR_REDIS_URL": "redis+sentinel://s1,s2"}, "needs the master's name"),
        ({"AUTHCAR_REDIS_URL": "redis+cluster://h/3"}, "only database 0"),
        ({"AUTHCAR_REDIS_URL": "redis://a,b"}, "names one server"),
        ({"AUTHCAR_REDIS_URL": "redis://h?ssl=true"}, "query strings"),
        ({"AUTHCAR_REDIS_KEY_PREFIX": "my app:"}, "AUTHCAR_REDIS_KEY_PREFIX: must be 1 to 64"),
        ({"AUTHCAR_REDIS_TIMEOUT": "0"}, "AUTHCAR_REDIS_TIMEOUT: must be more than 0"),
        ({"AUTHCAR_REDIS_TIMEOUT": "600"}, "AUTHCAR_REDIS_TIMEOUT: must be more than 0 and at most 60"),
        (
            {"AUTHCAR_REDIS_URL": "redis://h", "AUTHCAR_REDIS_CA_FILE": "/etc/ssl/ca.pem"},
            "AUTHCAR_REDIS_CA_FILE: needs a rediss:// AUTHCAR_REDIS_URL",
        ),
        (
            {"AUTHCAR_REDIS_URL": "rediss://h", "AUTHCAR_REDIS_CA_FILE": "/nonexistent/ca.pem"},
            "AUTHCAR_REDIS_CA_FILE: /nonexistent/ca.pem does not exist",
        ),
    ],
)
def test_each_mistake_names_its_setting(env: dict[str, str], expected: str) -> None:
    messages = problems_of(env)
    assert any(expected in message for message in messages), messages


def test_every_mistake_is_reported_at_once_and_the_password_never() -> None:
    messages = problems_of(
        {
            "AUTHCAR_REDIS_URL": "redis+sentinel://:hunter2-secret@s1",
            "AUTHCAR_REDIS_KEY_PREFIX": "",
            "AUTHCAR_REDIS_TIMEOUT": "-1",
        }
    )
    assert len(messages) == 3, messages
    assert all("hunter2-secret" not in message for message in messages)
    assert "redis+sentinel://:***@s1" in messages[0]


def test_the_url_is_a_setting_now() -> None:
    loaded = load_settings({}, environ={**BASE, "AUTHCAR_REDIS_URL": "redis://redis:6379/2"})
    assert loaded.settings.redis_url == "redis://redis:6379/2"
    assert not [w for w in loaded.warnings if "REDIS" in w.message], loaded.warnings


def test_refinements_without_a_url_do_nothing_and_say_so(tmp_path: Path) -> None:
    settings = load_settings(
        {}, environ={**BASE, "AUTHCAR_REDIS_TIMEOUT": "1", "AUTHCAR_REDIS_PASSWORD": "pw"}
    ).settings
    warned = {w.setting: w.message for w in validation_warnings(settings)}
    assert set(warned) >= {"redis_timeout", "redis_password"}
    assert "has no effect without AUTHCAR_REDIS_URL" in warned["redis_timeout"]
    assert "redis_key_prefix" not in warned  # left at its default


def test_a_timeout_that_breaks_the_revocation_promise_is_a_warning() -> None:
    from authcar.config.validation.store import PROMPT_TIMEOUT
    from authcar.revocation import POLL_INTERVAL, PROMISE, worst_delay

    # The threshold is the slowest call the revocation list's one-second promise survives.
    assert (
        worst_delay(POLL_INTERVAL, PROMPT_TIMEOUT)
        <= PROMISE
        < worst_delay(POLL_INTERVAL, PROMPT_TIMEOUT * 1.01)
    )
    url = {"AUTHCAR_REDIS_URL": "redis://redis:6379"}
    at_bound = load_settings({}, environ={**BASE, **url, "AUTHCAR_REDIS_TIMEOUT": "0.25"})
    assert not [w for w in at_bound.warnings if w.setting == "redis_timeout"]
    slow = load_settings({}, environ={**BASE, **url, "AUTHCAR_REDIS_TIMEOUT": "0.5"})
    [warning] = [w for w in slow.warnings if w.setting == "redis_timeout"]
    assert "revocation_unavailable" in warning.message
    assert "AUTHCAR_REVOCATION_FAIL_OPEN" in warning.message


def test_the_settings_build_the_store_they_describe(tmp_path: Path) -> None:
    password_file = tmp_path / "redis-password"
    password_file.write_text("from-a-file\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed until a connection is made")
    env = {
        "AUTHCAR_REDIS_URL": "rediss://:from-the-url@redis.example:6380/1",
        "AUTHCAR_REDIS_PASSWORD_FILE": str(password_file),
        "AUTHCAR_REDIS_CA_FILE": str(ca),
        "AUTHCAR_REDIS_KEY_PREFIX": "books:",
        "AUTHCAR_REDIS_TIMEOUT": "0.5",
    }
    store = store_from_settings(load_settings({}, environ={**BASE, **env}).settings)
    assert isinstance(store, RedisStore)
    assert store.options.password == "from-a-file"
    assert store.options.ca_file == ca
    assert store.timeout == 0.5
    assert store.key("k") == "books:v1:k"
    assert str(store.target) == "rediss://:***@redis.example:6380/1"
    assert isinstance(store_from_settings(load_settings({}, environ=BASE).settings), MemoryStore)
