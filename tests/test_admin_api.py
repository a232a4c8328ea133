"""The admin API in process: its JSON validation (each mistake its own 400 code), its token check
(401 without or with a wrong token, 404 for the whole /api/ tree without a configured one) and its
answers. Over real sockets, against two sidecars sharing Redis: tests/e2e/test_revocations.py."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from authcar.admin import build_admin_app
from authcar.admin_api import MAX_BODY_BYTES, parse_revocation
from authcar.config import Settings
from authcar.errors import BadRequest
from authcar.observe import Metrics
from authcar.revocation import DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN, Revocation, RevocationList
from authcar.store import MemoryStore

TOKEN = "admin-token-" + "x" * 40
AUTH = {"authorization": f"Bearer {TOKEN}"}
ERROR_FIELDS = {"error", "error_description", "request_id"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"jti=abc", "invalid_json"),
        (b'["jti", "abc"]', "invalid_json"),
        (b'"abc"', "invalid_json"),
        (b'{"jti": "a", "jti": "b"}', "invalid_json"),
        (b'{"jti": {"nested": "x"}}', "invalid_value_type"),
        (b'{"jti": [["x"]]}', "invalid_json"),
        (b'{"jti": "\\ud800"}', "invalid_json"),
        (b'{"jti": "a", "expires_in": NaN}', "invalid_json"),
        (b'{"jti": "a", "expires_in": 1e999}', "invalid_json"),
        (b'{"jti": "a", "expires_in": 123456789012345678901234567890}', "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"{}", "missing_kind"),
        (b'{"expires_in": 5}', "missing_kind"),
        (b'{"jti": "a", "kid": "b"}', "unknown_member"),
        (b'{"JTI": "a"}', "unknown_member"),
        (b'{"jti": "a", "sub": "b"}', "several_kinds"),
        (b'{"jti": "a", "sub": "b", "sid": "c"}', "several_kinds"),
        (b'{"jti": 1}', "invalid_value_type"),
        (b'{"sub": null}', "invalid_value_type"),
        (b'{"sid": ["a"]}', "invalid_value_type"),
        (b'{"sub": true}', "invalid_value_type"),
        (b'{"jti": ""}', "empty_value"),
        (json.dumps({"sub": "a" * 256}).encode(), "value_too_long"),
        (json.dumps({"sub": "\u00e9" * 128}).encode(), "value_too_long"),  # 256 UTF-8 bytes
        (b'{"jti": "a\\nb"}', "invalid_value"),
        (b'{"jti": "a\\u0000"}', "invalid_value"),
        (b'{"jti": "\\u202e"}', "invalid_value"),
        (b'{"jti": "a", "expires_in": 0}', "invalid_expires_in"),
        (b'{"jti": "a", "expires_in": -5}', "invalid_expires_in"),
        (b'{"jti": "a", "expires_in": "60"}', "invalid_expires_in"),
        (b'{"jti": "a", "expires_in": true}', "invalid_expires_in"),
        (b'{"jti": "a", "expires_in": null}', "invalid_expires_in"),
        (json.dumps({"jti": "a", "expires_in": MAX_EXPIRES_IN + 1}).encode(), "invalid_expires_in"),
        (b'{"jti": "a", "expires_in": 1e300}', "invalid_expires_in"),
    ],
)
def test_every_mistake_in_a_body_is_a_400_with_its_own_code(body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_revocation(body)
    assert refused.value.code == code


@pytest.mark.parametrize(
    ("body", "entry"),
    [
        (b'{"jti": "abc"}', Revocation("jti", "abc", DEFAULT_EXPIRES_IN)),
        (b'{"sub": "alice", "expires_in": 60}', Revocation("sub", "alice", 60.0)),
        (b'{"expires_in": 0.5, "sid": "s 1"}', Revocation("sid", "s 1", 0.5)),
        (json.dumps({"sub": "\u00e9" * 127 + "a"}).encode(), Revocation("sub", "\u00e9" * 127 + "a")),
        (
            json.dumps({"jti": "x", "expires_in": MAX_EXPIRES_IN}).encode(),
            Revocation("jti", "x", MAX_EXPIRES_IN),
        ),
    ],
)
def test_well_formed_bodies_name_their_entry(body: bytes, entry: Revocation) -> None:
    assert parse_revocation(body) == entry


def admin_client(admin_token: str | None, max_entries: int = 10) -> httpx.AsyncClient:
    revocations = RevocationList(MemoryStore(), fail_open=False, max_entries=max_entries)

    async def readiness() -> dict[str, Any]:
        return {"config": {"ok": True}}

    sidecar = SimpleNamespace(
        settings=Settings(admin_token=admin_token),
        revocations=revocations,
        metrics=Metrics(),
        readiness=readiness,
    )
    app = build_admin_app(sidecar)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == ERROR_FIELDS
    assert response.json()["error"] == code


async def test_without_a_configured_token_the_whole_api_tree_is_absent_and_probes_stay() -> None:
    async with admin_client(None) as client:
        for method, path in [
            ("GET", "/api/v1/revocations"),
            ("POST", "/api/v1/revocations"),
            ("GET", "/api/"),
        ]:
            response = await client.request(method, path, headers=AUTH, content=b'{"jti": "a"}')
            assert_error(response, 404, "not_found")
        assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("headers", "code", "challenge"),
    [
        ({}, "no_credentials", 'Bearer realm="authcar"'),
        ({"authorization": f"Basic {TOKEN}"}, "no_credentials", 'Bearer realm="authcar"'),
        ({"authorization": "Bearer "}, "no_credentials", 'Bearer realm="authcar"'),
        (
            {"authorization": f"Bearer {TOKEN}x"},
            "invalid_admin_token",
            'Bearer realm="authcar", error="invalid_token"',
        ),
        ({"authorization": f"Bearer {TOKEN[:-1]}"}, "invalid_admin_token", 'Bearer realm="authcar", error='),
        (
            {"authorization": f"Bearer {TOKEN.upper()}"},
            "invalid_admin_token",
            'Bearer realm="authcar", error=',
        ),
    ],
)
async def test_without_the_token_or_with_another_every_api_path_is_401(
    headers: dict[str, str], code: str, challenge: str
) -> None:
    async with admin_client(TOKEN) as client:
        for method, path in [
            ("GET", "/api/v1/revocations"),
            ("POST", "/api/v1/revocations"),
            ("DELETE", "/api/v1/revocations"),
            ("GET", "/api/v1/nothing-here"),
            ("PUT", "/api/"),
        ]:
            response = await client.request(method, path, headers=headers, content=b'{"jti": "a"}')
            assert_error(response, 401, code)
            assert response.headers["www-authenticate"].startswith(challenge)
        listed = await client.get("/api/v1/revocations", headers=AUTH)
        assert listed.json() == {"revocations": [], "count": 0}  # nothing was written


async def test_revoke_list_and_unrevoke() -> None:
    async with admin_client(TOKEN) as client:
        created = await client.post(
            "/api/v1/revocations", headers=AUTH, json={"sub": "alice", "expires_in": 60}
        )
        assert created.status_code == 201
        assert created.headers["cache-control"] == "no-store"
        body = created.json()
        assert (body["kind"], body["value"], body["expires_in"]) == ("sub", "alice", 60)
        assert body["expires_at"].endswith("GMT")
        await client.post("/api/v1/revocations", headers=AUTH, json={"jti": "t-1"})
        listed = (await client.get("/api/v1/revocations", headers=AUTH)).json()
        assert [(e["kind"], e["value"]) for e in listed["revocations"]] == [("sub", "alice"), ("jti", "t-1")]
        assert 0 < listed["revocations"][0]["expires_in"] <= 60
        assert listed["revocations"][1]["expires_in"] > DEFAULT_EXPIRES_IN - 60
        deleted = await client.request("DELETE", "/api/v1/revocations", headers=AUTH, json={"sub": "alice"})
        assert (deleted.status_code, deleted.content) == (204, b"")
        again = await client.request("DELETE", "/api/v1/revocations", headers=AUTH, json={"sub": "alice"})
        assert again.status_code == 204  # deleting an absent entry is not an error
        listed = (await client.get("/api/v1/revocations", headers=AUTH)).json()
        assert listed["count"] == 1


async def test_bodies_are_bounded_and_bad_ones_answered_with_their_code() -> None:
    async with admin_client(TOKEN) as client:
        large = b'{"jti": "' + b"a" * MAX_BODY_BYTES + b'"}'
        assert_error(
            await client.post("/api/v1/revocations", headers=AUTH, content=large), 413, "body_too_large"
        )
        bad = await client.post("/api/v1/revocations", headers=AUTH, content=b'{"jti": "a", "sub": "b"}')
        assert_error(bad, 400, "several_kinds")
        wrong_path = await client.post("/api/v1/revocations/", headers=AUTH, content=b'{"jti": "a"}')
        assert_error(wrong_path, 404, "not_found")
        assert (await client.get("/api/v1/revocations", headers=AUTH)).json()["count"] == 0


async def test_a_full_list_is_503_with_the_time_until_a_place_frees() -> None:
    async with admin_client(TOKEN, max_entries=1) as client:
        first = await client.post("/api/v1/revocations", headers=AUTH, json={"jti": "a", "expires_in": 90.5})
        assert first.status_code == 201
        full = await client.post("/api/v1/revocations", headers=AUTH, json={"jti": "b"})
        assert_error(full, 503, "revocation_list_full")
        assert 1 <= int(full.headers["retry-after"]) <= 91
        again = await client.post("/api/v1/revocations", headers=AUTH, json={"jti": "a", "expires_in": 5})
        assert again.status_code == 201  # a known entry takes its new expiry
