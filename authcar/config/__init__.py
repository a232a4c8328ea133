"""Settings: one typed, frozen object from flags > AUTHCAR_* env > YAML (AUTHCAR_CONFIG) > defaults.

Three parts: `settings` (what each setting is), `loading` (where values come from, `*_FILE`
secrets, unknown-variable warnings) and `validation` (whether they make sense, by concern). Every
finding is a `Problem`; all of them are raised together in one ConfigError.

A new setting: a field in `settings.py` (its help becomes `--help` and the README row that
tests/test_docs.py requires), its checks in the `validation/` module of its concern (a new concern:
a module and a line in `validation.VALIDATORS`), each returning Problems.

Shared vocabulary for the whole sidecar: nothing here imports a pipeline stage
(tests/config/test_layering.py holds it to that).
"""

from authcar.config.loading import LoadedSettings, load_settings
from authcar.config.problems import ConfigError, Problem
from authcar.config.settings import (
    ENV_PREFIX,
    IssuerSettings,
    LogFormat,
    LogLevel,
    Settings,
    env_name,
    setting,
    setting_docs,
)
from authcar.config.validation import validate, validation_warnings

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "IssuerSettings",
    "LoadedSettings",
    "LogFormat",
    "LogLevel",
    "Problem",
    "Settings",
    "env_name",
    "load_settings",
    "setting",
    "setting_docs",
    "validate",
    "validation_warnings",
]
