"""The login-state cookie: what the callback needs to finish one login attempt, kept by the browser.

`/oauth2/start` makes a LoginAttempt (random state, nonce and PKCE verifier, and where to return),
seals it into a cookie named after its state, and sends the browser to the provider; the callback
opens the cookie its `state` parameter names and accepts it only when it carries an HMAC-SHA256 of
AUTHCAR_COOKIE_SECRET, is younger than its lifetime, holds that very state, and is used for the
first time (a marker in the store, so a copied cookie is refused on every replica).

    v1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(key, "v1." + payload))>

The key is derived from the secret for this use alone, so the same secret can later key other
things without one's MAC being valid as another's. The cookie is signed, not encrypted: what it
holds (state, nonce, verifier, return-to) is the browser's own login in progress, never a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from authcar.store import Store

VERSION = "v1"
DEFAULT_LIFETIME = 600.0  # seconds from /oauth2/start to the callback: a sign-in page, not a session
CLOCK_SKEW = 5.0  # replicas' clocks: a cookie "issued" this far in the future is still accepted
MAX_COOKIE_BYTES = 4096  # browsers keep about this much per cookie; a longer one is not ours
KEY_CONTEXT = b"authcar login-state cookie " + VERSION.encode()
RANDOM = re.compile(r"[A-Za-z0-9_-]{43,128}")  # state, nonce, verifier: RFC 7636's verifier alphabet
STORE_PREFIX = "login-state:"


class LoginStateError(Exception):
    """The cookie cannot finish a login; `reason` is a stable code for logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LoginAttempt:
    state: str
    nonce: str
    code_verifier: str
    return_to: str  # already checked by the redirect policy when the attempt began
    issued_at: int

    @classmethod
    def begin(cls, return_to: str, *, now: float) -> LoginAttempt:
        return cls(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),  # 64 characters, within RFC 7636's 43..128
            return_to=return_to,
            issued_at=int(now),
        )

    @property
    def code_challenge(self) -> str:
        """PKCE S256 (RFC 7636 section 4.2)."""
        return b64url(hashlib.sha256(self.code_verifier.encode("ascii")).digest())


def cookie_name(session_cookie_name: str, state: str) -> str:
    """One cookie per attempt, so two tabs signing in at once do not overwrite each other's; the name
    keeps the session cookie's `__Host-` prefix."""
    return f"{session_cookie_name}-login-{hashlib.sha256(state.encode()).hexdigest()[:16]}"


class LoginStateSealer:
    def __init__(
        self, secret: bytes, *, lifetime: float = DEFAULT_LIFETIME, clock: Callable[[], float] = time.time
    ) -> None:
        if len(secret) < 32:
            raise ValueError("the cookie secret must be at least 32 bytes")
        self.key = hmac.new(secret, KEY_CONTEXT, hashlib.sha256).digest()
        self.lifetime = lifetime
        self.clock = clock

    def begin(self, return_to: str) -> LoginAttempt:
        return LoginAttempt.begin(return_to, now=self.clock())

    def seal(self, attempt: LoginAttempt) -> str:
        payload = {
            "s": attempt.state,
            "n": attempt.nonce,
            "v": attempt.code_verifier,
            "r": attempt.return_to,
            "t": attempt.issued_at,
        }
        body = f"{VERSION}.{b64url(json.dumps(payload, separators=(',', ':')).encode())}"
        return f"{body}.{b64url(self.mac(body))}"

    def open(self, cookie: str | None, state: str | None) -> LoginAttempt:
        """The attempt in `cookie` if it is ours, fresh and for `state`; LoginStateError otherwise."""
        if not cookie or not state:
            raise LoginStateError("missing")
        if len(cookie) > MAX_COOKIE_BYTES or not cookie.isascii():
            raise LoginStateError("malformed")
        parts = cookie.split(".")
        if len(parts) != 3 or parts[0] != VERSION or not parts[1]:
            raise LoginStateError("malformed")
        version, payload, signature = parts
        given = b64decode(signature)
        if given is None or not hmac.compare_digest(given, self.mac(f"{version}.{payload}")):
            raise LoginStateError("bad_signature")
        attempt = parse_payload(b64decode(payload))
        if attempt is None:  # signed by us, so only a bug or a leaked secret gets here
            raise LoginStateError("malformed")
        now = self.clock()
        if attempt.issued_at > now + CLOCK_SKEW or now - attempt.issued_at > self.lifetime:
            raise LoginStateError("expired")
        if not hmac.compare_digest(attempt.state.encode(), state.encode("utf-8", "replace")):
            raise LoginStateError("state_mismatch")
        return attempt

    async def use_once(self, attempt: LoginAttempt, store: Store) -> None:
        """Mark the attempt used in the shared store; LoginStateError("replayed") if it already was.
        The marker lives as long as the cookie could, so no copy can finish the attempt again."""
        key = STORE_PREFIX + hashlib.sha256(attempt.state.encode()).hexdigest()
        if not await store.set_if_absent(key, b"", self.lifetime + CLOCK_SKEW):
            raise LoginStateError("replayed")

    def mac(self, body: str) -> bytes:
        return hmac.new(self.key, body.encode("ascii"), hashlib.sha256).digest()


def parse_payload(data: bytes | None) -> LoginAttempt | None:
    try:
        payload = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.keys() != {"s", "n", "v", "r", "t"}:
        return None
    state, nonce, verifier, return_to, issued = (payload[name] for name in "snvrt")
    if not all(isinstance(value, str) and RANDOM.fullmatch(value) for value in (state, nonce, verifier)):
        return None
    if not isinstance(return_to, str) or type(issued) is not int:
        return None
    return LoginAttempt(state, nonce, verifier, return_to, issued)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes | None:
    """Strict unpadded base64url: None for anything else (so one cookie has one encoding)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        return None
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return decoded if b64url(decoded) == text else None  # non-canonical trailing bits refused
