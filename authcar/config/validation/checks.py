"""Small checks that several concerns share."""

from __future__ import annotations

from collections.abc import Iterable

from authcar.config.problems import Problem
from authcar.config.settings import Settings, env_name


def problem(name: str, text: str, also: Iterable[str] = ()) -> Problem:
    """A problem with a setting, named by its environment variable: `AUTHCAR_<NAME>: text`."""
    return Problem(name, f"{env_name(name)}: {text}", tuple(also))


def greater_than_zero(s: Settings, *names: str) -> list[Problem]:
    return [problem(name, "must be greater than 0") for name in names if getattr(s, name) <= 0]


def not_negative(s: Settings, *names: str) -> list[Problem]:
    return [problem(name, "must not be negative") for name in names if getattr(s, name) < 0]
