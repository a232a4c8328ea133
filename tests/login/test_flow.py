"""The login's pure parts put together against the real test provider, over real sockets: the
authorization request, the callback, the login-state cookie, the ID token checks; and the logout
token checks against every malformed variant the provider can send."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest

from authcar.login.callback import Callback, CallbackRefused, parse_callback
from authcar.login.request import authorization_url
from authcar.login.state import LoginAttempt, LoginStateSealer
from authcar.login.tokens import LoginTokenRejected, LogoutRequest, check_id_token, check_logout_token
from authcar.store import MemoryStore
from tests.idp import IdP, run_idp

CALLBACK = "http://127.0.0.1:4180/oauth2/callback"
AUTH = ("authcar", "authcar-secret")


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def verified(idp: IdP, token: str, audience: str = "authcar") -> dict[str, Any]:
    """Signature, issuer, audience and times, as the JWT validator checks them (pyjwt stands in)."""
    key = jwt.PyJWKSet.from_dict(idp.keys)[jwt.get_unverified_header(token)["kid"]]
    return dict(jwt.decode(token, key, algorithms=[key.algorithm_name], issuer=idp.issuer, audience=audience))


async def code_for(http: httpx.AsyncClient, idp: IdP, attempt: LoginAttempt) -> str:
    """The code the provider answers the attempt's authorization request with (it signs in by itself)."""
    url = authorization_url(
        idp.authorization_endpoint,
        client_id="authcar",
        redirect_uri=CALLBACK,
        scopes="openid",
        attempt=attempt,
    )
    return dict(parse_qsl(urlsplit((await http.get(url)).headers["location"]).query))["code"]


async def redeem(http: httpx.AsyncClient, idp: IdP, code: str, verifier: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }
    return await http.post(idp.token_endpoint, data=form, auth=AUTH)


async def test_a_login_from_request_to_subject_against_the_real_provider(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    idp.login_as("u-7", username="dora", email="dora@example.com")
    sealer = LoginStateSealer(b"k" * 32)
    attempt = sealer.begin("/books?page=2")
    cookie = sealer.seal(attempt)
    url = authorization_url(
        idp.authorization_endpoint,
        client_id="authcar",
        redirect_uri=CALLBACK,
        scopes="openid profile email",
        attempt=attempt,
    )
    answer = await http.get(url)
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["location"])
    discovery = (await http.get(idp.endpoint("discovery"))).json()
    callback = parse_callback(
        location.query,
        issuer=idp.issuer,
        issuer_sends_iss=discovery["authorization_response_iss_parameter_supported"],
    )
    assert callback.state == attempt.state
    assert callback.code is not None

    opened = sealer.open(cookie, callback.state)
    store = MemoryStore()
    await sealer.use_once(opened, store)
    tokens = (await redeem(http, idp, callback.code, opened.code_verifier)).json()
    claims = verified(idp, tokens["id_token"])
    assert check_id_token(claims, client_id="authcar", nonce=opened.nonce) == "u-7"
    assert opened.return_to == "/books?page=2"
    await store.close()


