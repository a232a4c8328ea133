"""The forward-auth description parser alone (authcar/forward_auth.py): which request a gateway asks
about, and every way a description is refused. The gate's use of it is tests/test_gate_forward_auth.py;
a real nginx in front is tests/e2e/test_forward_auth_nginx.py."""

from __future__ import annotations

from typing import Any

import pytest

from authcar.errors import Forbidden
from authcar.forward_auth import MAX_URI_BYTES, ForwardAuth
from authcar.gate import REFUSED_METHODS
from authcar.types import Headers, Scope

FORWARD_AUTH = ForwardAuth("/oauth2/", REFUSED_METHODS)


def auth_scope(
    headers: Headers, *, raw_path: bytes = b"/oauth2/auth", method: str = "GET", query: bytes = b""
) -> Scope:
    return {
        "type": "http",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [(b"host", b"authcar.internal:4180"), *headers],
        "client": ("10.0.0.5", 40000),
        "extensions": {"tls": {"client_certificate": object()}, "authcar.connection_state": {}},
    }


def described(headers: Headers, **kwargs: Any) -> Any:
    return FORWARD_AUTH.describe(auth_scope(headers, **kwargs), trusted=True)


def refusal(headers: Headers, **kwargs: Any) -> str:
    with pytest.raises(Forbidden) as caught:
        described(headers, **kwargs)
    assert caught.value.status == 403
    return caught.value.code


# --- what is recognised ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_path", "recognised"),
    [
        (b"/oauth2/auth", True),
        (b"/oauth2/auth/", True),
        (b"/oauth2/auth/items/7", True),
        (b"/oauth2/authx", False),
        (b"/oauth2/auth%2Fitems", False),  # the proxy listener refuses it as an encoded slash
        (b"/oauth2/start", False),
        (b"/items/oauth2/auth", False),
    ],
)
def test_the_forward_auth_paths_are_recognised_as_sent(raw_path: bytes, recognised: bool) -> None:
    assert FORWARD_AUTH.recognises(raw_path) is recognised


def test_the_endpoint_follows_the_reserved_prefix() -> None:
    assert ForwardAuth("/_authcar/", REFUSED_METHODS).recognises(b"/_authcar/auth/x")
    assert not ForwardAuth("/_authcar/", REFUSED_METHODS).recognises(b"/oauth2/auth")


# --- the three ways to describe a request -----------------------------------------------------


def test_traefik_describes_with_x_forwarded_headers() -> None:
    d = described(
        [
            (b"x-forwarded-method", b"DELETE"),
            (b"x-forwarded-uri", b"/items//7?force=1"),
            (b"x-forwarded-host", b"Books.Example"),
            (b"x-forwarded-proto", b"https"),
        ]
    )
    assert (d.method, d.path, d.query, d.host, d.proto, d.source) == (
        "DELETE",
        "/items/7",  # normalised, as the proxy listener would
        b"force=1",
        "books.example",
        "https",
        "x-forwarded",
    )
    assert d.url == "https://books.example/items/7?force=1"


def test_nginx_auth_request_describes_with_x_original_headers() -> None:
    d = described([(b"x-original-method", b"POST"), (b"x-original-uri", b"/items")])
    assert (d.method, d.path, d.query, d.host, d.proto, d.source) == (
        "POST",
        "/items",
        b"",
        "",
        "",
        "x-original",
    )
    assert d.url == "/items"  # no host known: the return-to is the path alone


def test_ingress_nginx_describes_with_an_absolute_x_original_url() -> None:
    d = described(
        [(b"x-original-method", b"GET"), (b"x-original-url", b"https://books.example:8443/a/b?x=1")]
    )
    assert (d.method, d.path, d.query, d.host, d.proto) == (
        "GET",
        "/a/b",
        b"x=1",
        "books.example:8443",
        "https",
    )
    assert (
        described([(b"x-original-method", b"GET"), (b"x-original-url", b"http://books.example")]).path == "/"
    )


def test_envoy_describes_with_the_path_after_the_prefix_and_its_own_method() -> None:
    d = described([], raw_path=b"/oauth2/auth/items/7", method="PUT", query=b"v=2")
    assert (d.method, d.path, d.query, d.source) == ("PUT", "/items/7", b"v=2", "path")
    assert described([], raw_path=b"/oauth2/auth/").path == "/"


