"""Opaque access tokens: asked about at the provider by RFC 7662 introspection, answers shared via the Store.

Order of work for one token:
  1. size cap, then RFC 6750 `b64token` syntax: nothing else is ever sent to the provider
  2. the store, by `introspect:<sha256 hex of the token>` (never the token): a positive entry holds the
     provider's claims and is re-checked (exp, iss, aud, identity) on every hit; a negative entry holds
     the reason the token was refused
  3. the provider, once per token however many requests carry it at the same time (single flight), and
     at most `max_concurrency` calls at once; waiting for a turn counts against `timeout`

What the provider says is checked, not just trusted: `active` must be JSON `true`; `exp`, `nbf`, `iss`,
`aud` and `token_type` are checked when present. `aud` absent is accepted: RFC 7662 makes every claim
but `active` optional and several providers leave `aud` out; the provider only answers clients it has
authenticated, so an `active: true` is its word that the token is live. Deployments that need strict
audience binding should use JWT access tokens (whose `aud` is signed and required when configured).

Caching trades revocation latency for provider load: a token revoked at the provider stays accepted
until its positive entry ends (at most `cache_ttl`, never past the token's `exp`); `cache_ttl=0`
asks the provider on every request. Refusals (inactive, expired, wrong issuer...) are cached for
`negative_ttl`, so a flood of one bad token costs one call per `negative_ttl`. Provider failures
(timeout, refused connection, 5xx, 401, an answer that is not a JSON object within
authcar.jsonlimits, or larger than 64 KiB, or compressed) are never cached and answered 401
`introspection_unavailable`, logged at most once per interval; a store that fails only costs its
cache: the provider is asked directly, never fail open.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote_plus

import httpx

from authcar.authn.fetch import PLAIN_ANSWER, UnreadableAnswer, read_bounded
from authcar.authn.jwt import (
    DEFAULT_MAX_TOKEN_BYTES,
    Identify,
    TokenRejected,
    VerifiedToken,
    time_claim,
)
from authcar.jose import DEFAULT_LEEWAY, MAX_LEEWAY
from authcar.jsonlimits import JSONLimits, JSONRejected, decode_object
from authcar.loglimit import LogLimiter
from authcar.store import MAX_TTL, Store, StoreUnavailable

log = logging.getLogger("authcar.introspection")

ClientAuth = Literal["client_secret_basic", "client_secret_post"]
# A provider answer larger than this is a provider failure, never parsed.
MAX_ANSWER_BYTES = 64 * 1024
MAX_ERROR_BYTES = 4096  # of a refusal's body: only its OAuth error code is read
ANSWER_LIMITS = JSONLimits(max_bytes=MAX_ANSWER_BYTES)
# A stored entry wraps accepted claims one level deeper, re-encoded (escapes and numbers may grow).
ENTRY_LIMITS = JSONLimits(
    max_bytes=8 * MAX_ANSWER_BYTES,
    max_depth=ANSWER_LIMITS.max_depth + 1,
    max_string=6 * ANSWER_LIMITS.max_string,
)
CACHE_PREFIX = "introspect:"
ENTRY_VERSION = 1  # a store shared by replicas of different versions treats other versions as misses
# RFC 6750 section 2.1: the only characters a bearer token can hold.
B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
DESCRIPTION = re.compile(r"[\x20-\x7e]{1,200}")
ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
STORE_TIMEOUT = 1.0  # a store slower than this counts as down: the provider is asked instead

UNAVAILABLE = "introspection_unavailable"
BUSY = "introspection_busy"
# Client-facing descriptions: nothing about the provider beyond "cannot be verified now".
DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "too_large": "the token is larger than allowed",
        "malformed": "the token is not a valid bearer token",
        "inactive": "the token is not active",
        "expired": "the token has expired",
        "not_yet_valid": "the token is not valid yet",
        "wrong_issuer": "the token's issuer is not trusted",
        "wrong_audience": "the token is not meant for this service",
        "wrong_token_type": "the token is not an access token",
        UNAVAILABLE: "the token cannot be verified now",
        BUSY: "the token cannot be verified now",
    }
)
# Providers name the kind of token; anything but an access token (refresh, ID, DPoP-bound) is refused.
ACCESS_TOKEN_USES = frozenset({"access_token", "access"})  # Ory Hydra, AWS Cognito

Outcome = VerifiedToken | TokenRejected


def rejected(reason: str) -> TokenRejected:
    return TokenRejected(reason, DESCRIPTIONS[reason])


class ProviderFailure(Exception):
    """The provider did not give a usable answer; the message is for logs only."""


def client_auth_method(advertised: Sequence[str]) -> ClientAuth:
    """How to authenticate to the introspection endpoint, from what the provider advertises."""
    if not advertised or "client_secret_basic" in advertised:
        return "client_secret_basic"  # RFC 6749 section 2.3.1: every server must support it
    if "client_secret_post" in advertised:
        return "client_secret_post"
    raise ValueError(
        "the provider's introspection endpoint accepts none of the client authentication methods "
        f"authcar supports (client_secret_basic, client_secret_post); it advertises {list(advertised)[:10]}"
    )


def basic_authorization(client_id: str, client_secret: str) -> str:
    # RFC 6749 section 2.3.1: form-urlencode both before joining, so a ':' in the id survives.
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def json_object(data: bytes, limits: JSONLimits = ANSWER_LIMITS) -> dict[str, Any] | None:
    """The JSON object in `data`, or None for anything else (see authcar.jsonlimits: bounded, strict,
    no NaN, no repeated names)."""
    try:
        return decode_object(data, limits)
    except JSONRejected:
        return None


def number_claim(claims: Mapping[str, Any], name: str) -> float | None:
    try:
        return time_claim(claims, name)
    except TokenRejected:
        raise ProviderFailure(f"the answer's {name!r} is not a number") from None


def encode_claims(claims: Mapping[str, Any]) -> bytes:
    return json.dumps({"v": ENTRY_VERSION, "claims": claims}, separators=(",", ":")).encode()


def encode_rejection(refusal: TokenRejected) -> bytes:
    entry = {"v": ENTRY_VERSION, "reason": refusal.reason, "description": refusal.description}
    return json.dumps(entry, separators=(",", ":")).encode()


def decode_entry(raw: bytes) -> dict[str, Any] | TokenRejected | None:
    """A stored entry: the claims of an active token, a refusal, or None when it is not ours to read."""
    entry = json_object(raw, ENTRY_LIMITS)
    if entry is None or entry.get("v") != ENTRY_VERSION:
        return None
    claims = entry.get("claims")
    if isinstance(claims, dict):
        return claims
    reason, description = entry.get("reason"), entry.get("description")
    if (
        isinstance(reason, str)
        and isinstance(description, str)
        and REASON.fullmatch(reason)
        and DESCRIPTION.fullmatch(description)
    ):
        return TokenRejected(reason, description)
    return None


class Introspector:
    """Verifies opaque access tokens of one issuer at its RFC 7662 introspection endpoint."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        store: Store,
        endpoint: str,
        issuer: str,
        client_id: str,
        client_secret: str,
        auth_methods: Sequence[str],
        identify: Identify,
        audiences: frozenset[str] = frozenset(),
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        cache_ttl: float = 300.0,
        negative_ttl: float = 10.0,
        max_concurrency: int = 16,
        timeout: float = 5.0,
        leeway: float = DEFAULT_LEEWAY,
        on_call: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not endpoint.startswith(("https://", "http://")):
            raise ValueError("the introspection endpoint must be an http(s) URL")
        if not issuer or not client_id:
            raise ValueError("introspection needs the issuer and a client id")
        if not 0 <= cache_ttl <= MAX_TTL or not 0 <= negative_ttl <= MAX_TTL:
            raise ValueError(f"cache TTLs must be between 0 and {MAX_TTL:g} seconds")
        if max_concurrency < 1 or max_token_bytes < 1 or not timeout > 0:
            raise ValueError("max_concurrency, max_token_bytes and timeout must be positive")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        self.http = http
        self.store = store
        self.endpoint = endpoint
        self.issuer = issuer
        self.identify = identify
        self.audiences = audiences
        self.max_token_bytes = max_token_bytes
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.timeout = timeout
        # The store's own timeouts come first; this bound only keeps a hung one from holding requests.
        self.store_timeout = min(timeout, STORE_TIMEOUT)
        self.leeway = leeway
        self.on_call = on_call or (lambda result, seconds: None)
        self.clock = clock
        self.auth_method = client_auth_method(auth_methods)
        self.headers = dict(PLAIN_ANSWER)
        self.form = {"token_type_hint": "access_token"}
        if self.auth_method == "client_secret_basic":
            self.headers["Authorization"] = basic_authorization(client_id, client_secret)
        else:
            self.form.update(client_id=client_id, client_secret=client_secret)
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self.inflight: dict[str, asyncio.Task[Outcome]] = {}  # by cache key: one provider call per token
        self.quiet = LogLimiter()

    async def verify(self, token: str) -> VerifiedToken:
        """The verified token, or TokenRejected with a stable reason."""
        if len(token) > self.max_token_bytes:
            raise rejected("too_large")
        if not B64TOKEN.fullmatch(token):
            raise rejected("malformed")
        key = CACHE_PREFIX + hashlib.sha256(token.encode("ascii")).hexdigest()
        outcome, readable = None, True
        if key not in self.inflight:
            outcome, readable = await self.lookup(key)
        if outcome is None:
            task = self.inflight.get(key)  # another request may have started one while we read
            if task is None:
                task = asyncio.create_task(self.resolve(token, key, readable), name="authcar-introspection")
                self.inflight[key] = task
                task.add_done_callback(lambda done: self.finished(key, done))
            outcome = await self.wait_for(task)
        if isinstance(outcome, TokenRejected):
            raise TokenRejected(outcome.reason, outcome.description)  # a fresh one per request
        return outcome

    async def wait_for(self, task: asyncio.Task[Outcome]) -> Outcome:
        try:
            # Shielded: a client that goes away does not cancel the answer others wait for.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                return rejected(UNAVAILABLE)  # the shared call was cancelled (close()), not this request
            raise

    def finished(self, key: str, task: asyncio.Task[Outcome]) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved, even if every waiter went away

    async def close(self) -> None:
        """Cancel the provider calls under way (shutdown)."""
        tasks = list(self.inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def resolve(self, token: str, key: str, reread: bool) -> Outcome:
        """The single-flight part: the store once more if it answered (a request that finished while we
        read may just have filled it), then the provider. Any unexpected error denies."""
        try:
            if reread:
                cached, _ = await self.lookup(key)
                if cached is not None:
                    return cached
            return await self.introspect(token, key)
        except Exception:
            log.exception("introspection_error")
            return rejected(UNAVAILABLE)

    # -- the store

    async def lookup(self, key: str) -> tuple[Outcome | None, bool]:
        """The cached answer (None: absent or unusable), and whether the store answered at all."""
        try:
            async with asyncio.timeout(self.store_timeout):
                raw = await self.store.get(key)
        except (StoreUnavailable, TimeoutError) as exc:
            self.store_failed("read", exc)
            return None, False
        return (None if raw is None else self.cached_outcome(raw)), True

    def cached_outcome(self, raw: bytes) -> Outcome | None:
        entry = decode_entry(raw)
        if isinstance(entry, TokenRejected):
            return entry
        if entry is not None:
            try:
                return self.accept(entry, cached=True)
            except TokenRejected as refusal:
                return refusal  # e.g. expired since it was stored: no need to ask the provider
            except ProviderFailure:
                pass  # not what we write: corrupt
            except Exception:
                log.exception("introspection_error")
                return None  # the provider path has its own guard
        if (suppressed := self.quiet("corrupt")) is not None:
            log.warning(
                "introspection_cache_corrupt", extra={"store": self.store.name, "suppressed": suppressed}
            )
        return None

    async def remember(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            return
        try:
            async with asyncio.timeout(self.store_timeout):
                await self.store.set(key, value, min(ttl, MAX_TTL))
        except (StoreUnavailable, TimeoutError) as exc:
            self.store_failed("write", exc)

    def store_failed(self, operation: str, exc: Exception) -> None:
        if (suppressed := self.quiet("store")) is not None:
            log.warning(
                "introspection_cache_unavailable",
                extra={
                    "store": self.store.name,
                    "operation": operation,
                    "error": f"{type(exc).__name__}: {exc}"[:200],
                    "suppressed": suppressed,
                    "detail": "asking the provider directly",
                },
            )

    # -- the provider

    async def introspect(self, token: str, key: str) -> Outcome:
        answer = await self.call_provider(token)
        if isinstance(answer, TokenRejected):
            return answer  # provider failure or busy: never cached
        now = self.clock()
        try:
            if answer.get("active") is not True:
                raise rejected("inactive")  # also "true" or 1: RFC 7662 says a JSON boolean
            claims = {name: value for name, value in answer.items() if name != "active"}
            verified = self.accept(claims, cached=False, now=now)
        except TokenRejected as refusal:
            await self.remember(key, encode_rejection(refusal), self.negative_ttl_for(answer, now))
            return refusal
        except ProviderFailure as failure:
            self.provider_failed(str(failure))
            return rejected(UNAVAILABLE)
        # Never cached past exp: the cache must not outlive the token.
        await self.remember(key, encode_claims(claims), min(self.cache_ttl, verified.expires - now))
        return verified

    def negative_ttl_for(self, answer: Mapping[str, Any], now: float) -> float:
        nbf = answer.get("nbf")
        if isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf > now:
            return min(self.negative_ttl, nbf - self.leeway - now)  # refused only until it starts
        return self.negative_ttl

    async def call_provider(self, token: str) -> dict[str, Any] | TokenRejected:
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self.semaphore.acquire()
        except TimeoutError:
            if (suppressed := self.quiet("busy")) is not None:
                log.warning("introspection_busy", extra={"timeout": self.timeout, "suppressed": suppressed})
            return rejected(BUSY)
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                answer = await self.post(token)
        except TimeoutError:
            failure = f"no answer within {self.timeout:g} s"
        except ProviderFailure as exc:
            failure = str(exc)
        else:
            result = "active" if answer.get("active") is True else "inactive"
            self.on_call(result, time.perf_counter() - started)
            return answer
        finally:
            self.semaphore.release()
        self.on_call("error", time.perf_counter() - started)
        self.provider_failed(failure)
        return rejected(UNAVAILABLE)

    async def post(self, token: str) -> dict[str, Any]:
        form = {"token": token, **self.form}
        try:
            async with self.http.stream("POST", self.endpoint, data=form, headers=self.headers) as response:
                if response.status_code != 200:
                    try:
                        refusal: bytes | None = await read_bounded(response, MAX_ERROR_BYTES)
                    except UnreadableAnswer:
                        refusal = None
                    raise ProviderFailure(status_failure(response.status_code, refusal))
                body = await read_bounded(response, MAX_ANSWER_BYTES)
        except httpx.HTTPError as exc:
            raise ProviderFailure(f"cannot reach the provider: {type(exc).__name__}") from None
        except UnreadableAnswer as exc:
            raise ProviderFailure(str(exc)) from None
        try:
            return decode_object(body, ANSWER_LIMITS)
        except JSONRejected as exc:
            raise ProviderFailure(f"the answer is not an acceptable JSON object ({exc.reason})") from None

    def provider_failed(self, failure: str) -> None:
        if (suppressed := self.quiet("provider")) is not None:
            log.error(
                "introspection_failed",
                extra={"endpoint": self.endpoint, "error": failure, "suppressed": suppressed},
            )

    # -- the answer

    def accept(self, claims: dict[str, Any], *, cached: bool, now: float | None = None) -> VerifiedToken:
        """Check an active token's claims (from the provider or the store) and derive its identity."""
        now = self.clock() if now is None else now
        exp = number_claim(claims, "exp")
        nbf = number_claim(claims, "nbf")
        if exp is not None and now >= exp + self.leeway:
            raise rejected("expired")
        if nbf is not None and now + self.leeway < nbf:
            raise rejected("not_yet_valid")
        issuer = claims.get("iss")
        if issuer is not None and issuer != self.issuer:
            raise rejected("wrong_issuer")  # exact comparison, never a prefix
        if not is_access_token(claims):
            raise rejected("wrong_token_type")
        if self.audiences and claims.get("aud") is not None and not self.audience_matches(claims["aud"]):
            raise rejected("wrong_audience")
        return VerifiedToken(
            claims=claims,
            issuer=self.issuer,
            kid="",
            expires=math.inf if exp is None else exp,
            identity=self.identify(claims, self.issuer),
            cached=cached,
        )

    def audience_matches(self, audience: Any) -> bool:
        if isinstance(audience, str):
            return audience in self.audiences
        return isinstance(audience, list) and any(
            isinstance(value, str) and value in self.audiences for value in audience
        )


def is_access_token(claims: Mapping[str, Any]) -> bool:
    """False when the provider names another kind of token: a refresh token is no access token."""
    token_type, token_use = claims.get("token_type"), claims.get("token_use")
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
        return False
    return token_use is None or token_use in ACCESS_TOKEN_USES


def status_failure(status: int, body: bytes | None) -> str:
    """What a non-200 answer means, for the logs: the provider's OAuth error code, never its prose."""
    answer = json_object(body or b"") or {}
    error = answer.get("error")
    code = f" {error}" if isinstance(error, str) and ERROR_CODE.fullmatch(error) else ""
    if status in (401, 403) or error == "invalid_client":
        return (
            f"the provider refused authcar's client credentials (HTTP {status}{code}): "
            "check the client id and secret"
        )
    return f"the provider answered HTTP {status}{code}"
