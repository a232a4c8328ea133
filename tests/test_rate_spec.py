"""AUTHCAR_RATE_LIMIT's syntax and bounds: every spelling it accepts is a limit every store backend
accepts, and everything else is refused with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authcar.rate_spec import RateSpec, parse_rate, rate_spec
from authcar.store.base import check_rate


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [("100/s", 100, 1), ("6000/m", 6000, 60), ("10/h", 10, 3600), (" 2 / M ", 2, 60), ("007/s", 7, 1)],
)
def test_the_forms_it_accepts(text: str, count: int, period: int) -> None:
    assert parse_rate(text) == (count, period)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "/s",
        "100/d",
        "100/sec",
        "100 per second",
        "1.5/s",
        "-1/s",
        "+1/s",
        "0/s",
        "0000/m",
        "inf/s",
        "nan/s",
        "1e3/s",
        "\u0661\u0660\u0660/s",  # Arabic-Indic digits: int() reads them, the rule does not
        "\uff11\uff10\uff10/s",  # fullwidth digits
        "100/s/s",
        "100/\uff53",  # a fullwidth s
        "1000001/s",
        "99999999/s",
        "10000000000000000000000/s",
        "100/s\n50/s",
    ],
)
def test_garbage_zero_negative_non_finite_and_absurd_values_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not <count>|allows nothing|at most"):
        parse_rate(text)


def test_the_burst_defaults_to_the_count_and_is_bounded() -> None:
    assert rate_spec("6000/m", None) == RateSpec(6000, 60, 6000)
    assert rate_spec("6000/m", 10).burst == 10
    for burst in (0, -1, 1_000_001):
        with pytest.raises(ValueError, match="from 1 to"):
            rate_spec("100/s", burst)
    with pytest.raises(ValueError, match="to refill"):
        rate_spec("1/h", 1_000_000)  # 114 years to refill


@settings(deadline=None)
@given(
    count=st.integers(0, 2_000_000),
    unit=st.sampled_from("smhSMH"),
    burst=st.none() | st.integers(-5, 2_000_000),
)
def test_every_limit_it_accepts_is_one_the_store_accepts(count: int, unit: str, burst: int | None) -> None:
    try:
        spec = rate_spec(f"{count}/{unit}", burst)
    except ValueError:
        return
    check_rate(spec.rate, spec.burst)  # raises if any backend would refuse it
