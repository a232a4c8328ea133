"""AUTHCAR_REDIS_URL, parsed into where and how to connect and redacted for anything that prints it,
and the rules for the settings around it. Shared vocabulary: the configuration checks settings with
it and the Redis store connects with it, and it imports nothing of authcar.

    redis://[user:pass@]host[:port][/db]                     one server (port 6379)
    rediss://[user:pass@]host[:port][/db]                    the same over TLS
    redis+sentinel://[user:pass@]host[:port][,host[:port]…]/<master>[/db]   Sentinels (port 26379)
    redis+cluster://[user:pass@]host[:port][,host[:port]…]   any of a Cluster's nodes (port 6379)

The credentials are the data nodes' (the master and replicas, or the cluster nodes); Sentinels are
asked without credentials. Query strings are refused rather than half-supported: every option has its
own AUTHCAR_REDIS_* setting. Every error message names the URL with its password replaced by `***`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

Topology = Literal["standalone", "sentinel", "cluster"]

SCHEMES: dict[str, tuple[Topology, bool, int]] = {  # scheme -> (topology, TLS, default port)
    "redis": ("standalone", False, 6379),
    "rediss": ("standalone", True, 6379),
    "redis+sentinel": ("sentinel", False, 26379),
    "redis+cluster": ("cluster", False, 6379),
}
DEFAULT_KEY_PREFIX = "authcar:"
DEFAULT_TIMEOUT = 0.25
MAX_TIMEOUT = 60.0
MAX_KEY_PREFIX_BYTES = 64
_KEY_PREFIX = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no space: it starts every key
# Redis's default `databases` is 16; a server configured with more accepts higher numbers.
MAX_DB = 1_000_000
_HOST = re.compile(r"\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+)")
# A Sentinel master name as `sentinel monitor` accepts it in practice.
_MASTER = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed AUTHCAR_REDIS_URL. `str()` and `repr()` never show the password."""

    topology: Topology
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    master: str | None = None  # the Sentinel master name

    def __str__(self) -> str:
        scheme = next(name for name, (kind, tls, _) in SCHEMES.items() if (kind, tls) == self.key())
        auth = ""
        if self.username or self.password is not None:
            auth = f"{self.username or ''}{':***' if self.password is not None else ''}@"
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.nodes)
        path = f"/{self.master}" if self.master else ""
        if self.db:
            path += f"/{self.db}"
        return f"{scheme}://{auth}{hosts}{path}"

    def key(self) -> tuple[Topology, bool]:
        return self.topology, self.tls


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, for messages about a URL that may not parse."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    # The last '@' anywhere: a password with an unencoded '/', '?' or '#' must not show either.
    userinfo, at, tail = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    if "/" in user or "?" in user or "#" in user:
        user = "***"
    return f"{scheme}://{user}{':***' if colon else ''}@{tail}"


def parse_redis_url(url: str) -> RedisTarget:
    """Parse, or raise ValueError with a message that names the (redacted) URL and what is wrong."""
    try:
        return _parse(url)
    except ValueError as error:
        raise ValueError(f"AUTHCAR_REDIS_URL {redact_url(url)!r}: {error}") from None


def _parse(url: str) -> RedisTarget:
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("contains whitespace or control characters")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"the scheme must be one of {', '.join(f'{s}://' for s in SCHEMES)}")
    topology, tls, default_port = SCHEMES[scheme.lower()]
    end_of_authority = min((rest.find(ch) for ch in "/?#" if ch in rest), default=len(rest))
    if rest.count("@") > 1 or "@" in rest[end_of_authority:]:
        raise ValueError("the credentials hold an unencoded '@', '/', '?' or '#': percent-encode them")
    if "?" in rest or "#" in rest:
        raise ValueError("query strings and fragments are not supported (use the AUTHCAR_REDIS_* settings)")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(part, default_port) for part in hosts.split(","))
    if topology == "standalone" and len(nodes) > 1:
        raise ValueError(
            f"{scheme}:// names one server; several hosts need redis+sentinel:// or redis+cluster://"
        )
    parts = path.split("/") if path else []
    master = None
    if topology == "sentinel":
        if not parts or not parts[0]:
            raise ValueError(
                "redis+sentinel:// needs the master's name: redis+sentinel://host:26379/<master>"
            )
        master = unquote(parts.pop(0))
        if not _MASTER.fullmatch(master):
            raise ValueError(f"the Sentinel master name {master!r} must be letters, digits, '.', '_' or '-'")
    if parts == [""]:  # a trailing slash
        parts = []
    if len(parts) > 1:
        raise ValueError("the path is /<db>" + (" after the master name" if master else ""))
    db = _db(parts[0]) if parts else 0
    if topology == "cluster" and db:
        raise ValueError("a Redis Cluster has only database 0")
    return RedisTarget(topology, tls, nodes, username, password, db, master)


def _node(text: str, default_port: int) -> tuple[str, int]:
    host, port = text, default_port
    if text.startswith("["):
        host, bracket, after = text.partition("]")
        host += bracket
        if after:
            if not after.startswith(":"):
                raise ValueError(f"bad host {text!r}")
            port = _port(after[1:], text)
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        port = _port(port_text, text)
    match = _HOST.fullmatch(host)
    if not match:
        raise ValueError(f"bad or missing host {text!r}" if text else "a host is missing")
    return match.group("ipv6") or match.group("name"), port


def _port(text: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {where!r}")
    return int(text)


def _db(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_DB:
        raise ValueError(f"the database must be a number from 0, not {text!r}")
    return int(text)


def check_key_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _KEY_PREFIX.fullmatch(prefix):
        raise ValueError(
            f"must be 1 to {MAX_KEY_PREFIX_BYTES} printable ASCII characters, no spaces, not {prefix!r:.80}"
        )


def check_timeout(seconds: float) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_TIMEOUT:
        raise ValueError(f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {seconds!r}")
