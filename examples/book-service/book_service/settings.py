"""Configuration: one frozen object, read from BOOKS_* environment variables and validated once."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

DEFAULT_JWKS_URL = "http://127.0.0.1:4180/.well-known/authcar/jwks.json"
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(Exception):
    """Invalid configuration; the message lists every problem at once."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    # ":memory:" keeps the data for the life of the process: right for the demo and tests, and it
    # needs no writable filesystem. Set a file path to keep data across restarts.
    db: str = ":memory:"
    jwks_url: str = DEFAULT_JWKS_URL
    assertion_audience: str = "upstream"
    # Seconds before an unknown kid may trigger another JWKS fetch (bounds a flood of random kids).
    jwks_cooldown: float = 5.0
    # Seconds after which known keys are refetched, so a key the sidecar dropped stops working.
    jwks_max_age: float = 300.0
    # Seconds of clock skew tolerated on exp and iat; the sidecar runs on the same host.
    assertion_leeway: float = 5.0
    admin_role: str = "admin"
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read the BOOKS_* variables; raise SettingsError naming every bad one."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for field in fields(cls):
            name = env_name(field.name)
            raw = environ.get(name)
            if raw is None:
                continue
            parse = PARSERS.get(field.name, str)
            try:
                values[field.name] = parse(raw.strip())
            except ValueError as error:
                problems.append(f"{name}={raw!r}: {error}")
        settings = cls(**values)
        problems.extend(settings.problems())
        if problems:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems))
        return settings

    def problems(self) -> list[str]:
        found: list[str] = []
        if not is_loopback(self.host):
            # Identity is only ever asserted by the sidecar in front of us on the same host.
            found.append(f"BOOKS_HOST={self.host!r}: the service listens on a loopback address only")
        if not 0 <= self.port <= 65535:
            found.append(f"BOOKS_PORT={self.port}: not a port number")
        url = urlsplit(self.jwks_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            found.append(f"BOOKS_AUTHCAR_JWKS_URL={self.jwks_url!r}: not an http(s) URL")
        if not self.assertion_audience:
            found.append("BOOKS_ASSERTION_AUDIENCE: must not be empty")
        if not self.admin_role:
            found.append("BOOKS_ADMIN_ROLE: must not be empty")
        if not self.db:
            found.append("BOOKS_DB: must not be empty (use :memory: for an in-memory database)")
        if self.jwks_cooldown < 0 or self.jwks_max_age <= 0:
            found.append("BOOKS_JWKS_COOLDOWN must be >= 0 and BOOKS_JWKS_MAX_AGE > 0")
        if not 0 <= self.assertion_leeway <= 60:
            found.append(f"BOOKS_ASSERTION_LEEWAY={self.assertion_leeway}: must be between 0 and 60 seconds")
        if self.log_level not in LOG_LEVELS:
            found.append(f"BOOKS_LOG_LEVEL={self.log_level!r}: one of {', '.join(LOG_LEVELS)}")
        return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_seconds(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number of seconds")
    return value


def env_name(field_name: str) -> str:
    """The variable that sets a field: BOOKS_<FIELD>, except where the name says whose URL it is."""
    return ENV_NAME_OVERRIDES.get(field_name, f"BOOKS_{field_name.upper()}")


ENV_NAME_OVERRIDES: Mapping[str, str] = MappingProxyType({"jwks_url": "BOOKS_AUTHCAR_JWKS_URL"})
PARSERS: Mapping[str, Callable[[str], Any]] = MappingProxyType(
    {
        "port": int,
        "jwks_cooldown": parse_seconds,
        "jwks_max_age": parse_seconds,
        "assertion_leeway": parse_seconds,
        "log_level": str.lower,
    }
)
