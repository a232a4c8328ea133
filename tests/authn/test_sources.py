"""Query parameter and cookie names matched as applications read them (authcar/spellings.py,
authcar/authn/sources.py): every spelling of `access_token` and of the token cookie is the token's
or refused, through the running sidecar, with what reached the upstream asserted."""

from __future__ import annotations

import re
import string
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, unquote_plus, unquote_to_bytes

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from authcar.authn.sources import InvalidTokenRequest, TokenSources
from authcar.spellings import ProtectedName
from tests.idp import IdP, run_idp
from tests.support.rawhttp import RawResponse, request_bytes, send_raw
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream

ACCESS_TOKEN = ProtectedName("access_token")

# Names some framework reads as `access_token`, and which one (or which decoding) does.
SPELLINGS = [
    b"access%5Ftoken",  # percent-decoding: every framework
    b"access%5ftoken",  # lower-case hex
    b"%61ccess_token",  # an encoded letter
    b"%61%63%63%65%73%73%5f%74%6f%6b%65%6e",  # every byte encoded
    b"ACCESS_TOKEN",  # ASP.NET: names are case-insensitive
    b"Access_Token",
    b"access.token",  # PHP: '.' becomes '_'
    b"access+token",  # PHP: ' ' (form-decoded '+') becomes '_'
    b"access%20token",
    b"access[token",  # PHP: an unmatched '[' becomes '_'
    b" access_token",  # PHP drops leading spaces
    b"access_token%20",  # trailing whitespace, trimmed by some
    b"%09access_token",
    b"access_token[]",  # PHP, Rack, qs: an array named access_token
    b"access_token%5B%5D",  # the same, as browsers encode form fields
    b"access_token[x]",
    b"access_token[a][b]",
    b"[access_token]",  # Rack drops leading brackets
    b"access_token%00",  # PHP names are C strings: cut at NUL
    b"access_token%00.anything",
    b"access%u005Ftoken",  # IIS / ASP.NET %uXXXX
    b"access%255Ftoken",  # decoded twice
    b"access%25255Ftoken",  # three times
    b"access%C1%9Ftoken",  # overlong UTF-8 '_' (lenient decoders)
    b"%C1%A1ccess_token",  # overlong 'a'
    b"%EF%BD%81ccess_token",  # fullwidth 'a' (NFKC)
    b"access%EF%BC%BFtoken",  # fullwidth low line
    b"acce%C3%9F_token",  # case folding: 'ß' is 'ss'
    b"access-token",  # '-' and '_' confused
    b"accesstoken",
    b"AccessToken",
    b"access%E2%80%8Btoken",  # a zero-width space dropped
    b"x%26access_token",  # an application that decodes before it splits
    b"access_token%3Dx",
    b"acc%ess_token",  # a '%' that starts no escape is kept, then ignored
]
NOT_SPELLINGS = [
    b"access_tokens",
    b"xaccess_token",
    b"access_token_hint",
    b"a[access_token]",  # an array `a` with a key named access_token
    b"token",
    b"access",
    b"q",
    b"user%5Bname%5D",
    b"%E3%81%82",
    b"access%5token",  # '%5t' is no escape: 'access5token'
]


@pytest.mark.parametrize("name", SPELLINGS)
def test_every_spelling_is_read_as_access_token(name: bytes) -> None:
    assert ACCESS_TOKEN.is_spelled_by(name)
    assert ACCESS_TOKEN.might_be_in(b"a=1&" + name + b"=x")


@pytest.mark.parametrize("name", NOT_SPELLINGS)
def test_other_names_are_not(name: bytes) -> None:
    assert not ACCESS_TOKEN.is_spelled_by(name)


def test_the_cheap_first_look_never_misses_a_spelling() -> None:
    assert not ACCESS_TOKEN.might_be_in(b"a=1&b=2&page=3")
    assert not ACCESS_TOKEN.might_be_in(b"access=1&token=2")
    for name in SPELLINGS:
        assert ACCESS_TOKEN.might_be_in(name + b"=x")


