"""The refresh margin scales with the token's lifetime: short tokens are not refreshed on every
request, long ones a minute ahead."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authcar.login.refresh import MAX_MARGIN, refresh_due, refresh_margin


@pytest.mark.parametrize(
    ("lifetime", "margin"), [(1, 0.2), (30, 6), (60, 12), (300, 60), (3600, 60), (0, 0), (-5, 0)]
)
def test_the_margin_is_a_fifth_of_the_lifetime_at_most_a_minute(lifetime: float, margin: float) -> None:
    assert refresh_margin(lifetime) == pytest.approx(margin)


def test_due_at_the_margin_before_expiry() -> None:
    assert not refresh_due(1000, 1060, 1047.9)
    assert refresh_due(1000, 1060, 1048)
    assert refresh_due(1000, 1060, 1100)  # expired: due too
    assert refresh_due(1000, 4600, 4540)
    assert not refresh_due(1000, 4600, 4539.9)


@settings(deadline=None)
@given(
    issued=st.floats(0, 2e9, allow_nan=False),
    lifetime=st.floats(0.001, 1e6, allow_nan=False),
    elapsed=st.floats(0, 1e6, allow_nan=False),
)
def test_a_fresh_token_is_not_due_for_most_of_its_life(
    issued: float, lifetime: float, elapsed: float
) -> None:
    margin = refresh_margin(lifetime)
    assert 0 < margin <= MAX_MARGIN
    assert margin <= lifetime / 5 + 1e-9
    due = refresh_due(issued, issued + lifetime, issued + elapsed)
    slack = 8 * (issued + lifetime + elapsed) * sys.float_info.epsilon  # rounding of the sums
    if elapsed < lifetime * 0.8 - slack:
        assert not due
    if elapsed >= lifetime:
        assert due
