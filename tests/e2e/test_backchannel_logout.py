"""OIDC Back-Channel Logout 1.0 through a real sidecar: the test provider POSTs a logout token to
/oauth2/backchannel_logout, as an OP does when someone signs out there. A valid one ends the
session(s) it names (by `sid`, else every session of the `sub`) and the old cookie is refused; every
bent token (wrong signer, audience, issuer, event, a nonce, stale, replayed, an ID token offered as a
logout token) is 400 with a reason and ends nothing; a malformed request is 400/413, another method
404, all JSON. The same across replicas sharing Redis: tests/e2e/test_login_replicas.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from authcar.store import StoreUnavailable
from tests.e2e.test_login import PAGE, login_settings, sign_in
from tests.idp import IdP, run_idp
from tests.support.login import free_port, wait_for_login
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


@pytest.fixture
async def sidecar(idp: IdP, upstream: RunningUpstream) -> AsyncIterator[RunningSidecar]:
    port = free_port()
    async with start_sidecar(upstream.url, **login_settings(idp, port)) as running:
        await wait_for_login(running.url)
        yield running


@pytest.fixture
async def browsers() -> AsyncIterator[list[httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []
    yield made
    for http in made:
        await http.aclose()


async def signed_in(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient], user: str = "alice"
) -> tuple[httpx.AsyncClient, str]:
    """A client holding a session of `user` (the provider's current user), and the provider's sid
    of that login."""
    http = httpx.AsyncClient(timeout=10)
    browsers.append(http)
    answer = await sign_in(http, sidecar, "/")
    assert answer.status_code == 200
    return http, idp.sessions_of(user)[-1]


async def page_status(http: httpx.AsyncClient, sidecar: RunningSidecar) -> int:
    return (await http.get(sidecar.url + "/books", headers={"Accept": "application/json"})).status_code


async def deliver(sidecar: RunningSidecar, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(sidecar.url + "/oauth2/backchannel_logout", data={"logout_token": token})


async def test_a_logout_token_with_the_sid_ends_that_session_only(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient], upstream: RunningUpstream
) -> None:
    laptop, laptop_sid = await signed_in(sidecar, idp, browsers)
    phone, _ = await signed_in(sidecar, idp, browsers)
    assert await page_status(laptop, sidecar) == 200
    answer = await deliver(sidecar, idp.logout_token(sid=laptop_sid))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"sessions_ended": 1}
    assert answer.headers["cache-control"] == "no-store"
    seen = len(upstream.seen)
    assert await page_status(laptop, sidecar) == 401  # the old cookie is refused
    assert await page_status(phone, sidecar) == 200  # another provider session lives on
    assert len(upstream.seen) == seen + 1
    # A page load with the ended session is sent to sign in again.
    again = await laptop.get(sidecar.url + "/books", headers=PAGE)
    assert again.status_code == 302
    assert again.headers["location"].startswith("/oauth2/start")


async def test_a_logout_token_with_only_the_sub_ends_every_session_of_the_user(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient]
) -> None:
    first, _ = await signed_in(sidecar, idp, browsers)
    second, _ = await signed_in(sidecar, idp, browsers)
    idp.login_as("bob", roles=("reader",))
    bobs, _ = await signed_in(sidecar, idp, browsers, "bob")
    answer = await deliver(sidecar, idp.logout_token(sub="alice"))
    assert answer.json() == {"sessions_ended": 2}
    assert await page_status(first, sidecar) == 401
    assert await page_status(second, sidecar) == 401
    assert await page_status(bobs, sidecar) == 200


async def test_a_sid_no_session_carries_falls_back_to_the_sub(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient]
) -> None:
    # Providers that leave `sid` out of ID tokens still name it in logout tokens, with the `sub`.
    http, _ = await signed_in(sidecar, idp, browsers)
    answer = await deliver(sidecar, idp.logout_token(sid="a-sid-we-never-saw", sub="alice"))
    assert answer.json() == {"sessions_ended": 1}
    assert await page_status(http, sidecar) == 401


def bent_tokens(idp: IdP, sid: str) -> dict[str, str]:
    """Logout tokens that must not end anything, by what is wrong with them."""
    now = int(time.time())
    id_token_like: dict[str, Any] = {"nonce": "n-1"}
    return {
        "a nonce (an ID token's claim)": idp.logout_token(sid=sid, claims=id_token_like),
        "no back-channel event": idp.logout_token(sid=sid, omit=["events"]),
        "another event": idp.logout_token(
            sid=sid, claims={"events": {"http://schemas.openid.net/event/other": {}}}
        ),
        "the event is not an object": idp.logout_token(
            sid=sid, claims={"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}}
        ),
        "another client's audience": idp.logout_token(sid=sid, claims={"aud": "someone-else"}),
        "no audience": idp.logout_token(sid=sid, omit=["aud"]),
        "another issuer": idp.logout_token(sid=sid, claims={"iss": "https://evil.example"}),
        "issued long ago": idp.logout_token(sid=sid, claims={"iat": now - 3600, "exp": now + 60}),
        "issued in the future": idp.logout_token(sid=sid, claims={"iat": now + 3600, "exp": now + 7200}),
        "expired": idp.logout_token(sid=sid, claims={"exp": now - 600}),
        "no jti": idp.logout_token(sid=sid, omit=["jti"]),
        "no iat": idp.logout_token(sid=sid, omit=["iat"]),
        "neither sid nor sub": idp.logout_token(sid=sid, omit=["sid"]),
        "a sid that is not a string": idp.logout_token(sid=sid, claims={"sid": ["x"]}),
        "unsigned (alg none)": idp.logout_token(sid=sid, alg="none"),
        "HS256 keyed with the public key": idp.logout_token(sid=sid, alg="HS256"),
        "an unpublished key": idp.logout_token(sid=sid, unpublished_key=True),
        "an access token": idp.mint(sub="alice"),
        "not a JWT": "logout-now",
    }


async def test_bent_logout_tokens_are_refused_and_end_nothing(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient]
) -> None:
    http, sid = await signed_in(sidecar, idp, browsers)
    for what, token in bent_tokens(idp, sid).items():
        answer = await deliver(sidecar, token)
        assert answer.status_code == 400, what
        assert answer.json()["error"] == "invalid_logout_token", what
    assert await page_status(http, sidecar) == 200  # still signed in


async def test_a_logout_token_is_used_once_then_refused(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient]
) -> None:
    _, sid = await signed_in(sidecar, idp, browsers)
    token = idp.logout_token(sid=sid)
    assert (await deliver(sidecar, token)).status_code == 200
    again, _ = await signed_in(sidecar, idp, browsers)  # signs in anew: the provider's sid is new too
    replayed = await deliver(sidecar, token)
    assert replayed.status_code == 400
    assert replayed.json()["error"] == "logout_token_replayed"
    assert await page_status(again, sidecar) == 200


async def test_malformed_requests_get_a_json_answer_and_end_nothing(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient]
) -> None:
    http, sid = await signed_in(sidecar, idp, browsers)
    token = idp.logout_token(sid=sid)
    url = sidecar.url + "/oauth2/backchannel_logout"
    async with httpx.AsyncClient(timeout=10) as op:
        cases = [
            ({"json": {"logout_token": token}}, 400),
            ({"content": f"logout_token={token}&logout_token={token}", "headers": FORM}, 400),
            ({"content": "", "headers": FORM}, 400),
            ({"content": "logout_token=", "headers": FORM}, 400),
            ({"content": b"logout_token=\xff\xfe", "headers": FORM}, 400),
            ({"content": "logout_token=" + "a" * 20_000, "headers": FORM}, 413),
        ]
        for options, status in cases:
            answer = await op.post(url, **options)
            assert answer.status_code == status, options
            assert answer.headers["content-type"].startswith("application/json")
        answer = await op.get(url, params={"logout_token": token})
        assert answer.status_code == 404
        assert await page_status(http, sidecar) == 200


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_a_delivery_the_store_failed_midway_is_not_refused_as_a_replay_when_retried(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient], upstream: RunningUpstream
) -> None:
    # The store answers the replay check, then stops answering (ending the sessions and forgetting
    # the marker both fail): 503, and the provider's retry once it is back must end the session.
    http, sid = await signed_in(sidecar, idp, browsers)
    token = idp.logout_token(sid=sid)
    login = sidecar.service.sidecar.login
    assert login is not None
    store = login.store

    async def down(*_: Any, **__: Any) -> Any:
        raise StoreUnavailable("down")

    store.members = down  # type: ignore[method-assign]
    store.delete = down  # type: ignore[method-assign]
    try:
        failed = await deliver(sidecar, token)
    finally:
        del store.members, store.delete
    assert failed.status_code == 503
    assert failed.json()["error"] == "session_store_unavailable"
    retried = await deliver(sidecar, token)
    assert retried.status_code == 200, retried.text
    assert retried.json() == {"sessions_ended": 1}
    seen = len(upstream.seen)
    assert await page_status(http, sidecar) == 401
    assert len(upstream.seen) == seen


async def test_signing_out_here_then_the_providers_logout_of_that_sid_ends_no_other_device(
    sidecar: RunningSidecar, idp: IdP, browsers: list[httpx.AsyncClient], upstream: RunningUpstream
) -> None:
    # RP-initiated logout: the laptop signs out here (its record ends), the provider ends that sid and
    # tells every client, with the sid and the sub. The sid names a session we knew, so the phone's
    # session (another provider sid) must live on: falling back to "every session of the sub" is for
    # a sid we never saw.
    laptop, laptop_sid = await signed_in(sidecar, idp, browsers)
    phone, phone_sid = await signed_in(sidecar, idp, browsers)
    assert laptop_sid != phone_sid
    out = await laptop.get(sidecar.url + "/oauth2/sign_out")
    assert out.status_code == 302
    answer = await deliver(sidecar, idp.logout_token(sid=laptop_sid, sub="alice"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"sessions_ended": 0}
    seen = len(upstream.seen)
    assert await page_status(phone, sidecar) == 200
    assert len(upstream.seen) == seen + 1
    assert upstream.seen[-1].header("x-auth-request-user") == "alice"
