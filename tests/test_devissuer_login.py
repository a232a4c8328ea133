"""The development issuer's browser sign-in (authcar/devlogin.py, served by authcar/devissuer.py): the
sign-in page, code + PKCE S256, the token endpoint's authorization_code and refresh_token grants, ID
tokens, RP-initiated logout and introspection, over a real socket, and what each of them refuses."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from authcar.devissuer import DEMO_AUDIENCE, DEMO_SECRET, DevIssuer, serving
from authcar.devlogin import (
    CODE_LIFETIME,
    MAX_CODES,
    MAX_GRANTS,
    AuthorizationRequest,
    LoginClient,
    Person,
    RefreshGrant,
    Refused,
    SignIns,
    s256,
    sign_in_page,
)
from tests.idp.keys import b64url

CLIENT = LoginClient(
    client_id="authcar-demo",
    secret="a-secret-made-for-this-run-0123456789",
    redirect_uris=("http://127.0.0.1:4180/oauth2/callback",),
    post_logout_redirect_uris=("http://127.0.0.1:4180/books",),
)
CALLBACK = CLIENT.redirect_uris[0]
AFTER_LOGOUT = CLIENT.post_logout_redirect_uris[0]
AUTH = (CLIENT.client_id, CLIENT.secret)


@pytest.fixture
async def issuer() -> AsyncIterator[DevIssuer]:
    async with serving(login_clients=[CLIENT]) as running:
        yield running


@pytest.fixture
async def http(issuer: DevIssuer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=issuer.url, timeout=5) as client:
        yield client


def authorization(verifier: str, **overrides: str | None) -> dict[str, str]:
    query = {
        "response_type": "code",
        "client_id": CLIENT.client_id,
        "redirect_uri": CALLBACK,
        "scope": "openid profile email",
        "state": "state-" + secrets.token_urlsafe(8),
        "nonce": "nonce-" + secrets.token_urlsafe(8),
        "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
        **overrides,
    }
    return {name: value for name, value in query.items() if value is not None}


class Form(HTMLParser):
    """The sign-in page's form as a browser sees it: action, hidden fields, buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: dict[str, str] = {}
        self.buttons: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.attributes: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        self.tags.append(tag)
        self.attributes.append(found)
        if tag == "form":
            self.action = found["action"]
        elif tag == "input" and found.get("type") == "hidden":
            self.hidden[found["name"]] = found["value"]
        elif tag == "button":
            self.buttons.append(found)


def form_of(page: str) -> Form:
    form = Form()
    form.feed(page)
    return form


async def choose(http: httpx.AsyncClient, query: dict[str, str], user: str | None) -> httpx.Response:
    """Open the sign-in page for `query` and press the button of `user` (None: Cancel)."""
    page = await http.get("/authorize", params=query)
    assert page.status_code == 200, page.text
    form = form_of(page.text)
    pressed = {"user": user} if user is not None else {"cancel": "1"}
    return await http.post(form.action, data={**form.hidden, **pressed})


