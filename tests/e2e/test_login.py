"""Browser login through a real sidecar, against the test provider, over real sockets: a page load is
sent to sign in and comes back to where it was going with a session; the application sees the
session's identity and never the sidecar's cookies; API calls keep their 401; sign-out ends the
session in the store (the old cookie is refused afterwards) and continues at the provider; refresh
happens once for concurrent requests; a failed refresh ends the session cleanly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.idp import IdP, run_idp
from tests.support.login import free_port, wait_for_login
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream

SECRET = "0123456789abcdef0123456789abcdef-test"
PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


def login_settings(idp: IdP, port: int, **overrides: Any) -> dict[str, Any]:
    return {
        "port": port,
        "allow_anonymous": False,
        "login": True,
        "oidc_issuer_url": idp.issuer,
        "oidc_audience": ("api",),
        "oidc_client_id": "authcar",
        "oidc_client_secret": "authcar-secret",
        "oidc_redirect_url": f"http://127.0.0.1:{port}/oauth2/callback",
        "cookie_secret": SECRET,
        "cookie_secure": False,
        **overrides,
    }


@pytest.fixture
async def sidecar(idp: IdP, upstream: RunningUpstream) -> AsyncIterator[RunningSidecar]:
    port = free_port()
    async with start_sidecar(upstream.url, **login_settings(idp, port)) as running:
        await wait_for_login(running.url)
        yield running


async def sign_in(http: httpx.AsyncClient, sidecar: RunningSidecar, target: str) -> httpx.Response:
    """Open `target` as a browser would, following the login's redirects; the final answer."""
    answer = await http.get(sidecar.url + target, headers=PAGE)
    assert answer.status_code == 302, answer.text
    start = answer.headers["location"]
    assert start.startswith("/oauth2/start?rd=")
    answer = await http.get(sidecar.url + start)
    assert answer.status_code == 302
    authorize = answer.headers["location"]
    answer = await http.get(authorize)  # the provider signs idp.user in by itself
    assert answer.status_code == 302, answer.text
    callback = answer.headers["location"]
    assert callback.startswith(sidecar.url + "/oauth2/callback?")
    answer = await http.get(callback)
    assert answer.status_code == 302, answer.text
    back = answer.headers["location"]
    return await http.get(sidecar.url + back if back.startswith("/") else back, headers=PAGE)


