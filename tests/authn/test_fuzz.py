"""Property: whatever bytes arrive as a bearer token, the answer is a refusal, never an exception."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authcar.authn.chain import Authentication
from authcar.errors import BadRequest, Unauthorized
from authcar.store import MemoryStore
from tests.idp import run_idp
from tests.support.sidecar import sidecar_settings


@pytest.fixture(scope="module")
def authenticator() -> Iterator[tuple[Authentication, asyncio.AbstractEventLoop, str]]:
    """One provider and one authenticator for all examples (hypothesis runs many)."""
    loop = asyncio.new_event_loop()
    context = run_idp()
    idp = loop.run_until_complete(context.__aenter__())
    http = httpx.AsyncClient()
    auth = Authentication(
        sidecar_settings("http://127.0.0.1:1", oidc_issuer_url=idp.issuer, oidc_audience=("api",)),
        http,
        MemoryStore(),
    )
    loop.run_until_complete(auth.start())
    keyset = auth.issuers[0].keyset
    assert keyset is not None
    assert keyset.loaded
    try:
        yield auth, loop, idp.mint()
    finally:
        loop.run_until_complete(auth.close())
        loop.run_until_complete(http.aclose())
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


def refuse(auth: Authentication, loop: asyncio.AbstractEventLoop, value: bytes) -> None:
    try:
        scope = {"method": "GET", "headers": [(b"authorization", b"Bearer " + value)], "query_string": b""}
        loop.run_until_complete(auth.authenticate(scope, "/"))
    except Unauthorized:
        return
    except BadRequest:
        return
    raise AssertionError(f"accepted {value!r}")


SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused(authenticator, data: bytes) -> None:  # type: ignore[no-untyped-def]
    refuse(authenticator[0], authenticator[1], data)


def segment() -> st.SearchStrategy[str]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    encoded = json_values.map(
        lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode()
    )
    return encoded | st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=64)


@SETTINGS
@given(st.lists(segment(), min_size=1, max_size=6))
def test_jwt_shaped_garbage_is_refused(authenticator, parts: list[str]) -> None:  # type: ignore[no-untyped-def]
    refuse(authenticator[0], authenticator[1], ".".join(parts).encode())


@SETTINGS
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_a_valid_token_with_any_one_byte_changed_is_refused(authenticator, position: int, byte: int) -> None:  # type: ignore[no-untyped-def]
    auth, loop, token = authenticator
    raw = bytearray(token.encode())
    index = position % len(raw)
    if raw[index] == byte:
        return
    raw[index] = byte
    if decoded(bytes(raw)) == decoded(token.encode()):
        return  # base64 ignores the unused low bits of a segment's last character: same signed bytes
    refuse(auth, loop, bytes(raw))


def decoded(token: bytes) -> list[bytes] | None:
    try:
        return [base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)) for part in token.split(b".")]
    except ValueError:
        return None
