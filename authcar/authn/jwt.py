"""JWT access-token validation: every check in a fixed order, each failure with its own reason.

Order (cheapest and most hostile-input-proof first):
  1. size cap, then shape: 3 parts (5 parts is JWE: refused), base64url, JSON objects within
     authcar.jsonlimits (nesting, members, strings, number sizes: no RecursionError, no OverflowError)
  2. the verified-token cache: a token seen and verified before costs a hash and a dict lookup
  3. header: `alg` must be allowed for the issuer and never `none`; `crit` is refused (we implement no
     extensions); `jku`, `x5u`, `jwk`, `x5c` are ignored, never fetched; `kid` is only a dict key
  4. issuer: `iss` picks the issuer's configuration, compared exactly (never as a prefix/substring)
  5. key: by `kid` from that issuer's key set (unknown kid: one cool-down-limited refetch); the key's
     type must allow `alg` (no HMAC with public keys, no RSA alg with an EC key, ...)
  6. signature by pyjwt's algorithm for `alg` with that key; then the registered claims (exp, nbf,
     iat with bounded leeway, aud, required claims) with pyjwt's semantics

pyjwt is the signature library (its algorithm objects, which handle RSA, PSS, ECDSA's raw-to-DER
signatures and EdDSA); the parsing and checks around it are ours, so that a gap in one library
version (crit: CVE-2026-32597, issuer substring: CVE-2024-53861) is not a gap in authcar, and so a
first-seen token costs about one signature check (`jwt.decode` would parse the token again with a
per-character alphabet check, several times the cost of the RSA verification itself).

Whatever goes wrong while a token is checked, the answer is a TokenRejected (401): an unexpected
exception is a bug, logged with its traceback at most once per interval, never once per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from jwt.algorithms import get_default_algorithms
from jwt.exceptions import PyJWTError

from authcar.authn.keys import KeySet
from authcar.claims import TokenRejected
from authcar.identity import Identity
from authcar.jose import ASYMMETRIC_ALGORITHMS, DEFAULT_LEEWAY, MAX_LEEWAY
from authcar.jsonlimits import JSONLimits, JSONRejected, decode_object
from authcar.loglimit import LogLimiter

log = logging.getLogger("authcar.authn")

DEFAULT_MAX_TOKEN_BYTES = 16 * 1024
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# pyjwt's implementations of the asymmetric algorithms: the only signature code authcar runs.
SIGNATURE_ALGORITHMS = {
    name: algorithm for name, algorithm in get_default_algorithms().items() if name in ASYMMETRIC_ALGORITHMS
}


@dataclass(frozen=True)
class IssuerPolicy:
    """What one issuer's tokens must satisfy."""

    issuer: str
    audiences: frozenset[str]  # empty: `aud` is not checked (discouraged; check-config warns)
    algorithms: frozenset[str]
    leeway: float = DEFAULT_LEEWAY
    required_claims: tuple[str, ...] = ("exp", "iat", "sub")

    def __post_init__(self) -> None:
        if not self.algorithms <= ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"unsupported algorithms: {sorted(self.algorithms - ASYMMETRIC_ALGORITHMS)}")
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: Mapping[str, Any]
    issuer: str
    kid: str
    expires: float  # exp, unix time
    identity: Identity  # derived once, when the token was verified
    cached: bool = False  # answered from the verified-token cache


# Turns verified claims into the caller's Identity (or raises TokenRejected for unusable claims).
Identify = Callable[[Mapping[str, Any], str], Identity]


class TrustedIssuer(Protocol):
    """What the validator needs of an issuer: its rules, its keys (None until loaded), its claim map."""

    @property
    def policy(self) -> IssuerPolicy: ...

    @property
    def keyset(self) -> KeySet | None: ...

    def identify(self, claims: Mapping[str, Any]) -> Identity: ...


@dataclass(slots=True)
class CacheEntry:
    token: VerifiedToken
    keyset: KeySet
    version: int  # the key set's version when verified: a rotation re-checks the kid
    deadline: float  # exp plus the issuer's leeway: unusable from then on


def b64decode(part: str) -> bytes:
    """Strict, canonical base64url (the caller checked the alphabet): one spelling per value."""
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected("malformed", "the token is not valid base64url") from None
    if len(part) % 4 == 1 or base64.urlsafe_b64encode(data).rstrip(b"=") != part.encode("ascii"):
        raise TokenRejected("malformed", "the token is not valid base64url")
    return data


def time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as seconds, None when absent; a JSON number that is not a time is malformed."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("malformed", f"the token's {name!r} claim is not a number")
    try:
        seconds = float(value)  # an integer beyond a double's range raises here, not later
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise TokenRejected("malformed", f"the token's {name!r} claim is not a usable time")
    return seconds