async def test_the_provider_refuses_a_request_whose_verifier_is_not_the_attempts(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    sealer = LoginStateSealer(b"k" * 32)
    attempt, other = sealer.begin("/"), sealer.begin("/")
    code = await code_for(http, idp, attempt)
    assert (await redeem(http, idp, code, other.code_verifier)).status_code == 400


def test_the_authorization_url_keeps_the_endpoints_query_and_refuses_clashes() -> None:
    attempt = LoginStateSealer(b"k" * 32).begin("/")
    url = authorization_url(
        "https://idp.example/auth?tenant=a#frag",
        client_id="c",
        redirect_uri=CALLBACK,
        scopes="openid",
        attempt=attempt,
    )
    params = dict(parse_qsl(urlsplit(url).query))
    assert params["tenant"] == "a"
    assert params["code_challenge"] == attempt.code_challenge
    assert (params["code_challenge_method"], params["nonce"], params["state"]) == (
        "S256",
        attempt.nonce,
        attempt.state,
    )
    assert "#" not in url
    with pytest.raises(ValueError, match="already names"):
        authorization_url(
            "https://idp.example/auth?state=x",
            client_id="c",
            redirect_uri=CALLBACK,
            scopes="openid",
            attempt=attempt,
        )


ISSUER = "https://idp.example/realms/test"


@pytest.mark.parametrize(
    ("query", "status", "reason"),
    [
        ("code=c", 403, "no_state"),
        ("code=c&state=", 403, "no_state"),
        ("code=c&state=s&iss=https%3A%2F%2Fevil.example", 403, "wrong_issuer"),
        ("code=c&state=s&iss=https%3A%2F%2Fidp.example%2Frealms%2Ftest%2F", 403, "wrong_issuer"),
        ("code=c&state=s", 403, "wrong_issuer"),  # this provider always sends iss
        ("code=c&state=s&state=t&iss=" + ISSUER, 400, "malformed"),
        ("code=c&code=d&state=s&iss=" + ISSUER, 400, "malformed"),
        ("state=s&iss=" + ISSUER, 400, "malformed"),
        ("error=%0d%0aevil&state=s&iss=" + ISSUER, 400, "malformed"),
        ("code=" + "c" * 9000 + "&state=s", 400, "malformed"),
    ],
)
def test_callbacks_that_cannot_finish_a_login_are_refused(query: str, status: int, reason: str) -> None:
    with pytest.raises(CallbackRefused) as caught:
        parse_callback(query, issuer=ISSUER, issuer_sends_iss=True)
    assert (caught.value.status, caught.value.reason) == (status, reason)
    assert "evil" not in str(caught.value)  # nothing the request said is echoed


def test_a_providers_error_is_a_callback_without_code() -> None:
    query = f"error=access_denied&error_description=no&state=s&iss={ISSUER}"
    assert parse_callback(query, issuer=ISSUER, issuer_sends_iss=True) == Callback("s", None, "access_denied")
    # A provider that does not send iss: none is fine, a wrong one is not.
    assert parse_callback("code=c&state=s", issuer=ISSUER, issuer_sends_iss=False) == Callback("s", "c")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nonce": "other"}, "wrong_nonce"),
        ({"nonce": None}, "wrong_nonce"),
        ({"nonce": 1}, "wrong_nonce"),
        ({"aud": ["authcar", "other"], "azp": None}, "wrong_audience"),
        ({"aud": ["authcar", "other"], "azp": "other"}, "wrong_audience"),
        ({"azp": "other"}, "wrong_audience"),
        ({"aud": "other"}, "wrong_audience"),
        ({"aud": []}, "wrong_audience"),
        ({"aud": [1]}, "wrong_audience"),
        ({"sub": ""}, "malformed"),
        ({"sub": "x" * 256}, "malformed"),
        ({"sub": "a\nb"}, "malformed"),
        ({"sub": 7}, "malformed"),
    ],
)
def test_id_tokens_for_another_client_or_attempt_are_refused(claims: dict[str, Any], reason: str) -> None:
    good = {"iss": ISSUER, "sub": "alice", "aud": "authcar", "azp": "authcar", "nonce": "n-1"}
    assert check_id_token(good, client_id="authcar", nonce="n-1") == "alice"
    bent = {name: value for name, value in {**good, **claims}.items() if value is not None}
    with pytest.raises(LoginTokenRejected) as caught:
        check_id_token(bent, client_id="authcar", nonce="n-1")
    assert caught.value.reason == reason


async def test_a_well_formed_logout_token_names_what_to_end(idp: IdP) -> None:
    now = time.time()
    token = idp.logout_token(sid="s-1", sub="alice")
    request = check_logout_token(verified(idp, token), client_id="authcar", now=now, leeway=30)
    assert (request.sid, request.sub) == ("s-1", "alice")
    assert isinstance(request, LogoutRequest)
    only_sid = check_logout_token(
        verified(idp, idp.logout_token(sid="s-2")), client_id="authcar", now=now, leeway=30
    )
    assert (only_sid.sid, only_sid.sub) == ("s-2", None)


@pytest.mark.parametrize(
    ("bend", "reason"),
    [
        ({"claims": {"nonce": "n"}}, "not_a_logout_token"),
        ({"omit": ["events"]}, "not_a_logout_token"),
        ({"claims": {"events": {"urn:other": {}}}}, "not_a_logout_token"),
        (
            {"claims": {"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}}},
            "not_a_logout_token",
        ),
        ({"claims": {"events": []}}, "not_a_logout_token"),
        ({"omit": ["jti"]}, "malformed"),
        ({"claims": {"jti": ""}}, "malformed"),
        ({"claims": {"jti": 5}}, "malformed"),
        ({"omit": ["iat"]}, "malformed"),
        ({"claims": {"iat": True}}, "malformed"),
        ({"claims": {"iat": int(time.time()) - 3600}}, "stale"),
        ({"claims": {"iat": int(time.time()) + 3600}}, "stale"),
        ({"claims": {"sid": None}, "omit": ["sid"]}, "malformed"),
        ({"claims": {"sid": 1}}, "malformed"),
        ({"claims": {"aud": ["other"]}}, "wrong_audience"),
    ],
)
async def test_every_malformed_logout_token_variant_is_refused(
    idp: IdP, bend: dict[str, Any], reason: str
) -> None:
    token = idp.logout_token(sid="s-1", **bend)
    claims = jwt.decode(token, options={"verify_signature": False})  # the claims the validator passed on
    with pytest.raises(LoginTokenRejected) as caught:
        check_logout_token(claims, client_id="authcar", now=time.time(), leeway=30)
    assert caught.value.reason == reason


async def test_an_id_token_is_never_taken_for_a_logout_token(idp: IdP, http: httpx.AsyncClient) -> None:
    sealer = LoginStateSealer(b"k" * 32)
    attempt = sealer.begin("/")
    code = await code_for(http, idp, attempt)
    id_token = (await redeem(http, idp, code, attempt.code_verifier)).json()["id_token"]
    with pytest.raises(LoginTokenRejected, match="not_a_logout_token"):
        check_logout_token(verified(idp, id_token), client_id="authcar", now=time.time(), leeway=30)