def callback_params(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(CALLBACK + "?"), location
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


@dataclass
class SignedIn:
    verifier: str
    query: dict[str, str]
    code: str


async def signed_in(http: httpx.AsyncClient, user: str = "bob") -> SignedIn:
    verifier = secrets.token_urlsafe(48)
    query = authorization(verifier)
    params = callback_params(await choose(http, query, user))
    assert params["state"] == query["state"]
    return SignedIn(verifier, query, params["code"])


async def exchange(http: httpx.AsyncClient, signed: SignedIn, **overrides: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": signed.code,
        "redirect_uri": CALLBACK,
        "code_verifier": signed.verifier,
        **overrides,
    }
    return await http.post("/token", data=form, auth=AUTH)


async def refresh(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/token", data={"grant_type": "refresh_token", "refresh_token": token}, auth=AUTH)


def verified(issuer: DevIssuer, token: str, audience: str) -> dict[str, Any]:
    [key] = issuer.jwks()["keys"]
    return dict(
        jwt.decode(token, jwt.PyJWK(key).key, algorithms=["ES256"], audience=audience, issuer=issuer.url)
    )


async def test_the_sign_in_page_offers_one_button_per_demo_user_and_nothing_external(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/authorize", params=authorization(secrets.token_urlsafe(48)))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    policy = page.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert "frame-ancestors 'none'" in policy
    assert "form-action 'self' http://127.0.0.1:4180;" in policy  # the form's answer goes to the callback
    form = form_of(page.text)
    users = [(b["data-user"], b["value"]) for b in form.buttons if "data-user" in b]
    assert users == [("alice", "alice"), ("bob", "bob"), ("carol", "carol")]
    text = re.sub(r"<[^>]+>", " ", page.text)
    for shown in ("alice (reader)", "bob (editor)", "carol (admin)", "DEVELOPMENT", "no passwords"):
        assert shown.lower() in " ".join(text.split()).lower(), shown
    assert [b.get("id") for b in form.buttons if "data-user" not in b] == ["cancel"]
    # Accessible basics, and self-contained: no script, no image, nothing fetched from elsewhere.
    assert '<html lang="en">' in page.text
    assert "<title>" in page.text
    assert form.tags.count("main") == 1
    assert form.tags.count("h1") == 1
    assert not {"script", "img", "link", "iframe"} & set(form.tags)
    assert not any("src" in attributes or "href" in attributes for attributes in form.attributes)
    assert "password" not in form.tags
    assert all(i.get("type") != "password" for i in form.attributes)


async def test_a_code_and_its_verifier_give_tokens_an_id_token_and_a_rotating_refresh_token(
    issuer: DevIssuer, http: httpx.AsyncClient
) -> None:
    signed = await signed_in(http, "carol")
    answer = await exchange(http, signed)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    tokens = answer.json()
    assert (tokens["token_type"], tokens["expires_in"]) == ("Bearer", 3600)
    id_token = verified(issuer, tokens["id_token"], CLIENT.client_id)
    assert (id_token["sub"], id_token["nonce"], id_token["roles"]) == (
        "carol",
        signed.query["nonce"],
        ["admin"],
    )
    assert id_token["aud"] == id_token["azp"] == CLIENT.client_id
    assert id_token["email"] == "carol@example.com"
    assert id_token["sid"]
    access = verified(issuer, tokens["access_token"], DEMO_AUDIENCE)
    assert (access["sub"], access["roles"], access["client_id"]) == ("carol", ["admin"], CLIENT.client_id)
    assert jwt.get_unverified_header(tokens["access_token"])["typ"] == "at+jwt"

    renewed = await refresh(http, tokens["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    again = renewed.json()
    refreshed_id = verified(issuer, again["id_token"], CLIENT.client_id)
    assert (refreshed_id["sub"], refreshed_id["sid"]) == ("carol", id_token["sid"])
    assert "nonce" not in refreshed_id
    assert again["refresh_token"] != tokens["refresh_token"]
    # Rotated: the old refresh token is used up, the new one works.
    assert (await refresh(http, tokens["refresh_token"])).json()["error"] == "invalid_grant"
    assert (await refresh(http, again["refresh_token"])).status_code == 200


async def test_the_callback_carries_state_and_iss_and_cancel_is_access_denied(
    issuer: DevIssuer, http: httpx.AsyncClient
) -> None:
    query = authorization(secrets.token_urlsafe(48))
    params = callback_params(await choose(http, query, None))
    assert params["error"] == "access_denied"
    assert (params["state"], params["iss"]) == (query["state"], issuer.url)
    assert "code" not in params


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),  # no method means plain (RFC 7636 4.3)
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "profile email"}, "invalid_scope"),
        ({"scope": "openid offline_everything"}, "invalid_scope"),
        ({"state": "x" * 600}, "invalid_request"),
    ],
)
async def test_a_refused_request_goes_back_to_the_registered_callback_with_its_error(
    http: httpx.AsyncClient, overrides: dict[str, str | None], error: str
) -> None:
    query = authorization(secrets.token_urlsafe(48), **overrides)
    answer = await http.get("/authorize", params=query)
    params = callback_params(answer)
    assert params["error"] == error
    assert "code" not in params
    # The page's own post is checked again: the hidden fields are the browser's to change.
    posted = await http.post("/authorize", data={**query, "user": "alice"})
    assert callback_params(posted)["error"] == error