# What a spelling is made of: each character of the name, as applications decode it.
def encodings_of(char: str) -> st.SearchStrategy[str]:
    code = ord(char)
    forms = [
        char,
        char.upper(),
        char.lower(),
        f"%{code:02X}",
        f"%{code:02x}",
        f"%u{code:04X}",
        f"%25{code:02X}",
    ]
    if char == "_":
        # ('[' for '_' too, but not here: followed by a `[x]` suffix it makes PHP's array `access`.)
        forms += [".", " ", "+", "-", "%20", "%2E", "%EF%BC%BF", ""]
    else:
        fullwidth = chr(code - 0x21 + 0xFF01)
        forms += ["".join(f"%{b:02X}" for b in fullwidth.encode()), "%C1%" + f"{0x80 | (code & 0x3F):02X}"]
    return st.sampled_from(forms)


spellings = st.tuples(
    st.sampled_from(["", " ", "%20", "[", "[["]),
    st.tuples(*(encodings_of(c) for c in "access_token")).map("".join),
    st.sampled_from(["", " ", "[]", "[x]", "%5B%5D", "%00", "%00junk", "%20"]),
).map(lambda parts: "".join(parts).encode())


@settings(deadline=None)
@given(spellings)
@example(b"ACCESS%5ftoken[]")
def test_any_combination_of_foldings_is_a_spelling(name: bytes) -> None:
    assert ACCESS_TOKEN.is_spelled_by(name)
    assert ACCESS_TOKEN.might_be_in(b"q=1&" + name + b"=x")


# Three applications' readings, written from their documentation and source, to check against.
def python_reading(raw: bytes) -> str:
    pairs = parse_qsl(raw.decode("latin-1") + "=x", keep_blank_values=True)
    return pairs[0][0] if pairs else ""


def php_reading(raw: bytes) -> str:
    """main/php_variables.c: urldecode, C string, leading spaces dropped, `name[...]` is an array
    `name`, and ' ', '.' and an unmatched first '[' become '_'."""
    name = unquote_to_bytes(raw.replace(b"+", b" ")).partition(b"\0")[0].lstrip(b" ").decode("latin-1")
    base, bracket, rest = name.partition("[")
    if bracket and "]" in rest:
        name = base
    elif bracket:
        name = base + "_" + rest
    return name.replace(" ", "_").replace(".", "_")


def aspnet_reading(raw: bytes) -> str:
    """HttpUtility.UrlDecode (with %uXXXX), compared with OrdinalIgnoreCase."""
    text = re.sub(r"%u([0-9A-Fa-f]{4})", lambda m: chr(int(m[1], 16)), raw.decode("latin-1"))
    return unquote_plus(text).upper().lower()


readable = st.one_of(
    spellings,
    st.binary(max_size=30),
    st.tuples(spellings, st.binary(max_size=3), st.integers(0, 30)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    ),
)


@settings(deadline=None)
@given(readable)
@example(b"access_token[x")
@example(b"access%00token")
def test_whatever_an_application_reads_as_access_token_is_a_spelling(name: bytes) -> None:
    for reading in (python_reading, php_reading, aspnet_reading):
        if reading(name) == "access_token":
            assert ACCESS_TOKEN.is_spelled_by(name), reading.__name__


query_pieces = st.one_of(readable, st.sampled_from([b"=", b"&", b";", b"=x", b"%CC%B8", b"\xcc\xb8", b"%C3"]))


@settings(deadline=None)
@given(st.lists(query_pieces, max_size=8).map(b"".join))
@example(b"x=%CC%B8%61ccess_token=1")  # '=' and a combining mark compose under NFKC
def test_the_first_look_at_a_whole_string_never_misses_a_name_in_it(query: bytes) -> None:
    names = [part.partition(b"=")[0] for piece in query.split(b"&") for part in piece.split(b";")]
    if any(ACCESS_TOKEN.is_spelled_by(name) for name in names):
        assert ACCESS_TOKEN.might_be_in(query)