def test_the_described_scope_says_the_described_request_and_drops_the_gateways_certificate() -> None:
    scope = auth_scope(
        [
            (b"x-original-method", b"PATCH"),
            (b"x-original-uri", b"/caf%c3%a9?q=1"),
            (b"authorization", b"Bearer t"),
        ]
    )
    d = FORWARD_AUTH.describe(scope, trusted=True)
    own = d.scope(scope)
    assert (own["method"], own["raw_path"], own["path"], own["query_string"]) == (
        "PATCH",
        b"/caf%C3%A9",
        "/café",
        b"q=1",
    )
    assert (b"authorization", b"Bearer t") in own["headers"]  # the client's token, as the gateway passed it
    assert "tls" not in own["extensions"]  # that certificate is the gateway's
    assert own["extensions"]["authcar.connection_state"] is scope["extensions"]["authcar.connection_state"]
    # The request itself is untouched.
    assert scope["method"] == "GET"
    assert scope["raw_path"] == b"/oauth2/auth"


def test_agreeing_descriptions_are_one_description() -> None:
    d = described(
        [
            (b"x-forwarded-method", b"GET"),
            (b"x-original-method", b"GET"),
            (b"x-forwarded-uri", b"/a?b"),
            (b"x-original-uri", b"/a?b"),
            (b"x-original-url", b"https://books.example/a?b"),
            (b"x-forwarded-host", b"BOOKS.example"),
        ],
        raw_path=b"/oauth2/auth/a",
        query=b"b",
    )
    assert (d.method, d.path, d.host) == ("GET", "/a", "books.example")


# --- refusals -----------------------------------------------------------------------------------


def test_an_untrusted_peer_is_refused_before_its_description_is_read() -> None:
    for raw_path in (b"/oauth2/auth", b"/oauth2/auth/items"):
        scope = auth_scope(
            [(b"x-original-method", b"GET"), (b"x-original-uri", b"/items")], raw_path=raw_path
        )
        with pytest.raises(Forbidden) as caught:
            FORWARD_AUTH.describe(scope, trusted=False)
        assert caught.value.code == "forward_auth_untrusted_peer"


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"x-original-uri", b"/items")],  # nginx's subrequest is a GET whatever the client sent
        [(b"x-forwarded-method", b"GET")],
        [(b"x-forwarded-host", b"books.example"), (b"x-forwarded-proto", b"https")],
        [(b"x-original-method", b"GET"), (b"x_original_uri", b"/items")],  # a spelling is not the header
    ],
)
def test_a_description_needs_a_method_and_a_uri(headers: Headers) -> None:
    assert refusal(headers) == "forward_auth_incomplete"


@pytest.mark.parametrize(
    ("headers", "kwargs"),
    [
        ([(b"x-original-method", b"GET"), (b"x-original-uri", b"/a"), (b"x-original-uri", b"/a")], {}),
        ([(b"x-original-method", b"GET"), (b"x-original-method", b"GET"), (b"x-original-uri", b"/a")], {}),
        (
            [
                (b"x-original-method", b"GET"),
                (b"x-original-uri", b"/a"),
                (b"x-forwarded-host", b"a"),
                (b"x-forwarded-host", b"a"),
            ],
            {},
        ),
        # a client's X-Forwarded-Uri passed on by a gateway that sets X-Original-URI
        (
            [
                (b"x-original-method", b"GET"),
                (b"x-original-uri", b"/admin"),
                (b"x-forwarded-uri", b"/public"),
            ],
            {},
        ),
        (
            [(b"x-original-method", b"DELETE"), (b"x-forwarded-method", b"GET"), (b"x-original-uri", b"/a")],
            {},
        ),
        (
            [(b"x-original-method", b"GET"), (b"x-original-uri", b"/a?x=1"), (b"x-forwarded-uri", b"/a?x=2")],
            {},
        ),
        ([(b"x-original-method", b"GET"), (b"x-original-uri", b"/a"), (b"x-forwarded-uri", b"//a")], {}),
        # absolute-form naming another host than the described one
        (
            [
                (b"x-original-method", b"GET"),
                (b"x-original-url", b"https://evil.example/a"),
                (b"x-forwarded-host", b"books.example"),
            ],
            {},
        ),
        (
            [
                (b"x-original-method", b"GET"),
                (b"x-original-url", b"https://books.example/a"),
                (b"x-forwarded-uri", b"http://evil.example/a"),
                (b"x-forwarded-host", b"books.example"),
            ],
            {},
        ),
        (
            [
                (b"x-original-method", b"GET"),
                (b"x-original-url", b"http://books.example/a"),
                (b"x-forwarded-proto", b"https"),
            ],
            {},
        ),
        # Envoy's path against a header
        ([(b"x-forwarded-uri", b"/public")], {"raw_path": b"/oauth2/auth/admin"}),
        ([(b"x-forwarded-method", b"GET")], {"raw_path": b"/oauth2/auth/admin", "method": "DELETE"}),
        ([(b"x-forwarded-uri", b"/admin")], {"raw_path": b"/oauth2/auth/admin", "query": b"x"}),
    ],
    ids=[
        "two-uris",
        "two-methods",
        "two-hosts",
        "uri-vs-client-uri",
        "method-vs-method",
        "query-vs-query",
        "raw-paths-differ",
        "absolute-other-host",
        "two-absolute-hosts",
        "absolute-other-scheme",
        "envoy-path-vs-header",
        "envoy-method-vs-header",
        "envoy-query-vs-header",
    ],
)
def test_conflicting_descriptions_are_refused(headers: Headers, kwargs: dict[str, Any]) -> None:
    assert refusal(headers, **kwargs) == "forward_auth_conflict"


