"""The authentication chain through the running sidecar: token sources, scopes, several issuers,
client-certificate identity, public paths and CORS preflight. Refusals assert the status, the
challenge, and that the upstream saw nothing."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.e2e.test_tls_listener import client_context, publish
from tests.idp import IdP, run_idp
from tests.support.rawhttp import send_raw
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.tls_material import CertAuthority, SecretVolume
from tests.support.upstream_app import RunningUpstream


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


def guarded(upstream: RunningUpstream, idp: IdP, **settings: object):  # type: ignore[no-untyped-def]
    return start_sidecar(
        upstream.url, allow_anonymous=False, oidc_issuer_url=idp.issuer, oidc_audience=("api",), **settings
    )


async def get(sidecar: RunningSidecar, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client:
        return await client.get(path, headers=headers)


def assert_invalid_request(response: httpx.Response, upstream: RunningUpstream) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="authcar", error="invalid_request", error_description="'
    )
    assert upstream.seen == []


# --- token sources ----------------------------------------------------------------------------


async def test_a_token_in_the_named_cookie_is_accepted(upstream: RunningUpstream, idp: IdP) -> None:
    async with guarded(upstream, idp, token_cookie="access") as sidecar:
        response = await get(sidecar, "/c", cookie=f"theme=dark; access={idp.mint()}")
        assert response.status_code == 200, response.text
        other = await get(sidecar, "/c", cookie=f"session={idp.mint()}")
        assert other.status_code == 401
        assert other.json()["error"] == "no_credentials"
    assert [seen.raw_path for seen in upstream.seen] == ["/c"]


async def test_cookies_are_not_a_token_source_unless_named(upstream: RunningUpstream, idp: IdP) -> None:
    async with guarded(upstream, idp) as sidecar:
        response = await get(sidecar, "/c", cookie=f"access={idp.mint()}")
    assert response.status_code == 401
    assert upstream.seen == []


async def test_two_token_cookies_are_refused(upstream: RunningUpstream, idp: IdP) -> None:
    async with guarded(upstream, idp, token_cookie="access") as sidecar:
        response = await get(sidecar, "/c", cookie=f"access={idp.mint()}; access={idp.mint(sub='eve')}")
    assert_invalid_request(response, upstream)


async def test_the_header_wins_over_the_cookie_and_a_bad_header_is_not_rescued(
    upstream: RunningUpstream, idp: IdP
) -> None:
    async with guarded(upstream, idp, token_cookie="access") as sidecar:
        good_header = await get(sidecar, "/h", authorization=f"Bearer {idp.mint()}", cookie="access=garbage")
        bad_header = await get(sidecar, "/h", authorization="Bearer garbage", cookie=f"access={idp.mint()}")
    assert good_header.status_code == 200
    assert bad_header.status_code == 401
    assert bad_header.json()["error"] == "malformed"
    assert len(upstream.seen) == 1


async def test_query_tokens_are_refused_by_default(upstream: RunningUpstream, idp: IdP) -> None:
    async with guarded(upstream, idp) as sidecar:
        response = await get(sidecar, f"/q?access_token={idp.mint()}")
    assert_invalid_request(response, upstream)


async def test_an_enabled_query_token_is_accepted_and_not_forwarded(
    upstream: RunningUpstream, idp: IdP
) -> None:
    async with guarded(upstream, idp, allow_query_token=True) as sidecar:
        response = await get(sidecar, f"/q?a=1%2F2&access_token={idp.mint()}&b=+x&c")
        assert response.status_code == 200, response.text
        twice = await get(sidecar, f"/q?access_token={idp.mint()}&access_token={idp.mint()}")
        both = await get(sidecar, f"/q?access_token={idp.mint()}", authorization=f"Bearer {idp.mint()}")
    assert twice.status_code == 400
    assert twice.json()["error"] == "invalid_request"
    assert both.status_code == 400
    assert both.json()["error"] == "invalid_request"
    # The other parameters reach the app exactly as sent; the token does not reach it at all.
    assert [seen.raw_path for seen in upstream.seen] == ["/q?a=1%2F2&b=+x&c"]


async def test_access_token_as_a_value_is_not_a_token(upstream: RunningUpstream, idp: IdP) -> None:
    async with guarded(upstream, idp) as sidecar:
        response = await get(sidecar, "/q?q=access_token", authorization=f"Bearer {idp.mint()}")
    assert response.status_code == 200
    assert [seen.raw_path for seen in upstream.seen] == ["/q?q=access_token"]


# --- scopes -----------------------------------------------------------------------------------


async def test_a_token_without_a_required_scope_gets_403(upstream: RunningUpstream, idp: IdP) -> None:
    async with guarded(upstream, idp, oidc_required_scopes=("books:write",)) as sidecar:
        refused = await get(sidecar, "/s", authorization=f"Bearer {idp.mint(scope='read')}")
        assert refused.status_code == 403
        assert refused.json()["error"] == "insufficient_scope"
        challenge = refused.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="books:write"' in challenge
        assert upstream.seen == []
        allowed = await get(sidecar, "/s", authorization=f"Bearer {idp.mint(scope='read books:write')}")
    assert allowed.status_code == 200
    assert len(upstream.seen) == 1


# --- several issuers --------------------------------------------------------------------------


async def test_the_tokens_iss_selects_among_several_issuers(upstream: RunningUpstream, idp: IdP) -> None:
    async with run_idp(issuer_path="/realms/partners", fresh_keys=True) as partner:
        issuers = [{"issuer_url": partner.issuer, "audience": ["partner-api"], "subject_claim": "email"}]
        async with guarded(upstream, idp, issuers=issuers) as sidecar:
            own = await get(sidecar, "/m", authorization=f"Bearer {idp.mint()}")
            theirs = await get(sidecar, "/m", authorization=f"Bearer {partner.mint(aud='partner-api')}")
            # Each issuer keeps its own audience...
            wrong_audience = await get(sidecar, "/m", authorization=f"Bearer {partner.mint(aud='api')}")
            # ...and its own keys: a partner-signed token claiming our issuer is refused.
            claims_ours = await get(sidecar, "/m", authorization=f"Bearer {partner.mint(iss=idp.issuer)}")
            async with httpx.AsyncClient() as client:
                ready = (await client.get(f"{sidecar.admin_url}/readyz")).json()
    assert own.status_code == 200
    assert theirs.status_code == 200, theirs.text
    assert wrong_audience.status_code == 401
    assert wrong_audience.json()["error"] == "wrong_audience"
    assert claims_ours.status_code == 401
    assert claims_ours.json()["error"] in ("unknown_key", "bad_signature")
    assert len(upstream.seen) == 2
    keys = ready["checks"]["keys"]
    assert keys["ok"] is True
    assert set(keys["issuers"]) == {idp.issuer, partner.issuer}


async def test_an_issuer_whose_provider_is_down_does_not_block_the_others(
    upstream: RunningUpstream, idp: IdP
) -> None:
    issuers = [{"issuer_url": "http://127.0.0.1:1/realms/gone", "audience": ["api"]}]
    async with guarded(upstream, idp, issuers=issuers) as sidecar:
        ok = await get(sidecar, "/d", authorization=f"Bearer {idp.mint()}")
        async with httpx.AsyncClient() as client:
            ready = await client.get(f"{sidecar.admin_url}/readyz")
    assert ok.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"]["keys"]["issuers"]["http://127.0.0.1:1/realms/gone"]["ok"] is False


# --- client certificates ----------------------------------------------------------------------


async def test_a_verified_client_certificate_identifies_the_caller(
    upstream: RunningUpstream, idp: IdP, tmp_path: Path
) -> None:
    ca = CertAuthority("test-ca")
    volume = SecretVolume(tmp_path / "tls")
    publish(volume, ca.issue_server(), ca)
    spiffe = "spiffe://cluster.local/ns/shop/sa/billing"
    with_uri = ca.issue_client("billing", [x509.UniformResourceIdentifier(spiffe)])
    common_name_only = ca.issue_client("reports", [x509.DNSName("reports.example")])
    tls = {
        "tls_cert_file": volume.path("tls.crt"),
        "tls_key_file": volume.path("tls.key"),
        "tls_client_ca_file": volume.path("ca.crt"),
    }
    stream = io.StringIO()
    async with guarded(upstream, idp, tls_client_cert_identity=True, access_log=True, **tls) as sidecar:
        sidecar.service.sidecar.access_log.stream = stream
        url = f"https://localhost:{sidecar.port}/cert"
        for client_cert, folder in ((with_uri, "a"), (common_name_only, "b")):
            (tmp_path / folder).mkdir()
            async with httpx.AsyncClient(verify=client_context(ca, client_cert, tmp_path / folder)) as c:
                assert (await c.get(url)).status_code == 200
                # A token still decides when one is sent, even alongside a certificate.
                bad = await c.get(url, headers={"Authorization": "Bearer garbage"})
                assert bad.status_code == 401
        sidecar.service.sidecar.access_log.flush()
    subjects = [json.loads(line)["subject"] for line in stream.getvalue().splitlines()]
    assert subjects == [spiffe, "", "reports", ""]
    assert len(upstream.seen) == 2


async def test_without_the_setting_a_client_certificate_is_not_an_identity(
    upstream: RunningUpstream, idp: IdP, tmp_path: Path
) -> None:
    ca = CertAuthority("test-ca")
    volume = SecretVolume(tmp_path / "tls")
    publish(volume, ca.issue_server(), ca)
    client_cert = ca.issue_client("billing", [x509.DNSName("billing.example")])
    async with (
        guarded(
            upstream,
            idp,
            tls_cert_file=volume.path("tls.crt"),
            tls_key_file=volume.path("tls.key"),
            tls_client_ca_file=volume.path("ca.crt"),
        ) as sidecar,
        httpx.AsyncClient(verify=client_context(ca, client_cert, tmp_path)) as client,
    ):
        response = await client.get(f"https://localhost:{sidecar.port}/cert")
    assert response.status_code == 401
    assert upstream.seen == []


# --- public paths and CORS preflight ------------------------------------------------------------


async def test_public_paths_match_the_normalised_path_and_method_only(
    upstream: RunningUpstream, idp: IdP
) -> None:
    requests = [
        "GET /healthz",
        "HEAD /healthz",
        "GET /healthz?x=/admin",
        "GET /%68ealthz",
        "GET //healthz",
        "POST /healthz",
        "GET /healthz/x",
        "GET /admin?p=/healthz",
        "DELETE /docs/a/b",
        "GET /docs",
        "GET /docsx",
    ]
    answers = {}
    async with guarded(upstream, idp, public_paths=("GET /healthz", "/docs/*")) as sidecar:
        for line in requests:
            raw = f"{line} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            answers[line] = (await send_raw(sidecar.port, raw.encode(), head=line.startswith("HEAD"))).status
    assert answers == {
        "GET /healthz": 200,
        "HEAD /healthz": 200,
        "GET /healthz?x=/admin": 200,
        "GET /%68ealthz": 200,
        "GET //healthz": 200,
        "POST /healthz": 401,
        "GET /healthz/x": 401,
        "GET /admin?p=/healthz": 401,
        "DELETE /docs/a/b": 200,
        "GET /docs": 401,
        "GET /docsx": 401,
    }
    # What was checked is what was forwarded: the normalised path, byte for byte.
    assert [seen.raw_path for seen in upstream.seen] == [
        "/healthz",
        "/healthz",
        "/healthz?x=/admin",
        "/healthz",
        "/healthz",
        "/docs/a/b",
    ]


@pytest.mark.parametrize(
    "target",
    [
        "/docs/../admin",
        "/docs/%2e%2e/admin",
        "/docs/%2E%2e/admin",
        "/docs%2f..%2fadmin",
        "/docs/..%5cadmin",
        "/docs/%252e%252e/admin",
        "/docs/;/admin",
        "/docs/x;jsessionid=1",
        "/docs/%00",
        "/docs/%zz",
    ],
)
async def test_ambiguous_paths_are_refused_before_public_paths_match(
    upstream: RunningUpstream, idp: IdP, target: str
) -> None:
    async with guarded(upstream, idp, public_paths=("/docs/*",)) as sidecar:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        response = await send_raw(sidecar.port, request.encode())
    assert response.status == 400, response.body
    assert upstream.seen == []


async def test_cors_preflight_passes_only_when_enabled(upstream: RunningUpstream, idp: IdP) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    enabled = guarded(upstream, idp, public_cors_preflight=True)
    async with enabled as sidecar, httpx.AsyncClient(base_url=sidecar.url) as client:
        allowed = await client.options("/books", headers=preflight)
        plain_options = await client.options("/books")
    async with guarded(upstream, idp) as sidecar, httpx.AsyncClient(base_url=sidecar.url) as client:
        disabled = await client.options("/books", headers=preflight)
    assert allowed.status_code == 200
    assert plain_options.status_code == 401
    assert disabled.status_code == 401
    assert [(seen.method, seen.raw_path) for seen in upstream.seen] == [("OPTIONS", "/books")]


# --- opaque tokens ------------------------------------------------------------------------------


async def test_opaque_tokens_are_introspected_and_cached(upstream: RunningUpstream, idp: IdP) -> None:
    credentials = {"oidc_client_id": "authcar", "oidc_client_secret": "authcar-secret"}
    async with guarded(upstream, idp, **credentials) as sidecar:
        opaque = idp.mint_opaque(sub="olivia")
        first = await get(sidecar, "/o", authorization=f"Bearer {opaque}")
        second = await get(sidecar, "/o", authorization=f"Bearer {opaque}")
        calls_after_two = idp.introspections
        unknown = await get(sidecar, "/o", authorization="Bearer not-a-token-we-issued")
        jwt_still_local = await get(sidecar, "/o", authorization=f"Bearer {idp.mint()}")
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{sidecar.admin_url}/metrics")).text
    assert first.status_code == 200, first.text
    assert second.status_code == 200
    assert calls_after_two == 1  # the second request was answered from the store
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "inactive"
    assert jwt_still_local.status_code == 200
    assert idp.introspections == 2  # the JWT was verified locally, never introspected
    assert len(upstream.seen) == 3
    assert 'authcar_introspection_seconds_count{result="active"} 1.0' in metrics
    assert 'authcar_token_validations_total{result="valid_cached"} 1.0' in metrics


async def test_without_client_credentials_opaque_tokens_are_refused(
    upstream: RunningUpstream, idp: IdP
) -> None:
    async with guarded(upstream, idp) as sidecar:
        response = await get(sidecar, "/o", authorization=f"Bearer {idp.mint_opaque()}")
    assert response.status_code == 401
    assert response.json()["error"] == "malformed"
    assert idp.introspections == 0
    assert upstream.seen == []
