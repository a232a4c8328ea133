"""AUTHCAR_RATE_LIMIT and AUTHCAR_RATE_LIMIT_BURST: each mistake is a problem naming its setting, a
burst without a rate or a per-worker limit is a warning, and the settings build the limiter."""

from __future__ import annotations

import pytest

from authcar.config import load_settings, validation_warnings
from tests.config.test_store_settings import BASE, problems_of


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AUTHCAR_RATE_LIMIT": "lots"}, "AUTHCAR_RATE_LIMIT: 'lots' is not <count>/<s|m|h>"),
        ({"AUTHCAR_RATE_LIMIT": "0/s"}, "AUTHCAR_RATE_LIMIT: '0/s' allows nothing"),
        ({"AUTHCAR_RATE_LIMIT": "-5/s"}, "AUTHCAR_RATE_LIMIT: '-5/s' is not"),
        ({"AUTHCAR_RATE_LIMIT": "inf/s"}, "AUTHCAR_RATE_LIMIT: 'inf/s' is not"),
        ({"AUTHCAR_RATE_LIMIT": "5000000/s"}, "AUTHCAR_RATE_LIMIT: '5000000/s': at most 1000000"),
        (
            {"AUTHCAR_RATE_LIMIT": "100/s", "AUTHCAR_RATE_LIMIT_BURST": "0"},
            "AUTHCAR_RATE_LIMIT_BURST: must be",
        ),
        (
            {"AUTHCAR_RATE_LIMIT": "100/s", "AUTHCAR_RATE_LIMIT_BURST": "-3"},
            "AUTHCAR_RATE_LIMIT_BURST: must be",
        ),
        (
            {"AUTHCAR_RATE_LIMIT": "1/h", "AUTHCAR_RATE_LIMIT_BURST": "999999"},
            "AUTHCAR_RATE_LIMIT_BURST: a burst",
        ),
        ({"AUTHCAR_RATE_LIMIT": "100/s", "AUTHCAR_RATE_LIMIT_BURST": "1.5"}, "AUTHCAR_RATE_LIMIT_BURST"),
        ({"AUTHCAR_RATE_LIMIT": "100/s", "AUTHCAR_RATE_LIMIT_BURST": "inf"}, "AUTHCAR_RATE_LIMIT_BURST"),
    ],
)
def test_each_mistake_names_its_setting(env: dict[str, str], expected: str) -> None:
    messages = problems_of(env)
    assert any(expected in message for message in messages), messages


def test_a_valid_limit_loads() -> None:
    settings = load_settings(
        {}, environ={**BASE, "AUTHCAR_RATE_LIMIT": "6000/m", "AUTHCAR_RATE_LIMIT_BURST": "50"}
    ).settings
    assert (settings.rate_limit, settings.rate_limit_burst) == ("6000/m", 50)
    assert validation_warnings(settings) == []


def test_a_burst_without_a_rate_and_a_limit_per_worker_are_warnings() -> None:
    alone = load_settings({}, environ={**BASE, "AUTHCAR_RATE_LIMIT_BURST": "5"}).settings
    assert [w.message for w in validation_warnings(alone)] == [
        "AUTHCAR_RATE_LIMIT_BURST: has no effect without AUTHCAR_RATE_LIMIT"
    ]
    per_worker = load_settings(
        {}, environ={**BASE, "AUTHCAR_RATE_LIMIT": "10/s", "AUTHCAR_WORKERS": "4"}
    ).settings
    (warning,) = validation_warnings(per_worker)
    assert warning.message.startswith("AUTHCAR_RATE_LIMIT: with the in-memory store each of the 4 workers")
    shared = load_settings(
        {},
        environ={
            **BASE,
            "AUTHCAR_RATE_LIMIT": "10/s",
            "AUTHCAR_WORKERS": "4",
            "AUTHCAR_REDIS_URL": "redis://h",
        },
    ).settings
    assert validation_warnings(shared) == []