@pytest.mark.parametrize(
    "method",
    [
        b"CONNECT",
        b"TRACE",
        b"trace",
        b"Connect",
        b"GET POST",
        b"GET, POST",
        b"",
        b"G\x00T",
        b"GET\r\nX: y",
        b"G\xc3\x89T",
        b"A" * 33,
        b"(GET)",
    ],
)
def test_a_described_method_must_be_a_token_and_a_served_one(method: bytes) -> None:
    assert (
        refusal([(b"x-forwarded-method", method), (b"x-forwarded-uri", b"/a")]) == "forward_auth_bad_method"
    )


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST", b"PROPFIND", b"M-SEARCH", b"get"])
def test_any_other_token_is_a_method_the_policy_decides_on(method: bytes) -> None:
    assert described([(b"x-forwarded-method", method), (b"x-forwarded-uri", b"/a")]).method == method.decode()


@pytest.mark.parametrize(
    "uri",
    [
        b"",
        b"/a#frag",
        b"/a?x#frag",
        b"/a\r\nX-Auth-Request-User: admin",
        b"/a\nb",
        b"/a\x00",
        b"/a\tb",
        b"/a b",
        b"/caf\xc3\xa9",
        b"/a\x7f",
        b"/" + b"a" * MAX_URI_BYTES,
        b"*",
        b"items",
        b"../admin",
        b"ftp://books.example/a",
        b"https://user@books.example/a",
        b"https:///a",
        b"https://books.example:99999/a",
        b"https://books.example%2fevil/a",
        b"https://[::1%25eth0]/a",
        b"javascript:alert(1)",
    ],
)
def test_a_described_uri_must_be_a_request_target(uri: bytes) -> None:
    assert refusal([(b"x-forwarded-method", b"GET"), (b"x-forwarded-uri", uri)]) == "forward_auth_bad_uri"


@pytest.mark.parametrize(
    "header",
    [
        (b"x-forwarded-host", b"a b"),
        (b"x-forwarded-host", b"a, b"),
        (b"x-forwarded-host", b""),
        (b"x-forwarded-proto", b"ftp"),
        (b"x-forwarded-proto", b"https, http"),
    ],
)
def test_a_described_host_or_scheme_must_be_one_valid_value(header: tuple[bytes, bytes]) -> None:
    assert (
        refusal([(b"x-forwarded-method", b"GET"), (b"x-forwarded-uri", b"/a"), header])
        == "forward_auth_bad_uri"
    )


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        (b"/a/../admin", "dot_segment"),
        (b"/a/%2e%2E/admin", "dot_segment"),
        (b"/a/%EF%BC%8E%EF%BC%8E/admin", "dot_segment"),
        (b"/admin%2Fx", "encoded_slash"),
        (b"/admin%5cx", "encoded_slash"),
        (b"/a%E2%88%95admin", "encoded_slash"),
        (b"/admin;x=1", "path_parameter"),
        (b"/admin%3bx", "path_parameter"),
        (b"/a%252e%252e/admin", "double_encoding"),
        (b"/%EF%BD%81dmin", "unicode_lookalike"),
        (b"/a%00", "encoded_control"),
        (b"/a%zz", "invalid_percent_encoding"),
        (b"/a%C0%AE", "invalid_percent_encoding"),
        (b"/a\\admin", "invalid_path_character"),
        (b"https://books.example/a/../admin", "dot_segment"),
    ],
)
def test_the_proxy_listeners_path_rules_refuse_the_described_path_with_their_own_code(
    uri: bytes, code: str
) -> None:
    assert refusal([(b"x-forwarded-method", b"GET"), (b"x-forwarded-uri", uri)]) == code
    if uri.startswith(b"/"):
        assert refusal([], raw_path=b"/oauth2/auth" + uri.partition(b"?")[0]) == code
