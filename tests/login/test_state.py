"""The login-state cookie alone: it opens only unchanged, in time, for its own state, and once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authcar.login.state import (
    CLOCK_SKEW,
    KEY_CONTEXT,
    MAX_COOKIE_BYTES,
    LoginAttempt,
    LoginStateError,
    LoginStateSealer,
    cookie_name,
)
from authcar.store import MemoryStore

SECRET = b"s" * 32


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sealer(clock: Clock) -> LoginStateSealer:
    return LoginStateSealer(SECRET, lifetime=600, clock=clock)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    memory = MemoryStore()
    yield memory
    await memory.close()


def refused(sealer: LoginStateSealer, cookie: str | None, state: str | None) -> str:
    with pytest.raises(LoginStateError) as caught:
        sealer.open(cookie, state)
    return caught.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: bytes, secret: bytes = SECRET) -> str:
    """A cookie the sealer's key really signed, around any payload: what a leaked key could forge."""
    key = hmac.new(secret, KEY_CONTEXT, hashlib.sha256).digest()
    body = f"v1.{b64(payload)}"
    return f"{body}.{b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def test_an_attempt_round_trips_and_carries_a_pkce_s256_challenge(sealer: LoginStateSealer) -> None:
    attempt = sealer.begin("/books?page=2")
    assert len({attempt.state, attempt.nonce, attempt.code_verifier}) == 3
    assert 43 <= len(attempt.code_verifier) <= 128
    # RFC 7636 appendix B's example verifier and challenge
    rfc = LoginAttempt("s" * 43, "n" * 43, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "/", 0)
    assert rfc.code_challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    cookie = sealer.seal(attempt)
    assert sealer.open(cookie, attempt.state) == attempt
    assert attempt.code_verifier not in cookie.split(".")[2]  # the MAC part is not the payload
    assert len(cookie) < MAX_COOKIE_BYTES


def test_every_attempt_is_new(sealer: LoginStateSealer) -> None:
    attempts = [sealer.begin("/") for _ in range(50)]
    assert len({a.state for a in attempts}) == len({a.nonce for a in attempts}) == 50


def test_tampered_cookies_are_refused(sealer: LoginStateSealer) -> None:
    attempt = sealer.begin("/books")
    cookie = sealer.seal(attempt)
    version, payload, mac = cookie.split(".")
    other = sealer.seal(sealer.begin("/admin"))
    forged_payload = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged_payload["r"] = "https://evil.example/"
    cases = {
        "other payload, this MAC": f"{version}.{other.split('.')[1]}.{mac}",
        "changed return-to": f"{version}.{b64(json.dumps(forged_payload).encode())}.{mac}",
        "no MAC": f"{version}.{payload}.",
        "MAC cut short": f"{version}.{payload}.{mac[:-2]}",
        "padded MAC": f"{version}.{payload}.{mac}==",
        "another secret's MAC": LoginStateSealer(b"t" * 32, clock=sealer.clock).seal(attempt),
        "MAC under the raw secret": signed_raw(payload),
    }
    for case, forged in cases.items():
        assert refused(sealer, forged, attempt.state) == "bad_signature", case
    for case, forged in {
        "v2": f"v2.{payload}.{mac}",
        "four parts": f"{cookie}.x",
        "two parts": f"{version}.{payload}",
        "not ASCII": cookie + "é",
        "huge": cookie + "A" * MAX_COOKIE_BYTES,
        "empty payload": f"{version}..{mac}",
    }.items():
        assert refused(sealer, forged, attempt.state) == "malformed", case
    assert refused(sealer, None, attempt.state) == "missing"
    assert refused(sealer, cookie, None) == "missing"


def signed_raw(payload: str) -> str:
    # HMAC keyed with the secret itself rather than the derived key: a MAC made for another use.
    body = f"v1.{payload}"
    return f"{body}.{b64(hmac.new(SECRET, body.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"s": "x"}',
        json.dumps({"s": "a" * 43, "n": "b" * 43, "v": "c" * 43, "r": "/", "t": "1800000000"}).encode(),
        json.dumps({"s": "a" * 43, "n": "b" * 43, "v": "c" * 43, "r": "/", "t": True}).encode(),
        json.dumps({"s": "a" * 42, "n": "b" * 43, "v": "c" * 43, "r": "/", "t": 1800000000}).encode(),
        json.dumps({"s": "a" * 43, "n": "b" * 43, "v": "c" * 43, "r": 1, "t": 1800000000}).encode(),
        json.dumps({"s": "a" * 43, "n": "b" * 43, "v": "c" * 43, "r": "/", "t": 1, "x": 1}).encode(),
        b"\xff\xfe",
    ],
)
def test_signed_but_malformed_payloads_are_refused_not_crashed_on(
    sealer: LoginStateSealer, payload: bytes
) -> None:
    assert refused(sealer, signed(payload), "a" * 43) == "malformed"


def test_cookies_expire_and_are_not_from_the_future(sealer: LoginStateSealer, clock: Clock) -> None:
    attempt = sealer.begin("/")
    cookie = sealer.seal(attempt)
    clock.now += 600
    assert sealer.open(cookie, attempt.state) == attempt
    clock.now += 1
    assert refused(sealer, cookie, attempt.state) == "expired"
    clock.now = attempt.issued_at - CLOCK_SKEW - 1  # a replica whose clock is behind the issuer's
    assert refused(sealer, cookie, attempt.state) == "expired"
    clock.now = attempt.issued_at - CLOCK_SKEW
    assert sealer.open(cookie, attempt.state) == attempt


def test_a_cookie_finishes_only_its_own_attempt(sealer: LoginStateSealer) -> None:
    mine, theirs = sealer.begin("/"), sealer.begin("/")
    assert refused(sealer, sealer.seal(mine), theirs.state) == "state_mismatch"
    assert refused(sealer, sealer.seal(mine), mine.state + "x") == "state_mismatch"
    assert refused(sealer, sealer.seal(mine), "ü") == "state_mismatch"
    assert cookie_name("__Host-authcar", mine.state) != cookie_name("__Host-authcar", theirs.state)
    assert cookie_name("__Host-authcar", mine.state).startswith("__Host-authcar-login-")


async def test_an_attempt_is_used_once(sealer: LoginStateSealer, store: MemoryStore) -> None:
    attempt = sealer.begin("/")
    await sealer.use_once(attempt, store)
    with pytest.raises(LoginStateError, match="replayed"):
        await sealer.use_once(sealer.open(sealer.seal(attempt), attempt.state), store)
    await sealer.use_once(sealer.begin("/"), store)  # another attempt is unaffected
    remaining = await store.ttl("login-state:" + hashlib.sha256(attempt.state.encode()).hexdigest())
    assert remaining is not None
    assert sealer.lifetime < remaining <= sealer.lifetime + CLOCK_SKEW


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LoginStateSealer(b"x" * 31)


@settings(deadline=None)
@given(st.data())
def test_any_change_to_a_sealed_cookie_is_refused(data: st.DataObject) -> None:
    sealer = LoginStateSealer(SECRET, clock=Clock())
    attempt = sealer.begin("/books")
    cookie = sealer.seal(attempt)
    position = data.draw(st.integers(0, len(cookie) - 1))
    replacement = data.draw(st.text(min_size=0, max_size=3))
    changed = cookie[:position] + replacement + cookie[position + 1 :]
    if changed == cookie:
        return
    with pytest.raises(LoginStateError):
        sealer.open(changed, attempt.state)
