"""Who is calling: the one value the authentication stages produce and the later stages consume."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

IdentitySource = Literal["anonymous", "jwt", "introspection", "session", "client_certificate"]


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    issuer: str = ""
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: IdentitySource = "anonymous"

    @property
    def is_anonymous(self) -> bool:
        return self.source == "anonymous"


ANONYMOUS = Identity(subject="")
