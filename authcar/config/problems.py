"""What is wrong with a configuration: each finding a Problem, all of them raised together once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about the configuration: an error, or a warning (allowed, but likely a mistake).

    `setting` is the Settings field it is about ("" when none is: an unknown flag or YAML key) and
    `also` the other fields it depends on. They are for code (which problems to drop, which setting
    is at fault); `message` is for the operator and names the setting as they wrote it: the
    environment variable, the flag, the YAML key, or `issuers[i].field` for a YAML issuer (whose
    `setting` is "issuers").
    """

    setting: str
    message: str
    also: tuple[str, ...] = ()

    @property
    def concerns(self) -> frozenset[str]:
        """Every setting whose value this finding depends on."""
        return frozenset((self.setting, *self.also)) - {""}

    def __str__(self) -> str:
        return self.message


def bullet_list(problems: Iterable[Problem]) -> str:
    return "\n".join(f"  - {problem}" for problem in problems)


class ConfigError(Exception):
    """Every problem found in the configuration, reported at once."""

    def __init__(self, problems: Sequence[Problem], warnings: Sequence[Problem] = ()) -> None:
        self.problems = tuple(problems)
        # Found on the way (an unknown, maybe misspelt, variable): most useful exactly when it fails.
        self.warnings = tuple(warnings)
        super().__init__("invalid configuration:\n" + bullet_list(self.problems))

    @property
    def messages(self) -> list[str]:
        """The problems as the operator reads them, in the order found."""
        return [problem.message for problem in self.problems]
