"""Path normalisation (one definition, authorized and forwarded byte for byte) and public paths."""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from authcar.errors import BadRequest
from authcar.paths import (
    PublicPathRule,
    PublicPaths,
    _normalise_slow,
    normalise_path,
    parse_public_paths,
)

UNRESERVED = "abcxyzABCXYZ0189-._~"

# --- rejected: (raw_path, reason code) -----------------------------------------------------------

REJECTED = [
    # not origin-form
    (b"", "bad_request_target"),
    (b"a/b", "bad_request_target"),
    (b"*", "bad_request_target"),
    (b"http://evil.example/admin", "bad_request_target"),
    (b"\\admin", "bad_request_target"),
    (b"%2Fadmin", "bad_request_target"),
    (b"../admin", "bad_request_target"),
    # dot segments, raw and encoded in every case mix, anywhere
    (b"/.", "dot_segment"),
    (b"/..", "dot_segment"),
    (b"/../admin", "dot_segment"),
    (b"/public/../admin", "dot_segment"),
    (b"/public/./admin", "dot_segment"),
    (b"/public/..", "dot_segment"),
    (b"/public/../", "dot_segment"),
    (b"//..//admin", "dot_segment"),
    (b"/public/%2e%2e/admin", "dot_segment"),
    (b"/public/%2E%2E/admin", "dot_segment"),
    (b"/public/%2e%2E/admin", "dot_segment"),
    (b"/public/.%2e/admin", "dot_segment"),
    (b"/public/%2e./admin", "dot_segment"),
    (b"/public/%2e/admin", "dot_segment"),
    (b"/%2E", "dot_segment"),
    # encoded slash and backslash
    (b"/public%2fadmin", "encoded_slash"),
    (b"/public/..%2Fadmin", "encoded_slash"),
    (b"/public/%2e%2e%2fadmin", "encoded_slash"),
    (b"/%2F%2Fevil.example", "encoded_slash"),
    (b"/public%5cadmin", "encoded_slash"),
    (b"/public/..%5C..%5Cadmin", "encoded_slash"),
    # double encoding, including doubles only visible once unreserved encodings are decoded
    (b"/public/%252e%252e/admin", "double_encoding"),
    (b"/public/%252F", "double_encoding"),
    (b"/a%2541", "double_encoding"),
    (b"/%2525", "double_encoding"),
    (b"/%25c3%25a9", "double_encoding"),
    (b"/%25%32%65", "double_encoding"),
    (b"/%25%32e", "double_encoding"),
    (b"/%25%61%62", "double_encoding"),
    # path parameters
    (b"/admin;/x", "path_parameter"),
    (b"/public/..;/admin", "path_parameter"),
    (b"/a;jsessionid=1", "path_parameter"),
    (b"/;", "path_parameter"),
    (b"/a%3bb", "path_parameter"),
    (b"/a%3B", "path_parameter"),
    # encoded control characters (C0, DEL, C1)
    (b"/admin%00", "encoded_control"),
    (b"/admin%00.json", "encoded_control"),
    (b"/a%0a", "encoded_control"),
    (b"/a%0D%0AX-Injected:%201", "encoded_control"),
    (b"/a%09b", "encoded_control"),
    (b"/a%1F", "encoded_control"),
    (b"/a%7f", "encoded_control"),
    (b"/a%c2%85", "encoded_control"),
    (b"/a%C2%9F", "encoded_control"),
    # raw bytes that are not printable ASCII, fragments, a query inside raw_path, raw backslash
    (b"/admin\x00", "invalid_path_character"),
    (b"/a b", "invalid_path_character"),
    (b"/a\tb", "invalid_path_character"),
    (b"/a\r\nX: 1", "invalid_path_character"),
    (b"/a\x7f", "invalid_path_character"),
    (b"/caf\xc3\xa9", "invalid_path_character"),
    (b"/\xff", "invalid_path_character"),
    (b"/\xc0\xae\xc0\xae/admin", "invalid_path_character"),
    (b"/public#/../admin", "invalid_path_character"),
    (b"/a#", "invalid_path_character"),
    (b"/admin?/public", "invalid_path_character"),
    (b"/public\\..\\admin", "invalid_path_character"),
    (b"/a\\b", "invalid_path_character"),
    # malformed percent-encoding
    (b"/%", "invalid_percent_encoding"),
    (b"/a%", "invalid_percent_encoding"),
    (b"/a%4", "invalid_percent_encoding"),
    (b"/a%4/b", "invalid_percent_encoding"),
    (b"/%zz", "invalid_percent_encoding"),
    (b"/%g0", "invalid_percent_encoding"),
    (b"/%%41", "invalid_percent_encoding"),
    (b"/%-1", "invalid_percent_encoding"),
    (b"/%+4", "invalid_percent_encoding"),
    # encoded bytes that are not UTF-8: overlong '.' and '/', stray and truncated sequences,
    # surrogates, beyond U+10FFFF, Latin-1
    (b"/%C0%AE%C0%AE/admin", "invalid_percent_encoding"),
    (b"/%c0%af", "invalid_percent_encoding"),
    (b"/%E0%80%AE", "invalid_percent_encoding"),
    (b"/%c3", "invalid_percent_encoding"),
    (b"/%c3x%a9", "invalid_percent_encoding"),
    (b"/%c3%41%a9", "invalid_percent_encoding"),
    (b"/%a9", "invalid_percent_encoding"),
    (b"/%ED%A0%80", "invalid_percent_encoding"),
    (b"/%F4%90%80%80", "invalid_percent_encoding"),
    (b"/caf%E9", "invalid_percent_encoding"),
    (b"/%C1%9C", "invalid_percent_encoding"),  # overlong '\\'
    (b"/%F0%80%80%AE", "invalid_percent_encoding"),  # four-byte overlong '.'
    # Unicode look-alikes of '.', '/' and '\\' (NFKC, ASCII folding, best-fit code pages)
    (b"/public/%EF%BC%8E%EF%BC%8E/admin", "dot_segment"),  # fullwidth full stops
    (b"/public/%ef%bc%8e%ef%bc%8e/admin", "dot_segment"),
    (b"/public/%E2%80%A5/admin", "dot_segment"),  # two dot leader
    (b"/public/%E2%80%A4%E2%80%A4/admin", "dot_segment"),  # one dot leader
    (b"/public/.%E2%80%A4/admin", "dot_segment"),
    (b"/public/%EF%B9%92/admin", "dot_segment"),  # small full stop
    (b"/public/%E2%80%A6", "dot_segment"),  # ellipsis
    (b"/a%E2%92%88b", "dot_segment"),  # digit one full stop: a '.' anywhere
    (b"/public/%E3%80%82%E3%80%82/admin", "dot_segment"),  # ideographic full stops (IDNA: '.')
    (b"/public/%EF%BD%A1./admin", "dot_segment"),  # halfwidth ideographic full stop
    (b"/public/.%CC%81./admin", "dot_segment"),  # a dot with a combining accent
    (b"/public%EF%BC%8Fadmin", "encoded_slash"),  # fullwidth solidus
    (b"/public/..%EF%BC%8Fadmin", "encoded_slash"),
    (b"/public%EF%BC%BCadmin", "encoded_slash"),  # fullwidth reverse solidus
    (b"/public%EF%B9%A8admin", "encoded_slash"),  # small reverse solidus
    (b"/public%E2%88%95admin", "encoded_slash"),  # division slash
    (b"/public%E2%81%84admin", "encoded_slash"),  # fraction slash
    (b"/public%E2%88%96admin", "encoded_slash"),  # set minus
    (b"/public%E2%A7%B5admin", "encoded_slash"),  # reverse solidus operator
    (b"/public%C2%A5admin", "encoded_slash"),  # yen sign: '\\' in code page 932
    (b"/public%E2%82%A9admin", "encoded_slash"),  # won sign: '\\' in code page 949
    (b"/%E2%84%80", "encoded_slash"),  # account of: 'a/c'
    (b"/%EF%BD%81dmin", "unicode_lookalike"),  # fullwidth 'a'
    (b"/%EF%BC%A1DMIN", "unicode_lookalike"),
    (b"/adm%C4%B1n", "unicode_lookalike"),  # dotless i: upper case 'I'
    (b"/%C5%BFecret", "unicode_lookalike"),  # long s: upper case 'S'
    (b"/%E2%84%AAey", "unicode_lookalike"),  # Kelvin sign: lower case 'k'
    (b"/%C4%B0d", "unicode_lookalike"),  # capital I with dot: lower case 'i' + a dot
    (b"/%EF%AC%81le", "unicode_lookalike"),  # the 'fi' ligature
    (b"/a%C2%A0b", "unicode_lookalike"),  # no-break space: NFKC ' '
    (b"/x%C2%B2", "unicode_lookalike"),  # superscript two
    (b"/adm%C2%ADin", "encoded_control"),  # soft hyphen
    (b"/adm%E2%80%8Bin", "encoded_control"),  # zero-width space
    (b"/adm%E2%80%8Cin", "encoded_control"),  # a zero-width non-joiner next to ASCII
    (b"/%E2%80%8D", "encoded_control"),
    (b"/a%E2%80%AEb", "encoded_control"),  # right-to-left override
    (b"/a%EF%BB%BF", "encoded_control"),  # byte order mark
    (b"/a%E1%85%9F", "encoded_control"),  # Hangul choseong filler
    (b"/a%CD%8F", "encoded_control"),  # combining grapheme joiner
]


