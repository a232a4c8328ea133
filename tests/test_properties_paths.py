"""Properties of paths through the real sidecar: for any request target, no 5xx, and what reaches
the application is exactly the path the policy decided on; nothing under the denied prefix ever
reaches it, however the application decodes and normalises the path.

The sidecar (a process, with a provider process) guards the byte-recording upstream with a policy
that lets a reader do anything anywhere except under /admin (and anonymous callers, who only exist
on the stack's public paths /public and below, the same). A target that escaped the policy by
normalisation (`/api/..%2Fadmin`, fullwidth dots, an NFKC-read fullwidth `admin`) would be allowed by the
broad rule and show up at the upstream.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote_to_bytes

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from authcar.errors import BadRequest
from authcar.paths import normalise_path
from tests.security.stack import HOST
from tests.support.property_stack import ThreadedStack, threaded_stack
from tests.support.rawhttp import RawResponse
from tests.support.recording_upstream import ReceivedRequest

POLICY = """\
p, role:reader, /*, ^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)$, allow, *
p, role:reader, /admin, ^.*$, deny, *
p, role:reader, /admin/*, ^.*$, deny, *
p, authcar:anonymous, /*, ^(GET|HEAD)$, allow, *
p, authcar:anonymous, /admin, ^.*$, deny, *
p, authcar:anonymous, /admin/*, ^.*$, deny, *
"""
MODEL = Path(__file__).resolve().parent.parent / "policies" / "model.conf"
# What an answer may be: forwarded, or refused by the parser, the path rules or the policy, or a
# reserved endpoint (/oauth2/..., /.well-known/authcar/...).
STATUSES = {200, 400, 403, 404, 405, 414}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedStack]:
    policy = tmp_path_factory.mktemp("policy")
    (policy / "model.conf").write_text(MODEL.read_text())
    (policy / "policy.csv").write_text(POLICY)
    with threaded_stack(tmp_path_factory.mktemp("paths"), {"AUTHCAR_POLICY_DIR": str(policy)}) as running:
        yield running


@pytest.fixture(scope="module")
def token(stack: ThreadedStack) -> str:
    return stack.stack.idp.mint(roles=["reader"], expires_in=3600)


def encoded(text: str) -> bytes:
    try:
        return "".join(f"%{b:02X}" for b in text.encode("utf-8")).encode()
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8: its UTF-8-looking bytes, then
        return b"%ED%A0%80"


PIECES = [
    b"api", b"admin", b"Admin", b"%61dmin", b"%41dmin", b"ad%6din", b"public", b"x", b"", b"/", b"//",
    b".", b"..", b"...", b"%2e", b"%2E", b"%2e%2e", b".%2E", b"%2f", b"%2F", b"%5c", b"%5C", b"\\",
    b";", b";x=1", b"%3b", b"%3B", b"%00", b"%0a", b"%25", b"%252e", b"%252F", b"%", b"%zz", b"%4",
    b"%C0%AE", b"%C0%AF", b"%E0%80%AE", b"%C1%9C", b"%EF%BC%8E", b"%ef%bc%8f", b"%EF%BC%BC",
    b"%E2%80%A4", b"%E2%80%A5", b"%EF%B9%92", b"%E2%88%95", b"%E3%80%82", b"%EF%BD%81", b"%C4%B1",
    b"%C2%AD", b"%E2%80%8B", b"%CC%81", b"%C3%A9", b"%e2%82%ac", b"~", b"%7e", b"@", b":", b"*",
    b"#", b"?", b"?x=/admin", b"?a=1&b=%2F", b"\t", b"\x00", b"\x7f", b"\x80", b"\xff", b"\xc3\xa9",
    b"\xef\xbc\x8e",
]  # fmt: skip
PREFIXES = [
    b"/", b"/api/", b"/admin/", b"/admin", b"/public/", b"//", b"/api/../", b"/api/%2e%2e/", b"",
    b"*", b"http://app.test/", b"//admin/", b"/./admin/",
]  # fmt: skip
# Any byte a target can hold on the request line (CR and LF would end it; a space splits it).
TARGET_BYTES = bytes(b for b in range(256) if b not in b"\r\n ")

pieces = st.one_of(
    st.sampled_from(PIECES),
    st.characters(codec="utf-8").map(encoded),
    st.characters(min_codepoint=0x80).map(encoded),
    st.binary(min_size=1, max_size=4).filter(lambda b: not set(b) & set(b"\r\n ")),
)
free_targets = st.tuples(st.sampled_from(PREFIXES), st.lists(pieces, max_size=10)).map(
    lambda parts: parts[0] + b"".join(parts[1])
)
# Attempts to climb from /api to /admin: a dot, a slash and a letter of `admin` in any spelling,
# ASCII, encoded, doubly encoded, or a Unicode look-alike.
DOTS = [b".", b"%2e", b"%2E", b"%252e", b"%C0%AE", b"%E0%80%AE", b"%EF%BC%8E", b"%ef%bc%8e", b"%E2%80%A4",
        b"%EF%B9%92", b"%E3%80%82", b"%EF%BD%A1", b".%CC%81", b"%E2%80%8B."]  # fmt: skip
DOT_PAIRS = [b"..", b"%E2%80%A5", b"%EF%B8%B0", b"%E2%80%A6"]
SLASHES = [b"/", b"%2F", b"%2f", b"%5C", b"\\", b"%252F", b"%C0%AF", b"%EF%BC%8F", b"%EF%BC%BC", b"%E2%88%95",
           b"%E2%81%84", b"%E2%88%96", b"%EF%B9%A8", b"%C2%A5", b"%E2%A7%B5", b";/", b"%3B/"]  # fmt: skip
A_LETTERS = [b"a", b"%61", b"%EF%BD%81", b"%C2%AA", b"%E1%B5%83"]
dot_dot = st.one_of(
    st.tuples(st.sampled_from(DOTS), st.sampled_from(DOTS)).map(b"".join), st.sampled_from(DOT_PAIRS)
)
climbs = st.tuples(
    st.sampled_from([b"/api/", b"/public/", b"/api/x/", b"//api/"]),
    st.lists(st.tuples(dot_dot, st.sampled_from(SLASHES)).map(b"".join), min_size=1, max_size=3).map(
        b"".join
    ),
    st.sampled_from(A_LETTERS),
    st.sampled_from([b"dmin", b"dmin/", b"dmin/x", b"dmin?x=1"]),
).map(b"".join)
targets = st.one_of(free_targets, climbs)


def request(target: bytes, token: str) -> bytes:
    return (
        b"GET " + target + b" HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nConnection: close\r\n\r\n"
    )


def as_the_application_reads_it(path: bytes) -> str:
    """The most a lenient application could make of a forwarded path: decoded (twice), NFKC,
    backslashes as slashes, dot segments resolved."""
    text = unquote_to_bytes(unquote_to_bytes(path)).decode("utf-8", "replace")
    text = unicodedata.normalize("NFKC", text).replace("\\", "/")
    return posixpath.normpath("/" + text.lstrip("/"))  # (normpath keeps a leading '//')


def assert_forwarded_as_decided(
    stack: ThreadedStack, target: bytes, response: RawResponse, seen: ReceivedRequest
) -> None:
    # The request line's parser (llhttp, as uvicorn uses it) gives the path and query; the
    # sidecar's one normaliser decided on the path, and the application got exactly that.
    url = httptools.parse_url(target)
    decided = normalise_path(url.path).encode("ascii")
    assert seen.target == decided + (b"?" + url.query if url.query else b"")
    assert seen.method == "GET"
    # The access log (what the policy saw) says the same, for the same request.
    request_id = response.header("x-request-id")
    assert request_id
    assert seen.header("x-request-id") == request_id.encode()
    line = stack.log_line(request_id)
    assert line["path"] == decided.decode("ascii")
    assert line["status"] == 200
    # Nothing the application could read as under /admin got there.
    read = as_the_application_reads_it(decided)
    assert read != "/admin"
    assert not read.startswith("/admin/")


def check(stack: ThreadedStack, token: str, target: bytes) -> None:
    response, seen = stack.exchange(request(target, token))
    assert response.status < 500, (target, response.status, response.body)
    assert response.status in STATUSES, (target, response.status, response.body)
    if response.status >= 400:
        assert response.json()["error"], response.body
    if not seen:
        return
    assert response.status == 200, (target, response.status)
    assert len(seen) == 1, stack.stack.upstream.describe()  # one client request, one upstream request
    assert_forwarded_as_decided(stack, target, response, seen[0])


@settings(deadline=None)
@given(targets)
@example(b"/api/..%2Fadmin")
@example(b"/api/%EF%BC%8E%EF%BC%8E/admin")
@example(b"/%EF%BD%81dmin/x")
@example(b"/api/%E3%80%82%E3%80%82/admin")
@example(b"//admin")
@example(b"/api/caf%c3%a9/%7Euser/")
def test_any_target_is_refused_or_forwarded_exactly_as_decided(
    stack: ThreadedStack, token: str, target: bytes
) -> None:
    check(stack, token, target)


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=60).map(lambda b: b"/" + bytes(c for c in b if c not in b"\r\n ")))
def test_any_bytes_as_a_target_are_never_a_5xx(stack: ThreadedStack, token: str, target: bytes) -> None:
    check(stack, token, target)


def lookalikes() -> list[str]:
    """Every code point whose compatibility form holds '.', '/' or '\\' (tests/test_paths.py)."""
    return [
        chr(cp)
        for cp in range(0x80, 0x110000)
        if not 0xD800 <= cp <= 0xDFFF
        and not {".", "/", "\\"}.isdisjoint(
            unicodedata.normalize("NFKC", chr(cp)) + unicodedata.normalize("NFKD", chr(cp))
        )
    ]


def test_every_lookalike_of_a_dot_or_slash_is_refused_by_the_running_sidecar(
    stack: ThreadedStack, token: str
) -> None:
    found = lookalikes()
    assert len(found) > 30
    for char in found:
        code = encoded(char)
        for target in (b"/api/" + code + code + b"/admin/x", b"/api/x" + code + b"admin"):
            response, seen = stack.exchange(request(target, token))
            assert response.status == 400, (f"U+{ord(char):04X}", response.status)
            assert response.json()["error"] in {"dot_segment", "encoded_slash"}
            assert seen == []


def test_the_normaliser_in_the_test_is_the_sidecars() -> None:
    # The identity assertions above compare with authcar.paths.normalise_path; it refuses what the
    # sidecar refuses (so a refused target never counts as forwarded).
    with pytest.raises(BadRequest):
        normalise_path(b"/api/%EF%BC%8E%EF%BC%8E/admin")
    assert re.fullmatch(r"/api/caf%C3%A9/~user/", normalise_path(b"/api/caf%c3%a9/%7Euser/"))
