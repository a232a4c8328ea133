"""Where values come from: flags > AUTHCAR_* environment > YAML (AUTHCAR_CONFIG) > defaults.

Each secret also reads from AUTHCAR_<NAME>_FILE. Unknown AUTHCAR_* variables are warnings (with the
setting they were likely meant to be); unknown flags and YAML keys are problems. Every problem found,
here and by validation, is raised together in one ConfigError, so an operator fixes a broken
ConfigMap in one round instead of one crash-loop per typo.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from authcar.config.coercion import InvalidEntries, coerce, read_secret_file
from authcar.config.problems import ConfigError, Problem
from authcar.config.settings import ENV_PREFIX, Settings, env_name, secret_names
from authcar.config.validation import validate, validation_warnings

Source = Literal["flag", "env", "yaml", "default"]


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    warnings: tuple[Problem, ...]
    sources: Mapping[str, Source]  # field name -> where its value came from


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    schema: type[Settings] = Settings,
) -> LoadedSettings:
    """Resolve and validate the settings; raises ConfigError listing every problem."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    problems: list[Problem] = []
    warnings: list[Problem] = []
    hints = typing.get_type_hints(schema)
    known = [f.name for f in fields(schema)]

    raw: dict[str, tuple[Source, Any]] = {}  # name -> (source, raw value), later sources win

    config_path = flags.get("config") or environ.get(env_name("config"))
    if config_path:
        for name, value in read_yaml(Path(config_path), known, problems).items():
            raw[name] = ("yaml", value)
    env_values, env_warnings = read_environ(environ, known, secret_names(schema))
    warnings.extend(env_warnings)
    for name, value in env_values.items():
        raw[name] = ("env", value)
    for name, value in read_secret_files(environ, secret_names(schema), problems).items():
        raw[name] = ("env", value)
    for name, value in flags.items():
        if name not in known:
            problems.append(Problem("", f"unknown option {flag_name(name)}"))
            continue
        raw[name] = ("flag", value)

    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    unusable: set[str] = set()
    for name in known:
        if name not in raw:
            sources[name] = "default"
            continue
        source, value = raw[name]
        sources[name] = source
        try:
            values[name] = coerce(value, hints[name])
        except ValueError as exc:
            unusable.add(name)
            entries = exc.entries if isinstance(exc, InvalidEntries) else [str(exc)]
            problems.extend(Problem(name, f"{origin_name(name, source)}: {text}") for text in entries)

    # Semantic checks run even after type errors (with defaults standing in for unusable values), so
    # one run reports everything; checks that depend on the unusable values would only mislead.
    settings = schema(**values)
    problems.extend(p for p in validate(settings) if not p.concerns & unusable)
    if problems:
        raise ConfigError(problems, warnings)
    warnings.extend(validation_warnings(settings))
    return LoadedSettings(settings=settings, warnings=tuple(warnings), sources=sources)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def origin_name(name: str, source: Source) -> str:
    """How a problem names a setting: as it was written where the bad value came from."""
    if source == "flag":
        return flag_name(name)
    if source == "yaml":
        return f"{name} (YAML)"
    return env_name(name)


def read_yaml(path: Path, known: Collection[str], problems: list[Problem]) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(Problem("config", f"{env_name('config')}: cannot read {path}: {exc.strerror}"))
        return {}
    except yaml.YAMLError as exc:
        problems.append(Problem("config", f"{env_name('config')}: {path} is not valid YAML: {exc}"))
        return {}
    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.append(Problem("config", f"{env_name('config')}: {path} must hold a mapping of settings"))
        return {}
    values: dict[str, Any] = {}
    for key, value in document.items():
        name = str(key).replace("-", "_")
        if name not in known or name == "config":
            problems.append(Problem("", f"{path}: unknown setting {key!r}"))
            continue
        values[name] = value
    return values


def is_service_link(name: str, value: str) -> bool:
    """Kubernetes injects <SERVICE>_PORT=tcp://ip:port and friends for a Service named 'authcar'."""
    if name.startswith(ENV_PREFIX + "SERVICE_") or name.startswith(ENV_PREFIX + "PORT_"):
        return True
    return name == env_name("port") and value.startswith("tcp://")


def read_environ(
    environ: Mapping[str, str], known: Collection[str], secrets: Collection[str]
) -> tuple[dict[str, str], list[Problem]]:
    """The AUTHCAR_* variables of known settings, and warnings about the others."""
    values: dict[str, str] = {}
    warnings: list[Problem] = []
    secret_files = {secret_file_name(name) for name in secrets}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in secret_files:
            continue
        if is_service_link(key, value):
            if key == env_name("port"):
                warnings.append(
                    Problem(
                        "port",
                        f"ignoring {key}={value}: it was injected by a Kubernetes Service named 'authcar'; "
                        "set enableServiceLinks: false in the pod spec",
                    )
                )
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in known:
            warnings.append(
                Problem("", f"ignoring unknown environment variable {key}{suggestion(key, known, secrets)}")
            )
            continue
        values[name] = value
    return values, warnings


def secret_file_name(name: str) -> str:
    return env_name(name) + "_FILE"


def suggestion(key: str, known: Collection[str], secrets: Collection[str]) -> str:
    """` (did you mean AUTHCAR_X?)` for a likely misspelling of a setting's variable, else nothing."""
    names = [env_name(name) for name in known] + [secret_file_name(name) for name in secrets]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.85)
    return f" (did you mean {close[0]}?)" if close else ""


def read_secret_files(
    environ: Mapping[str, str], secrets: tuple[str, ...], problems: list[Problem]
) -> dict[str, str]:
    """The values of the secrets set through AUTHCAR_<NAME>_FILE."""
    values: dict[str, str] = {}
    for name in secrets:
        file_var = secret_file_name(name)
        if file_var not in environ:
            continue
        if env_name(name) in environ:
            problems.append(Problem(name, f"{env_name(name)} and {file_var} are both set; use one"))
            continue
        try:
            values[name] = read_secret_file(Path(environ[file_var]))
        except OSError as exc:
            problems.append(Problem(name, f"{file_var}: cannot read {environ[file_var]}: {exc.strerror}"))
    return values
