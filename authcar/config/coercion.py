"""Raw values (environment text, YAML values, flags) to the types Settings declares."""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from authcar.config.settings import IssuerSettings

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


class InvalidEntries(ValueError):
    """A list value with several bad entries: each is its own problem."""

    def __init__(self, entries: list[str]) -> None:
        super().__init__("; ".join(entries))
        self.entries = entries


def read_secret_file(path: Path) -> str:
    """A secret from a `*_FILE` path; OSError if unreadable."""
    # Secrets mounted from Kubernetes often end with a newline the owner never meant.
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def coerce(value: Any, hint: Any) -> Any:
    """Turn a raw env/YAML/flag value into the annotated type, or raise ValueError with a reason."""
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        return coerce(value, inner[0])
    if origin is Literal:
        choices = get_args(hint)
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text
    if origin is tuple and get_args(hint)[0] is IssuerSettings:
        return coerce_issuers(value)
    if origin is tuple:
        if isinstance(value, str):
            items = [part.strip() for part in value.split(",")]
        elif isinstance(value, list | tuple):
            items = [str(part).strip() for part in value]
        else:
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(item for item in items if item)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise ValueError(f"{value!r} is not a boolean (true/false)")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
    if hint is float:
        try:
            return float(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    if hint is Path:
        return Path(str(value).strip())
    if hint is str:
        if isinstance(value, dict | list):
            raise ValueError(f"expected text, got {type(value).__name__}")
        return str(value).strip()
    raise ValueError(f"unsupported setting type {hint!r}")  # a bug in the schema, not in the input


def coerce_issuers(value: Any) -> tuple[IssuerSettings, ...]:
    """A list of issuer mappings (YAML, or YAML/JSON text in the environment variable)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError("not a YAML or JSON list of issuer mappings") from None
    if not isinstance(value, list):
        raise ValueError("expected a list of issuer mappings")
    hints = typing.get_type_hints(IssuerSettings)
    known = {f.name for f in fields(IssuerSettings)}
    issuers: list[IssuerSettings] = []
    problems: list[str] = []
    for index, entry in enumerate(value):
        where = f"issuers[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with at least issuer_url")
            continue
        values: dict[str, Any] = {}
        for key, raw in entry.items():
            name = str(key).replace("-", "_")
            if name == "client_secret_file":
                try:
                    values["client_secret"] = read_secret_file(Path(str(raw)))
                except OSError as exc:
                    problems.append(f"{where}.client_secret_file: cannot read {raw}: {exc.strerror}")
                continue
            if name not in known:
                problems.append(f"{where}: unknown issuer setting {key!r}")
                continue
            try:
                values[name] = coerce(raw, hints[name])
            except ValueError as exc:
                problems.append(f"{where}.{name}: {exc}")
        if not values.get("issuer_url"):
            problems.append(f"{where}: issuer_url is required")
            continue
        issuers.append(IssuerSettings(**values))
    if problems:
        raise InvalidEntries(problems)
    return tuple(issuers)
