"""Whether the settings make sense, one module per concern; each validator returns its Problems and
this is the one place that joins them (as oauth2-proxy keeps its validation apart from its options).

Validators see a complete Settings object (defaults stand in for values that could not be parsed)
and never raise: one run reports everything.
"""

from __future__ import annotations

from collections.abc import Callable

from authcar.config.problems import Problem
from authcar.config.settings import Settings
from authcar.config.validation.admin import admin_warnings, validate_admin
from authcar.config.validation.authorization import validate_authorization
from authcar.config.validation.introspection import validate_introspection
from authcar.config.validation.issuers import issuer_warnings, validate_issuers
from authcar.config.validation.limits import validate_limits
from authcar.config.validation.listener import validate_listener
from authcar.config.validation.login import login_warnings, validate_login
from authcar.config.validation.rate_limit import rate_limit_warnings, validate_rate_limit
from authcar.config.validation.store import store_warnings, validate_store
from authcar.config.validation.upstream import validate_upstream

Validator = Callable[[Settings], list[Problem]]

# In the order an operator reads a configuration: where it listens, what it protects, who is
# trusted, what is allowed, how much of everything, where shared state lives, who may change it,
# how often a caller may come.
VALIDATORS: tuple[Validator, ...] = (
    validate_listener,
    validate_upstream,
    validate_issuers,
    validate_introspection,
    validate_login,
    validate_authorization,
    validate_limits,
    validate_store,
    validate_admin,
    validate_rate_limit,
)
WARNINGS: tuple[Validator, ...] = (
    issuer_warnings,
    store_warnings,
    login_warnings,
    rate_limit_warnings,
    admin_warnings,
)


def validate(s: Settings) -> list[Problem]:
    """Every problem in the settings: any of them means authcar must not start."""
    return [found for validator in VALIDATORS for found in validator(s)]


def validation_warnings(s: Settings) -> list[Problem]:
    """What is allowed but weakens or does nothing: printed by `check-config` and at start."""
    return [found for validator in WARNINGS for found in validator(s)]