async def test_a_page_load_signs_in_and_returns_to_the_original_url(
    idp: IdP, sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await sign_in(http, sidecar, "/books/7?page=2&sort=title")
    assert answer.status_code == 200
    [seen] = upstream.seen
    assert seen.raw_path == "/books/7?page=2&sort=title"
    assert seen.header("x-auth-request-user") == "alice"
    assert seen.header("x-auth-request-email") in (None, "alice@example.com")
    assert "reader" in (seen.header("x-auth-request-groups") or "")
    assert seen.header("x-auth-request-access-token") is None  # not without AUTHCAR_PASS_ACCESS_TOKEN
    # The session id is the browser's secret: the application never sees the sidecar's cookies.
    assert not any("authcar" in value for value in seen.all("cookie"))


async def test_the_session_cookie_is_host_only_httponly_and_the_id_rotates(
    idp: IdP, sidecar: RunningSidecar
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        # A session id the browser brings (fixation) is never the one it leaves with.
        http.cookies.set("authcar", "attacker-chosen-session-id-0123456789", domain="127.0.0.1")
        answer = await http.get(sidecar.url + "/", headers=PAGE)
        start = await http.get(sidecar.url + answer.headers["location"])
        provider = await http.get(start.headers["location"])
        callback = await http.get(provider.headers["location"])
    cookies = callback.headers.get_list("set-cookie")
    [session] = [c for c in cookies if c.startswith("authcar=")]
    value = session.split(";")[0].removeprefix("authcar=")
    assert value != "attacker-chosen-session-id-0123456789"
    assert len(value) >= 43
    attributes = {part.strip().split("=")[0].lower() for part in session.split(";")[1:]}
    assert {"path", "httponly", "samesite"} <= attributes
    assert "domain" not in attributes
    assert callback.headers["cache-control"] == "no-store"


async def test_api_calls_get_401_json_not_a_redirect(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for headers in (
            {"Accept": "application/json"},
            {"Accept": "*/*"},
            {**PAGE, "X-Requested-With": "XMLHttpRequest"},
            {**PAGE, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
            {},
        ):
            answer = await http.get(sidecar.url + "/books", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.json()["error"] == "no_credentials"
            assert answer.headers["www-authenticate"].startswith("Bearer")
        post = await http.post(sidecar.url + "/books", headers=PAGE, content=b"x")
        assert post.status_code == 401  # only GET/HEAD page loads are sent to sign in
    assert upstream.seen == []


async def test_bearer_tokens_still_work_beside_login(
    idp: IdP, sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(
            sidecar.url + "/books", headers={**PAGE, "Authorization": f"Bearer {idp.mint(sub='bob')}"}
        )
        bad = await http.get(sidecar.url + "/books", headers={**PAGE, "Authorization": "Bearer nonsense"})
    assert answer.status_code == 200
    assert bad.status_code == 401  # a bad token is never "no token": no redirect, no session fallback
    [seen] = upstream.seen
    assert seen.header("x-auth-request-user") == "bob"


async def test_sign_out_ends_the_session_and_the_old_cookie_is_refused(
    idp: IdP, sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await sign_in(http, sidecar, "/")).status_code == 200
        session = http.cookies.get("authcar")
        assert session
        out = await http.get(sidecar.url + "/oauth2/sign_out")
        assert out.status_code == 302
        location = urlsplit(out.headers["location"])
        assert location._replace(query="").geturl() == idp.end_session_endpoint
        query = parse_qs(location.query)
        assert query["client_id"] == ["authcar"]
        assert "id_token_hint" in query
        assert any(c.startswith("authcar=") and "Max-Age=0" in c for c in out.headers.get_list("set-cookie"))
    # The old cookie, replayed by someone who kept it:
    async with httpx.AsyncClient(timeout=10) as replay:
        replay.cookies.set("authcar", session, domain="127.0.0.1")
        answer = await replay.get(sidecar.url + "/", headers={"Accept": "application/json"})
        userinfo = await replay.get(sidecar.url + "/oauth2/userinfo")
    assert answer.status_code == 401
    assert userinfo.status_code == 401
    assert len(upstream.seen) == 1


async def test_userinfo_shows_who_without_any_token(idp: IdP, sidecar: RunningSidecar) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, sidecar, "/")
        answer = await http.get(sidecar.url + "/oauth2/userinfo")
    assert answer.status_code == 200
    body = answer.json()
    assert body["sub"] == "alice"
    assert body["groups"] == ["reader"]
    text = answer.text
    for forbidden in ("access_token", "refresh_token", "id_token", "eyJ"):
        assert forbidden not in text
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "query",
    [
        "",  # no state at all
        "state=x&code=y",  # a state with no cookie
        "state=x&error=access_denied",
        "state=x&state=y&code=z",
    ],
)
async def test_a_callback_that_is_not_ours_sets_no_session(
    sidecar: RunningSidecar, upstream: RunningUpstream, query: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{sidecar.url}/oauth2/callback?{query}")
    assert answer.status_code in (400, 403)
    assert answer.headers["content-type"].startswith("text/html")
    assert not any(
        c.startswith("authcar=") and "Max-Age=0" not in c for c in answer.headers.get_list("set-cookie")
    )
    assert upstream.seen == []


async def test_a_reused_state_is_refused_and_sets_no_session(idp: IdP, sidecar: RunningSidecar) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        start = await http.get(sidecar.url + "/oauth2/start?rd=/x")
        provider = await http.get(start.headers["location"])
        callback = provider.headers["location"]
        state_cookies = dict(http.cookies)
        first = await http.get(callback)
        assert first.status_code == 302
    async with httpx.AsyncClient(timeout=10) as again:
        for name, value in state_cookies.items():
            again.cookies.set(name, value, domain="127.0.0.1")
        second = await again.get(callback)
    assert second.status_code == 403
    assert not any(
        c.startswith("authcar=") and "Max-Age=0" not in c for c in second.headers.get_list("set-cookie")
    )


async def test_a_provider_error_renders_a_page_and_sets_no_session(idp: IdP, sidecar: RunningSidecar) -> None:
    idp.user = None  # the provider refuses every login (access_denied)
    async with httpx.AsyncClient(timeout=10) as http:
        start = await http.get(sidecar.url + "/oauth2/start")
        provider = await http.get(start.headers["location"])
        answer = await http.get(provider.headers["location"])
    assert answer.status_code == 403
    assert "<main>" in answer.text
    assert "Sign-in" in answer.text
    assert not any(
        c.startswith("authcar=") and "Max-Age=0" not in c for c in answer.headers.get_list("set-cookie")
    )


def made_a_session(answer: httpx.Response) -> bool:
    return any(
        c.startswith("authcar=") and "Max-Age=0" not in c for c in answer.headers.get_list("set-cookie")
    )


@pytest.mark.parametrize("mode", ["huge", "nested", "garbage", "reset", "down"])
async def test_a_token_endpoint_that_misbehaves_ends_the_login_with_a_page(
    idp: IdP, sidecar: RunningSidecar, upstream: RunningUpstream, mode: str
) -> None:
    # 4 MiB answers, 50,000-deep JSON, bytes that are not JSON, a reset connection, a 503.
    async with httpx.AsyncClient(timeout=30) as http:
        start = await http.get(sidecar.url + "/oauth2/start?rd=/x")
        provider = await http.get(start.headers["location"])
        idp.set_mode(mode, ["token"])  # type: ignore[arg-type]
        answer = await http.get(provider.headers["location"])
    assert answer.status_code in (403, 502)
    assert answer.headers["content-type"].startswith("text/html")
    assert not made_a_session(answer)
    assert upstream.seen == []


@pytest.mark.parametrize("mode", ["huge", "garbage", "down"])
async def test_a_userinfo_that_misbehaves_leaves_the_id_tokens_claims(
    idp: IdP, sidecar: RunningSidecar, upstream: RunningUpstream, mode: str
) -> None:
    idp.set_mode(mode, ["userinfo"])  # type: ignore[arg-type]
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await sign_in(http, sidecar, "/x")
    assert answer.status_code == 200
    [seen] = upstream.seen
    assert seen.header("x-auth-request-user") == "alice"


async def test_pass_access_token_gives_the_app_the_session_token(idp: IdP, upstream: RunningUpstream) -> None:
    port = free_port()
    async with start_sidecar(upstream.url, **login_settings(idp, port, pass_access_token=True)) as running:
        await wait_for_login(running.url)
        async with httpx.AsyncClient(timeout=10) as http:
            await sign_in(http, running, "/")
            # A client's own header of that name never reaches the app.
            await http.get(running.url + "/again", headers={**PAGE, "X-Auth-Request-Access-Token": "forged"})
    tokens = [seen.all("x-auth-request-access-token") for seen in upstream.seen]
    assert all(len(values) == 1 and values[0] != "forged" and values[0].count(".") == 2 for values in tokens)


async def test_concurrent_requests_refresh_once_and_a_refused_refresh_ends_the_session(
    idp: IdP, upstream: RunningUpstream
) -> None:
    idp.token_lifetime = 2  # the refresh margin is a fifth of it: due 1.6 s after sign-in
    port = free_port()
    async with start_sidecar(upstream.url, **login_settings(idp, port)) as running:
        await wait_for_login(running.url)
        async with httpx.AsyncClient(timeout=10) as http:
            await sign_in(http, running, "/")
            await asyncio.sleep(1.7)
            answers = await asyncio.gather(*(http.get(running.url + "/", headers=PAGE) for _ in range(8)))
            assert [a.status_code for a in answers] == [200] * 8
            assert sum(idp.refreshes.values()) == 1
            # The provider ends the grant: the next refresh is refused and the session ends with it.
            for grant in idp.grants.values():
                grant.revoked = True
            await asyncio.sleep(1.7)
            ended = await http.get(running.url + "/", headers={"Accept": "application/json"})
            assert ended.status_code == 401
            again = await http.get(running.url + "/", headers=PAGE)
            assert again.status_code == 302
            assert again.headers["location"].startswith("/oauth2/start")


async def test_a_provider_without_introspection_becomes_ready_and_signs_people_in(
    idp: IdP, upstream: RunningUpstream
) -> None:
    # Many providers (Google, Auth0...) have no RFC 7662 endpoint: client credentials are then for
    # login only, and opaque tokens are refused instead of keeping the sidecar unready for good.
    discovery = {k: v for k, v in idp.discovery().items() if not k.startswith("introspection_")}
    idp.raw_answers["discovery"] = json.dumps(discovery).encode()
    port = free_port()
    async with start_sidecar(upstream.url, **login_settings(idp, port)) as running:
        await wait_for_login(running.url)
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(500):
                ready = await http.get(running.admin_url + "/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert ready.status_code == 200, ready.text
            assert "opaque tokens get 401" in ready.text
            opaque = await http.get(
                running.url + "/", headers={"Authorization": f"Bearer {idp.mint_opaque(sub='alice')}"}
            )
            assert opaque.status_code == 401
            assert (await sign_in(http, running, "/x")).status_code == 200


async def wait_until(condition: Any, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


@pytest.mark.parametrize("ending", ["sign_out", "backchannel"])
async def test_a_session_ended_while_its_refresh_is_under_way_stays_ended(
    idp: IdP, upstream: RunningUpstream, ending: str
) -> None:
    # A refresh that was already at the provider when the session ended must not write the record
    # back: sign-out (or the provider's back-channel logout) would be undone by a request in flight.
    idp.token_lifetime = 2
    port = free_port()
    async with start_sidecar(upstream.url, **login_settings(idp, port)) as running:
        await wait_for_login(running.url)
        async with httpx.AsyncClient(timeout=30) as http:
            await sign_in(http, running, "/")
            session = http.cookies.get("authcar")
            sid = idp.sessions_of("alice")[-1]
            await asyncio.sleep(1.7)  # the refresh is due
            idp.set_mode("slow", ["token"], delay=3.0)
            in_flight = asyncio.create_task(http.get(running.url + "/during", headers=PAGE))
            await wait_until(lambda: idp.in_flight["token"] == 1, "the refresh reached the provider")
            if ending == "sign_out":
                out = await http.get(running.url + "/oauth2/sign_out")
                assert out.status_code == 302
            else:
                async with httpx.AsyncClient(timeout=10) as provider:
                    out = await provider.post(
                        running.url + "/oauth2/backchannel_logout",
                        data={"logout_token": idp.logout_token(sid=sid)},
                    )
                assert out.status_code == 200, out.text
                assert out.json() == {"sessions_ended": 1}
            await in_flight  # the refresh finishes after the session ended
            idp.set_mode("normal")
        async with httpx.AsyncClient(timeout=10) as replay:
            replay.cookies.set("authcar", session, domain="127.0.0.1")
            answer = await replay.get(running.url + "/after", headers={"Accept": "application/json"})
            userinfo = await replay.get(running.url + "/oauth2/userinfo")
    assert answer.status_code == 401
    assert userinfo.status_code == 401
    assert "/after" not in upstream.paths()


async def test_a_refresh_keeps_the_claims_only_userinfo_gave(idp: IdP, upstream: RunningUpstream) -> None:
    # The test provider, like Keycloak without a groups mapper on the ID token, says the groups only
    # in userinfo: a refresh's new ID token must not silently take the person's roles away.
    idp.token_lifetime = 2
    port = free_port()
    async with start_sidecar(upstream.url, **login_settings(idp, port)) as running:
        await wait_for_login(running.url)
        async with httpx.AsyncClient(timeout=10) as http:
            await sign_in(http, running, "/before")
            await asyncio.sleep(1.7)  # the refresh is due
            after = await http.get(running.url + "/after", headers=PAGE)
            info = await http.get(running.url + "/oauth2/userinfo")
    assert after.status_code == 200
    assert sum(idp.refreshes.values()) == 1
    before_seen, after_seen = upstream.seen
    assert "reader" in (before_seen.header("x-auth-request-groups") or "")
    assert after_seen.raw_path == "/after"
    assert after_seen.header("x-auth-request-user") == "alice"
    assert after_seen.header("x-auth-request-groups") == before_seen.header("x-auth-request-groups")
    assert "reader" in info.json()["groups"]


async def test_a_session_whose_claims_the_policy_cannot_read_passes_nothing_of_it_on(
    idp: IdP, upstream: RunningUpstream
) -> None:
    # A session the claim mapping refuses (here: more roles than a request may carry) is no session:
    # not its access token beside an anonymous request, and /oauth2/userinfo says 401, not 502.
    from authcar.claims import MAX_ROLES

    idp.login_as("dave", roles=[f"role-{index}" for index in range(MAX_ROLES + 1)])
    port = free_port()
    settings = login_settings(idp, port, allow_anonymous=True, pass_access_token=True)
    async with start_sidecar(upstream.url, **settings) as running:
        await wait_for_login(running.url)
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(running.url + "/oauth2/start?rd=/anonymous")
            answer = await http.get(answer.headers["location"])
            answer = await http.get(answer.headers["location"])  # the callback
            assert answer.status_code == 302
            assert http.cookies.get("authcar")
            page = await http.get(running.url + "/anonymous", headers=PAGE)
            info = await http.get(running.url + "/oauth2/userinfo")
    assert page.status_code == 200
    [seen] = upstream.seen
    assert seen.header("x-auth-request-user") is None
    assert seen.header("x-auth-request-access-token") is None
    assert info.status_code == 401
    assert info.json()["error"] == "no_session"


async def test_a_websocket_opened_with_the_session_is_its_identity_without_its_cookies(
    idp: IdP, sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    import aiohttp

    async with httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, sidecar, "/")
        session = http.cookies.get("authcar")
    cookie = f"theme=dark; authcar={session}; lang=en"
    url = sidecar.url.replace("http", "ws") + "/ws"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client,
        client.ws_connect(url, headers={"Cookie": cookie}) as ws,
    ):
        await ws.send_str("hi")
        assert (await ws.receive()).data == "echo:hi"
    [handshake] = [seen for seen in upstream.seen if seen.raw_path == "/ws"]
    assert handshake.header("x-auth-request-user") == "alice"
    assert handshake.all("cookie") == ["theme=dark; lang=en"]


async def test_unfinished_sign_ins_cannot_fill_the_cookie_header(idp: IdP, sidecar: RunningSidecar) -> None:
    # A page (or a site linking here) can start sign-in after sign-in; each leaves a cookie for ten
    # minutes. Past a few, /oauth2/start forgets the old ones, so the browser's Cookie header stays
    # small, and the newest attempt still signs in.
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(40):
            start = await http.get(sidecar.url + "/oauth2/start?rd=/x")
            assert start.status_code == 302
        pending = [name for name in http.cookies if "-login-" in name]
        assert 1 <= len(pending) <= 5
        provider = await http.get(start.headers["location"])
        back = await http.get(provider.headers["location"])
        assert back.status_code == 302
        assert back.headers["location"] == "/x"


async def test_the_application_cannot_set_the_sidecars_cookies(idp: IdP, sidecar: RunningSidecar) -> None:
    # An application (or a header injection in it) setting the session cookie would sign the browser
    # in as a session of someone else's choosing; its own cookies pass.
    async with httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, sidecar, "/")
        values = [
            "authcar=attacker-session-id-0123456789abcdef; Path=/",
            "authcar-login-0123456789abcdef=v1.x.y; Path=/",
            "AUTHCAR=x",
            "theme=dark; Path=/",
        ]
        answer = await http.get(sidecar.url + "/set-cookie", params=[("c", v) for v in values], headers=PAGE)
    assert answer.status_code == 200
    assert answer.headers.get_list("set-cookie") == ["theme=dark; Path=/"]


@pytest.mark.parametrize(
    ("origin", "admitted"),
    [
        (None, True),  # no browser page: a program with the cookie
        ("{own}", True),
        ("https://evil.example", False),
        ("null", False),  # a sandboxed frame or a file: page
        ("{own}.evil.example", False),
        ("{own}/path", False),  # an Origin carries no path
    ],
)
async def test_a_websocket_from_another_sites_page_does_not_get_the_session(
    idp: IdP, sidecar: RunningSidecar, upstream: RunningUpstream, origin: str | None, admitted: bool
) -> None:
    # With SameSite=None a browser sends our cookie on a cross-site WebSocket handshake: a page on
    # another site could talk to the application as the signed-in person (CSWSH).
    import aiohttp

    async with httpx.AsyncClient(timeout=10) as http:
        await sign_in(http, sidecar, "/")
        session = http.cookies.get("authcar")
    headers = {"Cookie": f"authcar={session}"}
    if origin is not None:
        headers["Origin"] = origin.format(own=sidecar.url)
    upstream.seen.clear()
    url = sidecar.url.replace("http", "ws") + "/ws"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        if admitted:
            async with client.ws_connect(url, headers=headers) as ws:
                await ws.send_str("hi")
                assert (await ws.receive()).data == "echo:hi"
            [handshake] = upstream.seen
            assert handshake.header("x-auth-request-user") == "alice"
        else:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect(url, headers=headers)
            assert refused.value.status == 401
            assert upstream.seen == []