@settings(deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.~", max_size=20))
def test_plain_names_are_spellings_exactly_when_their_letters_are(name: str) -> None:
    letters = "".join(c for c in name.lower() if c.isalnum())
    assert ACCESS_TOKEN.is_spelled_by(name.encode()) is (letters == "accesstoken")


# --- the sources, unit by unit ----------------------------------------------------------------


def found(sources: TokenSources, query: bytes = b"", cookie: bytes | None = None) -> object:
    headers = [(b"cookie", cookie)] if cookie is not None else []
    try:
        return sources.find(headers, query)
    except InvalidTokenRequest as exc:
        return exc.code


def test_with_query_tokens_off_every_spelling_is_refused() -> None:
    sources = TokenSources()
    for name in SPELLINGS:
        assert found(sources, b"a=1&" + name + b"=t") == "invalid_request", name
        assert found(sources, b"a=1;" + name + b"=t") == "invalid_request", name  # ';' splits too
    for name in NOT_SPELLINGS:
        assert found(sources, b"a=1&" + name + b"=t") is None, name


def test_with_query_tokens_on_one_spelling_is_the_token_and_the_rest_are_refused() -> None:
    sources = TokenSources(allow_query=True)
    for name in (b"access_token", b"access%5Ftoken", b"%61ccess_token"):
        token = sources.find([], b"a=1&" + name + b"=t%2Bk&b=%2F")
        assert token is not None
        assert (token.token, token.source, token.forward_query) == ("t+k", "query", b"a=1&b=%2F")
    for name in SPELLINGS:
        if name not in (
            b"access%5Ftoken",
            b"access%5ftoken",
            b"%61ccess_token",
            b"%61%63%63%65%73%73%5f%74%6f%6b%65%6e",
        ):
            assert found(sources, b"a=1&" + name + b"=t") == "invalid_request", name
    # The token and a disguised second copy; a second copy after a ';'.
    assert found(sources, b"access_token=t&ACCESS_TOKEN=u") == "invalid_request"
    assert found(sources, b"access_token=t;access_token=u") == "invalid_request"
    assert found(sources, b"x=1;access_token=u") == "invalid_request"


COOKIE_SPELLINGS = [
    b"%61ccess",
    b"Access",
    b"ACCESS",
    b"access[]",
    b"access%00",
    b"acc%65ss",
    b".access",
    b"_access",
    b"access%20",
    b"%EF%BD%81ccess",
]


def test_a_disguised_token_cookie_is_refused() -> None:
    sources = TokenSources(cookie="access")
    for name in COOKIE_SPELLINGS:
        assert found(sources, cookie=b"theme=dark; " + name + b"=t") == "invalid_request", name
        assert found(sources, cookie=b"access=t; " + name + b"=u") == "invalid_request", name
    # RFC 2109 parsers split on ',' as well.
    assert found(sources, cookie=b"theme=dark, access=t") == "invalid_request"
    # The exact name, with the whitespace RFC 6265 trims, is the token; other cookies are not.
    for cookie in (b"access=t", b" access = t ", b'access="t"', b"theme=dark; access=t; lang=en"):
        token = TokenSources(cookie="access").find([(b"cookie", cookie)], b"")
        assert token is not None
        assert (token.token, token.source) == ("t", "cookie"), cookie
    assert found(sources, cookie=b"accessible=1; tags=a,access; x_access_y=2") is None


def test_a_disguised_cookie_is_refused_even_when_the_header_wins() -> None:
    sources = TokenSources(cookie="access")
    headers = [(b"authorization", b"Bearer h"), (b"cookie", b"Access=c")]
    with pytest.raises(InvalidTokenRequest):
        sources.find(headers, b"")
    token = sources.find([(b"authorization", b"Bearer h"), (b"cookie", b"access=c")], b"")
    assert token is not None
    assert (token.token, token.source) == ("h", "header")


def test_the_session_cookie_name_is_protected_in_every_spelling() -> None:
    session = ProtectedName("__Host-authcar")
    for name in (
        b"__Host-authcar",
        b"..Host-authcar",
        b"%5F%5FHost-authcar",
        b"__host-AUTHCAR",
        b"__Host-authcar[]",
    ):
        assert session.is_spelled_by(name), name
    assert session.cookie_values([b"__Host-authcar=s1; other=2"]) == [b"s1"]
    for disguised in (b"..Host-authcar=s2", b"%5F%5FHost-authcar=s2", b"a=1, __Host-authcar=s2"):
        with pytest.raises(ValueError, match="authcar"):
            session.cookie_values([b"__Host-authcar=s1; " + disguised])


def test_long_hostile_names_are_read_every_way() -> None:
    # 32 KiB of hostile escapes (the default head limit) is read every way (in about 5 ms: each
    # reading is folded once, then cut with string operations) and still ruled out.
    hostile = b"%25%25%C1%9F%00[a&b=c;d]%e9" * 1300
    assert not ACCESS_TOKEN.is_spelled_by(hostile)
    assert ACCESS_TOKEN.is_spelled_by(b"access_token%00" + hostile)


# --- through the running sidecar --------------------------------------------------------------


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


def guarded(upstream: RunningUpstream, idp: IdP, **settings: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {
        "allow_anonymous": False,
        "oidc_issuer_url": idp.issuer,
        "oidc_audience": ("api",),
    }
    return start_sidecar(upstream.url, **{**options, **settings})


async def send(
    sidecar: RunningSidecar, target: str, headers: list[tuple[str, str]] | None = None
) -> RawResponse:
    return await send_raw(sidecar.port, request_bytes("GET", target, headers))


def assert_invalid_request(response: RawResponse) -> None:
    assert response.status == 400, response.body
    if response.json()["error"] == "malformed_request":
        return  # a raw space or tab in the target: the HTTP parser refused it first
    assert response.json()["error"] == "invalid_request"
    challenge = response.header("www-authenticate") or ""
    assert challenge.startswith('Bearer realm="authcar", error="invalid_request"'), challenge


async def test_disguised_query_tokens_never_reach_the_application_with_query_tokens_off(
    upstream: RunningUpstream, idp: IdP
) -> None:
    token = idp.mint()
    async with guarded(upstream, idp) as sidecar:
        for name in SPELLINGS:
            # Also with a valid token in the header: the disguised copy would be a second one.
            alone = await send(sidecar, f"/q?a=1&{name.decode()}={token}")
            beside = await send(sidecar, f"/q?{name.decode()}=x", [("Authorization", f"Bearer {token}")])
            assert_invalid_request(alone)
            assert_invalid_request(beside)
        # A value, or a name that merely contains the letters, is no token.
        plain = await send(
            sidecar, "/q?q=access_token&access_tokens=1", [("Authorization", f"Bearer {token}")]
        )
    assert plain.status == 200
    assert upstream.paths() == ["/q?q=access_token&access_tokens=1"]


async def test_with_query_tokens_on_the_forwarded_query_holds_no_spelling(
    upstream: RunningUpstream, idp: IdP
) -> None:
    token = idp.mint()
    async with guarded(upstream, idp, allow_query_token=True) as sidecar:
        accepted = await send(sidecar, f"/q?a=1%2F2&access%5Ftoken={token}&b=+x")
        refused = [
            await send(sidecar, f"/q?access_token={token}&{name.decode()}={token}")
            for name in SPELLINGS
            if name != b"access%5Ftoken"
        ]
    assert accepted.status == 200, accepted.body
    for response in refused:
        assert_invalid_request(response)
    assert upstream.paths() == ["/q?a=1%2F2&b=+x"]


async def test_disguised_token_cookies_never_reach_the_application(
    upstream: RunningUpstream, idp: IdP
) -> None:
    token = idp.mint()
    async with guarded(upstream, idp, token_cookie="access", allow_anonymous=True) as sidecar:
        # With anonymous access on, a cookie the sidecar did not read as the token would pass as
        # anonymous while the application reads it as the token.
        for name in COOKIE_SPELLINGS:
            hidden = await send(sidecar, "/c", [("Cookie", f"theme=dark; {name.decode()}={token}")])
            second = await send(sidecar, "/c", [("Cookie", f"access={token}; {name.decode()}=other")])
            assert_invalid_request(hidden)
            assert_invalid_request(second)
        comma = await send(sidecar, "/c", [("Cookie", f"theme=dark, access={token}")])
        assert_invalid_request(comma)
        good = await send(sidecar, "/c", [("Cookie", f"theme=dark; access={token}")])
    assert good.status == 200
    assert len(upstream.seen) == 1
    assert upstream.seen[0].header("x-auth-request-user") == "alice"


async def test_an_ordinary_query_is_forwarded_untouched(upstream: RunningUpstream, idp: IdP) -> None:
    token = idp.mint()
    query = "q=caf%C3%A9&user%5Bname%5D=x&page=2&sort=-access&token=1&access=2"
    async with (
        guarded(upstream, idp) as sidecar,
        httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client,
    ):
        response = await client.get(f"/q?{query}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert upstream.paths() == [f"/q?{query}"]