@pytest.mark.parametrize(("raw", "code"), REJECTED)
def test_ambiguous_paths_are_rejected(raw: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        normalise_path(raw)
    assert info.value.code == code
    assert info.value.status == 400
    with pytest.raises(BadRequest) as slow:
        _normalise_slow(raw)
    assert slow.value.code == code


# --- accepted: (raw_path, normalised) ------------------------------------------------------------

ACCEPTED = [
    (b"/", "/"),
    (b"/api/v1/books/123", "/api/v1/books/123"),
    (b"/a/", "/a/"),
    (b"//", "/"),
    (b"///", "/"),
    (b"//a///b", "/a/b"),
    (b"/a//", "/a/"),
    (b"//evil.example/x", "/evil.example/x"),
    (b"/.well-known/openid-configuration", "/.well-known/openid-configuration"),
    (b"/a/.b/..c/.../c.", "/a/.b/..c/.../c."),
    (b"/%2e%2e%2e", "/..."),
    (b"/%2e%2ehidden", "/..hidden"),
    (b"/%7euser/%7Eme", "/~user/~me"),
    (b"/%41%42%43%2d%5f", "/ABC-_"),
    (b"/caf%c3%a9", "/caf%C3%A9"),
    (b"/caf%C3%a9", "/caf%C3%A9"),
    (b"/%e2%82%ac/%F0%9F%98%80", "/%E2%82%AC/%F0%9F%98%80"),
    (b"/e%CC%81", "/e%CC%81"),
    (b"/a%20b", "/a%20b"),
    (b"/a%3fb", "/a%3Fb"),
    (b"/a%23b", "/a%23b"),
    (b"/a%3a%40", "/a%3A%40"),
    (b"/a%2E", "/a."),
    (b"/100%25", "/100%25"),
    (b"/%25zz", "/%25zz"),
    (b"/%25", "/%25"),
    (b"/%25%41", "/%25A"),
    (b"/%25%3F", "/%25%3F"),
    (b"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    (b"/a|b/{c}/[d]/^`", "/a|b/{c}/[d]/^`"),
    (b"/A/Admin", "/A/Admin"),
    # Non-ASCII text that no normalisation reads as ASCII passes, kept encoded
    (b"/stra%C3%9Fe", "/stra%C3%9Fe"),  # 'ß' upper-cases to 'SS', which no matcher folds
    (b"/%E6%97%A5%E6%9C%AC%E3%80%82", "/%E6%97%A5%E6%9C%AC%E3%80%82"),  # a Japanese sentence
    (b"/%EF%BD%B1", "/%EF%BD%B1"),  # halfwidth katakana: NFKC is fullwidth katakana
    (b"/%D9%A0%D9%A0", "/%D9%A0%D9%A0"),  # Arabic-Indic zeros look like '..', but read as digits
    (b"/%DA%A9%D8%AA%D8%A7%D8%A8%E2%80%8C%D9%87%D8%A7", "/%DA%A9%D8%AA%D8%A7%D8%A8%E2%80%8C%D9%87%D8%A7"),
    (b"/%F0%9F%91%A8%E2%80%8D%F0%9F%91%A9", "/%F0%9F%91%A8%E2%80%8D%F0%9F%91%A9"),  # emoji ZWJ
    (b"/%E2%9D%A4%EF%B8%8F", "/%E2%9D%A4%EF%B8%8F"),  # a variation selector
    (b"/l%C2%B7l", "/l%C2%B7l"),  # Catalan middle dot inside a word
]


@pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
def test_normalised_form(raw: bytes, expected: str) -> None:
    assert normalise_path(raw) == expected
    assert _normalise_slow(raw) == expected
    # The normalised form is its own normal form.
    assert normalise_path(expected.encode("ascii")) == expected


def test_the_fast_path_returns_the_input_unchanged() -> None:
    raw = b"/api/v1/books/123"
    assert normalise_path(raw) == raw.decode("ascii")
    assert normalise_path(bytearray(raw)) == "/api/v1/books/123"


# --- properties ----------------------------------------------------------------------------------

TOKENS = [
    b"/", b"//", b"a", b"Z", b"0", b"2", b"e", b"f", b"F", b"-", b"_", b"~", b".", b"..",
    b"%", b"%2e", b"%2E", b"%2f", b"%2F", b"%5c", b"%5C", b"%25", b"%41", b"%61", b"%7e",
    b"%32", b"%65", b"%c3", b"%A9", b"%C2", b"%85", b"%C0", b"%AE", b"%e2%82%ac", b"%20",
    b"%3b", b"%3F", b"%23", b"%00", b"%7F", b"%ZZ", b"%4", b";", b"\\", b"#", b"?", b" ",
    b"\x00", b"\t", b"\x7f", b"\xc3\xa9", b"@", b":", b"|",
]  # fmt: skip
path_like = st.lists(st.sampled_from(TOKENS), max_size=14).map(b"".join)
raw_paths = st.one_of(st.binary(max_size=40), path_like, path_like.map(lambda b: b"/" + b))
NORMAL_FORM = re.compile(r"(?:[!$&'()*+,\-.0-:=@-Z\[\]^_`a-z{|}~/\x22<>]|%[0-9A-F]{2})*")


@dataclass(frozen=True)
class Rejected:
    code: str


def outcome(normalise: Callable[[bytes], str], raw: bytes) -> str | Rejected:
    try:
        return normalise(raw)
    except BadRequest as exc:
        return Rejected(exc.code)


def segments(path: bytes) -> list[bytes]:
    return [segment for segment in path.split(b"/") if segment]


def assert_safe(out: str) -> None:
    assert out.isascii()
    assert out.startswith("/")
    assert "//" not in out
    assert NORMAL_FORM.fullmatch(out), out
    assert normalise_path(out.encode("ascii")) == out  # a fixed point
    for segment in segments(out.encode("ascii")):
        decoded = unquote_to_bytes(segment)
        assert decoded not in (b".", b"..")
        # Decoding never introduces a separator, a parameter or a control character ...
        assert not set(decoded) & {*b"/\\;", *range(0x20), 0x7F}
        text = decoded.decode("utf-8")  # ... has one reading ...
        assert not any("\x80" <= c <= "\x9f" for c in text)
        assert unquote_to_bytes(decoded) == decoded  # ... and a second decode changes nothing.
        # Unreserved characters are never left encoded.
        assert not any(chr(int(h, 16)) in UNRESERVED for h in re.findall(r"%(..)", segment.decode()))


@settings(max_examples=1500)
@given(raw_paths)
@example(b"/%25%32%65")
@example(b"/%C2%85")
def test_output_is_safe_and_fast_path_agrees(raw: bytes) -> None:
    out = outcome(normalise_path, raw)
    assert outcome(_normalise_slow, raw) == out
    if isinstance(out, Rejected):
        return
    assert_safe(out)
    # Meaning is kept: the same segments once decoded, the same trailing slash.
    assert [unquote_to_bytes(s) for s in segments(raw)] == [
        unquote_to_bytes(s) for s in segments(out.encode("ascii"))
    ]
    assert raw.endswith(b"/") == out.endswith("/")


@given(st.text(alphabet=UNRESERVED + "/", max_size=30))
def test_unreserved_input_only_has_its_slashes_merged(text: str) -> None:
    raw = "/" + text
    merged = re.sub("/+", "/", raw)
    if any(s in (".", "..") for s in merged.split("/")):
        with pytest.raises(BadRequest, match="segment"):
            normalise_path(raw.encode())
    else:
        assert normalise_path(raw.encode()) == merged


@given(st.text(alphabet=UNRESERVED + "/", max_size=20), st.data())
def test_encoding_unreserved_characters_changes_nothing(text: str, data: st.DataObject) -> None:
    plain = "/" + text
    encoded = "".join(
        data.draw(st.sampled_from([c, f"%{ord(c):02x}", f"%{ord(c):02X}"])) if c != "/" else c for c in plain
    )
    assert outcome(normalise_path, encoded.encode()) == outcome(normalise_path, plain.encode())


@given(path_like)
def test_nothing_accepted_under_a_prefix_escapes_it(tail: bytes) -> None:
    try:
        out = normalise_path(b"/docs/" + tail)
    except BadRequest:
        return
    # However the application decodes and resolves the path, it stays under /docs/.
    resolved = posixpath.normpath(unquote_to_bytes(out).decode("utf-8"))
    assert resolved == "/docs" or resolved.startswith("/docs/")


# --- Unicode, the whole range --------------------------------------------------------------------

LOOKALIKE_CODES = {"encoded_slash", "dot_segment"}


def encoded(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def every_code_point() -> list[str]:
    return [chr(cp) for cp in range(0x80, 0x110000) if not 0xD800 <= cp <= 0xDFFF]


def compatibility_forms(char: str) -> str:
    return unicodedata.normalize("NFKC", char) + unicodedata.normalize("NFKD", char)


def test_every_code_point_whose_compatibility_form_has_a_dot_or_slash_is_refused() -> None:
    found = [c for c in every_code_point() if not {".", "/", "\\"}.isdisjoint(compatibility_forms(c))]
    # The enumeration finds the known ones (and cannot silently find nothing).
    assert {"\u2024", "\u2025", "\ufe52", "\uff0e", "\uff0f", "\uff3c", "\ufe68", "\u2100"} <= set(found)
    for char in found:
        for raw in (f"/{encoded(char)}", f"/a{encoded(char)}b/c", f"/x/{encoded(char) * 2}/admin"):
            assert outcome(normalise_path, raw.encode()) in {Rejected(code) for code in LOOKALIKE_CODES}, (
                f"U+{ord(char):04X}",
                raw,
            )


def test_no_accepted_code_point_reads_as_ascii_or_is_invisible() -> None:
    # Every character that any compatibility mapping, case mapping or the format category makes
    # interesting; the rest of the range has none of those and is accepted as it is.
    interesting = [
        c
        for c in every_code_point()
        if compatibility_forms(c) != c + c
        or c.upper() != c
        or c.lower() != c
        or unicodedata.category(c) == "Cf"
    ]
    assert len(interesting) > 10_000
    refused = 0
    for char in interesting:
        raw = f"/x{encoded(char)}y"
        out = outcome(normalise_path, raw.encode())
        if isinstance(out, Rejected):
            refused += 1
            continue
        assert out == raw, f"U+{ord(char):04X}"  # kept, encoded exactly as sent
        # NFKD keeps the base letter of every accented one ('e' in 'é'); NFKC says what is read.
        assert not any(c.isascii() for c in unicodedata.normalize("NFKC", char)), f"U+{ord(char):04X}"
        assert unicodedata.category(char) != "Cf" or char in "\u200c\u200d", f"U+{ord(char):04X}"
        assert all(len(m) > 1 or not m.isascii() for m in (char.upper(), char.lower())), f"U+{ord(char):04X}"
        assert not char.lower()[0].isascii(), f"U+{ord(char):04X}"  # as 'İ' lower-cases to 'i' + a dot
    assert refused > 1000


@settings(deadline=None)
@given(st.text(min_size=1, max_size=6), st.sampled_from(["/", "/a/", "/public/"]))
def test_any_encoded_text_is_refused_or_forwarded_unchanged(text: str, prefix: str) -> None:
    try:
        raw = (prefix + "".join(encoded(c) if not c.isascii() else f"%{ord(c):02X}" for c in text)).encode()
    except UnicodeEncodeError:  # lone surrogates have no UTF-8
        return
    out = outcome(normalise_path, raw)
    if isinstance(out, Rejected):
        return
    assert_safe(out)
    # Whatever an application does to the decoded path with NFKC, it gains no '/', '\\' or dot segment.
    decoded = unicodedata.normalize("NFKC", unquote_to_bytes(out).decode("utf-8"))
    assert "\\" not in decoded
    assert decoded.count("/") == out.count("/")
    assert not {".", ".."} & set(decoded.split("/"))


# --- public paths --------------------------------------------------------------------------------


def test_parse_entries() -> None:
    assert parse_public_paths(["GET /healthz", "GET|POST /status", "  /docs/*  ", "DELETE  /x/"]) == (
        PublicPathRule(frozenset({"GET", "HEAD"}), "/healthz", prefix=False),
        PublicPathRule(frozenset({"GET", "HEAD", "POST"}), "/status", prefix=False),
        PublicPathRule(None, "/docs/", prefix=True),
        PublicPathRule(frozenset({"DELETE"}), "/x/", prefix=False),
    )
    assert parse_public_paths([]) == ()
    assert parse_public_paths(["HEAD /ping"])[0].methods == frozenset({"HEAD"})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "expected"),
        ("   ", "expected"),
        ("GET POST /x", "expected"),
        ("GET /a b", "expected"),
        ("get /x", "unknown method"),
        ("FETCH /x", "unknown method"),
        ("GET| /x", "unknown method"),
        ("GET,POST /x", "unknown method"),
        ("* /x", "unknown method"),
        ("GET", "must start with '/'"),
        ("healthz", "must start with '/'"),
        ("docs/*", "must start with '/'"),
        ("/docs*", "'*' is only allowed"),
        ("/do*cs/x", "'*' is only allowed"),
        ("/*/x", "'*' is only allowed"),
        ("/docs/*/", "'*' is only allowed"),
        ("/docs/**", "'*' is only allowed"),
        ("*", "'*' is only allowed"),
        ("/*", "every path"),
        ("/a/../b", "normalised form"),
        ("/a/./b", "normalised form"),
        ("/docs/../*", "normalised form"),
        ("/a//b", "write '/a/b'"),
        ("//docs/*", "write '/docs/*'"),
        ("/%7euser", "write '/~user'"),
        ("/caf%c3%a9", "write '/caf%C3%A9'"),
        ("/café", "ASCII"),
        ("/a%2Fb", "normalised form"),
        ("/a;b", "normalised form"),
        ("/healthz?probe=1", "normalised form"),
        ("/a#top", "normalised form"),
        ("/%zz", "normalised form"),
    ],
)
def test_bad_entries_are_config_errors(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_public_paths(["GET /ok", entry])
    assert repr(entry) in str(info.value)  # says which entry


PUBLIC = PublicPaths.from_entries(
    ["GET /healthz", "/docs/*", "POST /hooks/github", "GET /static/*", "GET /caf%C3%A9", "/~user/*"]
)


@pytest.mark.parametrize(
    ("method", "path", "public"),
    [
        ("GET", "/healthz", True),
        ("HEAD", "/healthz", True),  # GET covers HEAD
        ("POST", "/healthz", False),
        ("OPTIONS", "/healthz", False),
        ("get", "/healthz", False),  # methods are case-sensitive
        ("GET", "/healthz/", False),
        ("GET", "/healthzx", False),
        ("GET", "/healthz/x", False),
        ("GET", "/Healthz", False),
        ("DELETE", "/docs/", True),  # no methods: any method
        ("GET", "/docs/a/b", True),
        ("PROPFIND", "/docs/a", True),
        ("GET", "/docs", False),  # the prefix is the directory, not the name
        ("GET", "/docsx", False),
        ("GET", "/docsx/a", False),
        ("GET", "/", False),
        ("POST", "/hooks/github", True),
        ("GET", "/hooks/github", False),  # a POST rule does not cover GET or HEAD
        ("HEAD", "/hooks/github", False),
        ("HEAD", "/static/app.js", True),
        ("POST", "/static/app.js", False),
        ("GET", "/caf%C3%A9", True),
        ("GET", "/~user/x", True),
    ],
)
def test_matching(method: str, path: str, public: bool) -> None:
    assert PUBLIC.matches(method, path) is public


def test_requests_match_on_their_normalised_path() -> None:
    assert PUBLIC.matches("GET", normalise_path(b"/caf%c3%a9"))
    assert PUBLIC.matches("GET", normalise_path(b"/%7euser/x"))
    assert PUBLIC.matches("GET", normalise_path(b"//healthz"))
    assert PUBLIC.matches("GET", normalise_path(b"/%68ealthz"))
    assert not PUBLIC.matches("GET", normalise_path(b"/docs%2ex/a"))  # '/docs.x/a'
    # Escapes from a public prefix never get as far as the matcher.
    for raw in [b"/docs/..%2Fadmin", b"/docs/%2e%2e/admin", b"/docs/../admin", b"/docs/..;/admin"]:
        with pytest.raises(BadRequest):
            normalise_path(raw)


def test_the_query_string_never_takes_part() -> None:
    # The matcher is given the path only: a query that names a public path changes nothing.
    assert not PUBLIC.matches("GET", normalise_path(b"/admin"))  # ?next=/docs/x
    assert not PUBLIC.matches("GET", "/admin?/docs/x")
    assert not PUBLIC.matches("GET", "/healthz?x=1")
    # A query that leaked into raw_path is rejected rather than split differently later.
    with pytest.raises(BadRequest):
        normalise_path(b"/admin?/healthz")


def test_rules_for_the_same_path_are_merged() -> None:
    paths = PublicPaths.from_entries(["GET /x", "POST /x"])
    assert paths.matches("HEAD", "/x")
    assert paths.matches("POST", "/x")
    assert not paths.matches("PUT", "/x")
    assert PublicPaths.from_entries(["GET /x", "/x"]).matches("PUT", "/x")


def test_empty_public_paths_are_falsy() -> None:
    assert not PublicPaths()
    assert not PublicPaths.from_entries([])
    assert not PublicPaths().matches("GET", "/")
    assert PublicPaths.from_entries(["/x"])
    assert PublicPaths.from_entries(["/x"]).rules == (PublicPathRule(None, "/x", prefix=False),)


near_public = st.tuples(
    st.sampled_from([b"/docs", b"/docs/", b"//docs//", b"/%64ocs/", b"/healthz", b"/healthz/", b"/"]),
    path_like,
).map(b"".join)


@given(near_public, st.sampled_from(["GET", "HEAD", "POST", "DELETE"]))
def test_matching_is_exactly_the_documented_rule(raw: bytes, method: str) -> None:
    try:
        path = normalise_path(raw)
    except BadRequest:
        return
    expected = path.startswith("/docs/") or (path == "/healthz" and method in ("GET", "HEAD"))
    assert PublicPaths.from_entries(["GET /healthz", "/docs/*"]).matches(method, path) is expected