@pytest.mark.parametrize(
    "overrides",
    [
        {"redirect_uri": "http://127.0.0.1:4180/elsewhere"},
        {"redirect_uri": "http://evil.example/oauth2/callback"},
        {"redirect_uri": CALLBACK + "?x=1"},
        {"redirect_uri": None},
        {"client_id": "someone-else"},
    ],
)
async def test_an_unregistered_client_or_redirect_uri_gets_a_page_never_a_redirect(
    http: httpx.AsyncClient, overrides: dict[str, str | None]
) -> None:
    query = authorization(secrets.token_urlsafe(48), **overrides)
    for answer in (
        await http.get("/authorize", params=query),
        await http.post("/authorize", data={**query, "user": "alice"}),
    ):
        assert answer.status_code == 400
        assert "location" not in answer.headers
        assert answer.headers["content-type"].startswith("text/html")
        assert "Sign-in request refused" in answer.text


async def test_a_repeated_parameter_gets_a_page(http: httpx.AsyncClient) -> None:
    query = urlencode(authorization(secrets.token_urlsafe(48))) + "&redirect_uri=http%3A%2F%2Fevil.example%2F"
    answer = await http.get(f"/authorize?{query}")
    assert answer.status_code == 400
    assert "location" not in answer.headers


async def test_an_unknown_user_signs_nobody_in(http: httpx.AsyncClient) -> None:
    answer = await choose(http, authorization(secrets.token_urlsafe(48)), "mallory")
    assert answer.status_code == 400
    assert "location" not in answer.headers


async def test_a_wrong_verifier_is_refused(http: httpx.AsyncClient) -> None:
    signed = await signed_in(http)
    for verifier in (secrets.token_urlsafe(48), signed.query["code_challenge"], "short"):
        answer = await exchange(http, signed, code_verifier=verifier)
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_grant"
    missing = await http.post(
        "/token",
        data={"grant_type": "authorization_code", "code": signed.code, "redirect_uri": CALLBACK},
        auth=AUTH,
    )
    assert missing.json()["error"] == "invalid_grant"


async def test_a_code_works_once_and_its_reuse_ends_what_it_gave(http: httpx.AsyncClient) -> None:
    signed = await signed_in(http)
    first = await exchange(http, signed)
    assert first.status_code == 200
    second = await exchange(http, signed)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    # RFC 6749 4.1.2: a code presented twice was stolen; the refresh token it gave ends too.
    assert (await refresh(http, first.json()["refresh_token"])).json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("overrides", "auth", "status", "error"),
    [
        ({"redirect_uri": "http://127.0.0.1:4180/elsewhere"}, AUTH, 400, "invalid_grant"),
        ({"redirect_uri": ""}, AUTH, 400, "invalid_grant"),
        ({"code": "not-a-code"}, AUTH, 400, "invalid_grant"),
        ({}, (CLIENT.client_id, "wrong-secret"), 401, "invalid_client"),
        ({}, ("editor", DEMO_SECRET), 400, "unauthorized_client"),  # a demo client has no codes
        ({"grant_type": "password"}, AUTH, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, AUTH, 400, "unauthorized_client"),
    ],
)
async def test_the_token_endpoint_refuses_what_does_not_match_the_code(
    http: httpx.AsyncClient, overrides: dict[str, str], auth: tuple[str, str], status: int, error: str
) -> None:
    signed = await signed_in(http)
    form = {
        "grant_type": "authorization_code",
        "code": signed.code,
        "redirect_uri": CALLBACK,
        "code_verifier": signed.verifier,
        **overrides,
    }
    answer = await http.post("/token", data=form, auth=auth)
    assert (answer.status_code, answer.json()["error"]) == (status, error)
    if status != 401:
        assert (await exchange(http, signed)).status_code == 200  # a refused try did not use the code up


async def test_logout_ends_the_session_and_returns_to_the_registered_uri(
    issuer: DevIssuer, http: httpx.AsyncClient
) -> None:
    tokens = (await exchange(http, await signed_in(http))).json()
    query = {
        "id_token_hint": tokens["id_token"],
        "client_id": CLIENT.client_id,
        "post_logout_redirect_uri": AFTER_LOGOUT,
        "state": "s1",
    }
    answer = await http.get("/logout", params=query)
    assert answer.status_code == 302
    assert answer.headers["location"] == f"{AFTER_LOGOUT}?state=s1"
    assert (await refresh(http, tokens["refresh_token"])).json()["error"] == "invalid_grant"
    # Without a target: a page says so.
    page = await http.get("/logout", params={"id_token_hint": tokens["id_token"]})
    assert page.status_code == 200
    assert "Signed out" in page.text