def check_claims(claims: Mapping[str, Any], policy: IssuerPolicy, now: float) -> float:
    """Registered claims as pyjwt checks them (required, iat, nbf, exp, aud, sub, jti), but with
    times required to be finite JSON numbers; `iss` was matched exactly when it selected the issuer.
    Returns `exp`."""
    for name in dict.fromkeys(("exp", *policy.required_claims)):
        if claims.get(name) is None:
            raise TokenRejected("missing_claim", f"the token lacks the {name!r} claim")
    exp, iat, nbf = (time_claim(claims, name) for name in ("exp", "iat", "nbf"))
    assert exp is not None  # required above
    leeway = policy.leeway
    if iat is not None and iat > now + leeway:
        raise TokenRejected("not_yet_valid", "the token is not valid yet")
    if nbf is not None and nbf > now + leeway:
        raise TokenRejected("not_yet_valid", "the token is not valid yet")
    if exp <= now - leeway:
        raise TokenRejected("expired", "the token has expired")
    if policy.audiences:
        audience = claims.get("aud")
        if not audience:
            raise TokenRejected("missing_claim", "the token lacks the 'aud' claim")
        if isinstance(audience, str):
            audience = [audience]
        if not isinstance(audience, list) or not all(isinstance(a, str) for a in audience):
            raise TokenRejected("wrong_audience", "the token is not meant for this service")
        if policy.audiences.isdisjoint(audience):
            raise TokenRejected("wrong_audience", "the token is not meant for this service")
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise TokenRejected("malformed", f"the token's {name!r} claim is not a string")
    return exp


def json_object(data: bytes, what: str, limits: JSONLimits) -> dict[str, Any]:
    try:
        return decode_object(data, limits)
    except JSONRejected as refused:
        raise TokenRejected(
            "malformed", f"the token {what} is not an acceptable JSON object ({refused.reason})"
        ) from None


# The key of a connection's TokenDigestMemo in its per-connection state, which the server hands
# each request (authcar.extensions.CONNECTION_STATE_EXTENSION) and knows nothing more about.
TOKEN_MEMO_KEY = "authcar.token_memo"  # noqa: S105 - a name, not a secret


class TokenDigestMemo:
    """The last token seen on one client connection, and its cache key.

    Clients on a keep-alive connection send the same token again and again; comparing it with the
    previous one costs a fraction of hashing it (SHA-256 with OpenSSL's per-call set-up was half of
    what a repeated token cost in the running sidecar). A pure memo of token -> hash: validity is
    still decided by the cache entry the key leads to. It holds one token per open connection, as the
    connection's own buffers did.
    """

    __slots__ = ("cache_key", "token")

    def __init__(self) -> None:
        self.token = b""
        self.cache_key = b""


def connection_memo(state: MutableMapping[str, Any] | None) -> TokenDigestMemo | None:
    """The connection's memo, made with its first token; None when the server keeps no state."""
    if state is None:
        return None
    memo = state.get(TOKEN_MEMO_KEY)
    if memo is None:
        memo = state[TOKEN_MEMO_KEY] = TokenDigestMemo()
    return memo


