"""The rate limit (AUTHCAR_RATE_LIMIT): one GCRA step in the shared store per request, keyed by who
is calling, right after authentication (docs/decisions.md, "Rate limits").

Keys, each bounded whatever a client sends (the store puts them in its own rate namespace):

    sub:<32 hex>        an identified caller: SHA-256 of issuer and subject, so neither a long nor an
                        odd subject becomes part of a key, and one subject at two issuers is two callers
    ip:<IPv4>           an anonymous caller, by the real client address (trusted proxies decide it)
    ip6:<IPv6 /64>      IPv6 by its /64: one host, one home line or one VM is given a whole /64
                        (RFC 6177, RFC 7934), so a per-address limit would give it 2^64 budgets
    addr:none           an anonymous caller without an address (a Unix socket)

A refused request gets 429 `rate_limited` with Retry-After (whole seconds, rounded up) and the
`RateLimit-Policy` / `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-10; it never reaches
the application. Allowed requests carry no RateLimit fields (the application's answer is passed on
as it is). When the store fails the request passes: logged at most once per interval, counted in
`authcar_store_fail_open_total{use="rate_limit"}`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math

from authcar.errors import RateLimited
from authcar.identity import Identity
from authcar.loglimit import LogLimiter
from authcar.observe import Metrics
from authcar.rate_spec import RateSpec
from authcar.store import RateDecision, Store, StoreUnavailable
from authcar.types import Headers

log = logging.getLogger("authcar.rate_limit")

# The one policy's name in the RateLimit fields (an sf-string).
POLICY_NAME = "default"
# 128 bits of the digest: two subjects share a budget only by a collision no one can aim for.
SUBJECT_DIGEST_BYTES = 16
IPV6_PREFIX = 64


def limit_key(identity: Identity, client: str) -> str:
    """The store key whose budget this request spends."""
    if not identity.is_anonymous:
        # The issuer's length first, so no choice of issuer and subject reads as another pair;
        # surrogatepass: a JSON claim may hold a lone surrogate, still one subject, not an error.
        issuer = identity.issuer
        text = f"{len(issuer)}:{issuer}{identity.subject}".encode("utf-8", "surrogatepass")
        return "sub:" + hashlib.sha256(text).digest()[:SUBJECT_DIGEST_BYTES].hex()
    return address_key(client)


def address_key(client: str) -> str:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        # The gate gives only IP addresses (or "" without one); anything else is hashed, never kept.
        if not client:
            return "addr:none"
        return "addr:" + hashlib.sha256(client.encode("utf-8", "surrogatepass")).digest()[:16].hex()
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None:
            # The network's first address, written canonically (cheaper than building an IPv6Network).
            prefix = ipaddress.IPv6Address(int(address) >> IPV6_PREFIX << IPV6_PREFIX)
            return f"ip6:{prefix}/{IPV6_PREFIX}"
        address = mapped  # ::ffff:a.b.c.d is the IPv4 client of a dual-stack socket
    return f"ip:{address}"


def whole_seconds(seconds: float) -> int:
    """Seconds as the headers say them: whole, rounded up, at least 1 (a refusal is never "now")."""
    return max(1, math.ceil(seconds))


class RateLimiter:
    """The stage: `admit` returns for a request within the limit (or when the store failed) and
    raises RateLimited for one over it."""

    def __init__(self, spec: RateSpec, store: Store, metrics: Metrics) -> None:
        self.rate = spec.rate
        self.burst = spec.burst
        self.store = store
        # The policy is what the operator configured: `count` per `period` seconds.
        self.policy_field = (b"ratelimit-policy", f'"{POLICY_NAME}";q={spec.count};w={spec.period}'.encode())
        # The store call itself is timed by the store (authcar_store_seconds{operation="rate limit"}).
        self.fail_open = metrics.store_fail_open.labels(use="rate_limit")
        self.quiet = LogLimiter()

    async def admit(self, identity: Identity, client: str) -> None:
        try:
            decision = await self.store.rate_limit(
                limit_key(identity, client), rate=self.rate, burst=self.burst
            )
        except StoreUnavailable as error:
            self.fail_open.inc()
            left_out = self.quiet("store_unavailable")
            if left_out is not None:
                log.warning("rate_limit_fail_open", extra={"error": str(error), "suppressed": left_out})
            return
        if not decision.allowed:
            retry_after = whole_seconds(decision.retry_after)
            raise RateLimited(retry_after, self.fields(decision, retry_after))

    def fields(self, decision: RateDecision, reset: int) -> Headers:
        """RateLimit-Policy and RateLimit: `r` the requests that would pass now, `t` the seconds
        until the next one would."""
        limit = f'"{POLICY_NAME}";r={decision.remaining};t={reset}'.encode()
        return [self.policy_field, (b"ratelimit", limit)]