@pytest.mark.parametrize(
    "change",
    [
        {"post_logout_redirect_uri": "http://evil.example/"},
        {"post_logout_redirect_uri": AFTER_LOGOUT + "/x"},
        {"client_id": "someone-else"},
        {"id_token_hint": "not.a.token"},
        {"id_token_hint": None},  # a target, but no client named by a hint or client_id
    ],
)
async def test_logout_refuses_unregistered_targets_and_foreign_hints_and_ends_nothing(
    http: httpx.AsyncClient, change: dict[str, str | None]
) -> None:
    tokens = (await exchange(http, await signed_in(http))).json()
    query = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": AFTER_LOGOUT, **change}
    answer = await http.get("/logout", params={k: v for k, v in query.items() if v is not None})
    assert answer.status_code == 400
    assert "location" not in answer.headers
    assert (await refresh(http, tokens["refresh_token"])).status_code == 200


async def test_another_issuers_id_token_is_no_hint(http: httpx.AsyncClient) -> None:
    async with serving(login_clients=[CLIENT]) as other, httpx.AsyncClient(base_url=other.url) as there:
        foreign = (await exchange(there, await signed_in(there))).json()["id_token"]
    answer = await http.get(
        "/logout", params={"id_token_hint": foreign, "post_logout_redirect_uri": AFTER_LOGOUT}
    )
    assert answer.status_code == 400


async def test_introspection_knows_only_its_own_access_tokens(
    issuer: DevIssuer, http: httpx.AsyncClient
) -> None:
    tokens = (await exchange(http, await signed_in(http, "alice"))).json()

    async def introspect(token: str, auth: tuple[str, str] = AUTH) -> httpx.Response:
        return await http.post("/introspect", data={"token": token}, auth=auth)

    active = (await introspect(tokens["access_token"])).json()
    assert (active["active"], active["sub"], active["roles"]) == (True, "alice", ["reader"])
    for token in (tokens["id_token"], tokens["refresh_token"], "garbage", issuer.mint("admin", lifetime=-10)):
        assert (await introspect(token)).json() == {"active": False}
    assert (await introspect(tokens["access_token"], ("reader", DEMO_SECRET))).status_code == 401


# -- the bounds, with a clock of our own ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def a_request(verifier: str) -> AuthorizationRequest:
    return AuthorizationRequest(CLIENT, CALLBACK, "s", "openid", "n", s256(verifier))


def redeem_form(code: str, verifier: str) -> dict[str, str]:
    return {"code": code, "redirect_uri": CALLBACK, "code_verifier": verifier}


def test_codes_expire_and_are_bounded_in_number() -> None:
    clock = Clock()
    sign_ins = SignIns(clock)
    verifier = secrets.token_urlsafe(48)
    late = sign_ins.issue_code(a_request(verifier), Person("alice", "reader"))
    clock.now += CODE_LIFETIME
    with pytest.raises(Refused, match="invalid_grant: unknown or expired code"):
        sign_ins.redeem(CLIENT, redeem_form(late, verifier))

    codes = [
        sign_ins.issue_code(a_request(verifier), Person("alice", "reader")) for _ in range(MAX_CODES + 5)
    ]
    assert len(sign_ins.codes) == MAX_CODES
    with pytest.raises(Refused, match="unknown or expired code"):
        sign_ins.redeem(CLIENT, redeem_form(codes[0], verifier))  # the oldest went first
    assert sign_ins.redeem(CLIENT, redeem_form(codes[-1], verifier)).subject == "alice"


def test_refresh_tokens_are_bounded_in_number() -> None:
    sign_ins = SignIns(Clock())
    grant = RefreshGrant(CLIENT.client_id, "bob", "openid", "sid-1", 0)
    tokens = [sign_ins.issue_refresh_token(grant) for _ in range(MAX_GRANTS + 5)]
    assert len(sign_ins.grants) == MAX_GRANTS
    assert sign_ins.grants.get(tokens[0]) is None
    assert sign_ins.rotate(CLIENT, tokens[-1]) == grant


def test_s256_is_rfc_7636_appendix_b() -> None:
    assert (
        s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_every_page_value_is_escaped() -> None:
    hostile = AuthorizationRequest(CLIENT, CALLBACK, '"><script>x</script>', "openid", "<b>", s256("v" * 43))
    page = sign_in_page("/authorize", hostile, [Person("alice", "reader")])
    assert "<script>" not in page
    assert "<b>" not in page
    assert form_of(page).hidden["state"] == '"><script>x</script>'  # as the browser will post it