class JWTValidator:
    """Validates access tokens from any of the configured issuers."""

    def __init__(
        self,
        issuers: Mapping[str, TrustedIssuer],
        *,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuers = dict(issuers)
        self.max_token_bytes = max_token_bytes
        self.cache_size = cache_size
        self.clock = clock
        # A header or payload is shorter than the token; the other limits are far beyond real tokens.
        self.json_limits = JSONLimits(max_bytes=max_token_bytes)
        self.cache: OrderedDict[bytes, CacheEntry] = OrderedDict()
        self.quiet = LogLimiter()
        # Copying a started SHA-256 skips OpenSSL's per-call algorithm lookup, a third of the cost of
        # hashing a token in the running sidecar, where caches are cold.
        self.empty_sha256 = hashlib.sha256()

    async def validate(self, token: str) -> VerifiedToken:
        cache_key, cached = self.lookup(token)
        return cached if cached is not None else await self.verify_new(token, cache_key)

    def lookup(self, token: str, memo: TokenDigestMemo | None = None) -> tuple[bytes, VerifiedToken | None]:
        """The cache key, and the cached verification if there is one: the synchronous fast path
        that answers a repeated token without a coroutine (`verify_new` takes the key on a miss).
        `memo` is the connection's TokenDigestMemo, when the server provides one."""
        if len(token) > self.max_token_bytes:
            raise TokenRejected("too_large", "the token is larger than allowed")
        raw = token.encode("latin-1", "replace")
        # Constant time: behind a proxy, one connection carries many callers' tokens.
        if memo is not None and hmac.compare_digest(raw, memo.token):
            cache_key = memo.cache_key
        else:
            digest = self.empty_sha256.copy()
            digest.update(raw)
            cache_key = digest.digest()
            if memo is not None:
                memo.token, memo.cache_key = raw, cache_key
        return cache_key, self.cache_hit(cache_key)

    async def verify_new(self, token: str, cache_key: bytes) -> VerifiedToken:
        """Every check, for a token the cache does not know (see `lookup`). Only TokenRejected
        leaves: an unexpected error denies the token (401), and its traceback is logged at most once
        per interval, so a flood of tokens that hit a bug cannot flood the log."""
        try:
            return await self.checked(token, cache_key)
        except TokenRejected:
            raise
        except Exception:
            if (suppressed := self.quiet("error")) is not None:
                log.exception("token_verification_error", extra={"suppressed": suppressed})
            raise TokenRejected("verification_failed", "the token cannot be verified") from None

    async def checked(self, token: str, cache_key: bytes) -> VerifiedToken:
        parts = token.split(".")
        if len(parts) == 5:
            raise TokenRejected("jwe_not_supported", "encrypted tokens (JWE) are not accepted")
        if len(parts) != 3 or not all(parts) or not COMPACT_JWS.fullmatch(token):
            # Strict base64url: Python's decoder would silently skip stray characters.
            raise TokenRejected("malformed", "the token is not a signed JWT")
        header = json_object(b64decode(parts[0]), "header", self.json_limits)
        payload = json_object(b64decode(parts[1]), "payload", self.json_limits)

        if "crit" in header:
            raise TokenRejected(
                "unsupported_critical_header", "the token requires extensions we do not implement"
            )
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise TokenRejected("alg_not_allowed", "unsigned tokens are not accepted")

        issuer = payload.get("iss")
        selected = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if selected is None:
            raise TokenRejected("wrong_issuer", "the token's issuer is not trusted")
        policy, keyset = selected.policy, selected.keyset
        if keyset is None:
            # The issuer is trusted but its keys have not loaded yet (provider down since start).
            raise TokenRejected("keys_unavailable", "the token cannot be verified now")
        if alg not in policy.algorithms:
            raise TokenRejected("alg_not_allowed", f"algorithm {alg[:20]!r} is not accepted")

        kid = header.get("kid", "")
        if not isinstance(kid, str) or len(kid) > 256:
            raise TokenRejected("malformed", "the token's key id is invalid")
        key = await keyset.find(kid)
        if key is None:
            raise TokenRejected("unknown_key", "the token was signed with a key the issuer does not publish")
        if alg not in key.algorithms:
            # Algorithm confusion: e.g. HS256 "signed" with the RSA public key, or RS256 on an EC key.
            raise TokenRejected("alg_key_mismatch", "the token's algorithm does not match its key")

        expires = self.verify(parts, payload, key.key, alg, policy)
        verified = VerifiedToken(
            claims=payload,
            issuer=policy.issuer,
            kid=kid,
            expires=expires,
            identity=selected.identify(payload),
        )
        self.remember(cache_key, verified, keyset)
        return verified

    def verify(
        self, parts: list[str], payload: dict[str, Any], key: Any, alg: str, policy: IssuerPolicy
    ) -> float:
        """The signature (pyjwt's algorithm for `alg`, with the issuer's key), then the registered
        claims, with pyjwt's semantics; returns `exp`. The header and payload were parsed and checked
        above, so `jwt.decode` would only parse them again, slowly (a per-character alphabet check)."""
        signature = b64decode(parts[2])
        algorithm = SIGNATURE_ALGORITHMS.get(alg)
        if algorithm is None:
            raise TokenRejected("alg_not_allowed", f"algorithm {alg[:20]!r} is not accepted")
        try:
            valid = algorithm.verify(f"{parts[0]}.{parts[1]}".encode("ascii"), key, signature)
        except (ValueError, TypeError, PyJWTError):
            valid = False  # e.g. a signature of the wrong length for the key
        if not valid:
            raise TokenRejected("bad_signature", "the token's signature is invalid")
        return check_claims(payload, policy, self.clock())

    def cache_hit(self, cache_key: bytes) -> VerifiedToken | None:
        entry = self.cache.get(cache_key)
        if entry is None:
            return None
        token = entry.token
        if self.clock() >= entry.deadline:
            del self.cache[cache_key]
            return None
        if entry.version != entry.keyset.version:
            # Keys rotated since: valid only while its key is still published.
            if entry.keyset.get(token.kid) is None:
                del self.cache[cache_key]
                return None
            entry.version = entry.keyset.version
        return token

    def remember(self, cache_key: bytes, token: VerifiedToken, keyset: KeySet) -> None:
        deadline = token.expires + self.issuers[token.issuer].policy.leeway
        self.cache[cache_key] = CacheEntry(replace(token, cached=True), keyset, keyset.version, deadline)
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)  # oldest first: bounded memory whatever the traffic
