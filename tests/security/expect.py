"""What must hold of every request the application receives, and of each case's own expectations.

The invariants below hold for any request the sidecar forwards, whatever the client sent: framing
written by the sidecar (one Host, one way of delimiting the body and it matches the body, no chunk
extensions or trailers, no hop-by-hop or upgrade headers), identity headers only as the sidecar
writes them, the forwarding family only as the sidecar derives it for an untrusted client, and
nothing a case marked as forged (the word `forged` in a value or name) anywhere in the head.
"""

from __future__ import annotations

from authcar.headers import (
    CLIENT_IP_NAMES,
    FORWARDED_PREFIX,
    IDENTITY_NAMES,
    IDENTITY_PREFIXES,
    fold_name,
)
from tests.security.corpus import Expected
from tests.security.tokens import SUBJECT
from tests.support.recording_upstream import ReceivedRequest

# The identity headers the sidecar writes itself, as it spells them.
SIDECAR_IDENTITY = frozenset(
    {
        b"x-auth-request-user",
        b"x-auth-request-email",
        b"x-auth-request-preferred-username",
        b"x-auth-request-groups",
        b"x-auth-request-jwt",
    }
)
# The forwarding headers the sidecar sets for an untrusted client.
SIDECAR_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
NEVER_FORWARDED = frozenset(
    {b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"http2-settings", b"expect"}
)
CLIENT_ADDRESS = b"127.0.0.1"


def invariant_problems(request: ReceivedRequest) -> list[str]:
    """Everything wrong with one forwarded request, as readable sentences (empty: all is well)."""
    problems: list[str] = []
    names = [name.lower() for name, _ in request.headers]
    if request.version != "1.1":
        problems.append(f"forwarded as HTTP/{request.version}")
    if names.count(b"host") != 1:
        problems.append(f"{names.count(b'host')} Host headers")
    lengths = request.all("content-length")
    codings = request.all("transfer-encoding")
    if len(lengths) > 1:
        problems.append(f"several Content-Length headers: {lengths}")
    if lengths and codings:
        problems.append("both Content-Length and Transfer-Encoding")
    if codings and codings != [b"chunked"]:
        problems.append(f"Transfer-Encoding {codings} is not the sidecar's single 'chunked'")
    if lengths and lengths[0] != str(len(request.body)).encode():
        problems.append(f"Content-Length {lengths[0]!r} but a body of {len(request.body)} bytes")
    if request.body and not (lengths or codings):
        problems.append("a body without framing")
    if request.chunk_extensions:
        problems.append("chunk extensions forwarded")
    if request.trailers:
        problems.append(f"trailers forwarded: {request.trailers}")
    # A WebSocket handshake is the one request whose Upgrade the sidecar writes itself.
    websocket = request.upgrade and request.all("upgrade") == [b"websocket"]
    own_hop = {b"keep-alive", b"close", *([b"upgrade"] if websocket else [])}
    for value in request.all("connection"):
        tokens = {token.strip().lower() for token in value.split(b",")}
        if not tokens <= own_hop:
            problems.append(f"Connection: {value!r} (the sidecar's own hop needs no names)")
    for name, value in request.headers:
        lower = name.lower()
        folded = fold_name(lower)
        if lower in NEVER_FORWARDED and not (websocket and lower == b"upgrade"):
            problems.append(f"hop-by-hop header {name!r} forwarded")
        if b"forged" in name.lower() or b"forged" in value.lower():
            problems.append(f"forged header reached the application: {name!r}: {value[:100]!r}")
        identity = folded in IDENTITY_NAMES or folded.startswith(IDENTITY_PREFIXES)
        if identity and lower not in SIDECAR_IDENTITY:
            problems.append(f"identity header {name!r} the sidecar does not write")
        if lower in CLIENT_IP_NAMES or (
            folded.startswith(FORWARDED_PREFIX) and lower not in SIDECAR_FORWARDING
        ):
            problems.append(f"forwarding header {name!r} from an untrusted client")
        if folded != lower and (folded in CLIENT_IP_NAMES or folded.startswith(FORWARDED_PREFIX)):
            problems.append(f"odd spelling {name!r} of a forwarding header")
    for name in (*SIDECAR_IDENTITY, *SIDECAR_FORWARDING):
        if names.count(name) > 1:
            problems.append(f"{names.count(name)} {name.decode()} headers")
    user = request.all("x-auth-request-user")
    if user and user != [SUBJECT.encode()]:
        problems.append(f"X-Auth-Request-User is {user!r}, not the token's subject")
    if request.all("x-forwarded-for") not in ([], [CLIENT_ADDRESS]):
        problems.append(f"X-Forwarded-For {request.all('x-forwarded-for')!r} is not the client's address")
    if request.all("x-forwarded-proto") not in ([], [b"http"], *([[b"ws"]] if websocket else [])):
        problems.append(f"X-Forwarded-Proto {request.all('x-forwarded-proto')!r} from an untrusted client")
    if b"forged" in request.target.lower():
        problems.append(f"forged target {request.target!r}")
    return problems


def expectation_problems(request: ReceivedRequest, expected: Expected) -> list[str]:
    problems: list[str] = []
    if expected.method is not None and request.method != expected.method:
        problems.append(f"method {request.method}, expected {expected.method}")
    if expected.target is not None and request.target != expected.target.encode("latin-1"):
        problems.append(f"target {request.target!r}, expected {expected.target!r}")
    if expected.body is not None and request.body != expected.body:
        problems.append(f"body {request.body[:200]!r}, expected {expected.body[:200]!r}")
    if expected.chunked is not None and request.chunked != expected.chunked:
        problems.append(f"chunked={request.chunked}, expected {expected.chunked}")
    for name in expected.absent:
        if request.all(name):
            problems.append(f"{name} arrived: {request.all(name)!r}")
    for name in expected.present:
        if not request.all(name):
            problems.append(f"{name} did not arrive")
    for name, value in expected.equal:
        if request.all(name) != [value.encode("latin-1")]:
            problems.append(f"{name} is {request.all(name)!r}, expected exactly [{value!r}]")
    return problems
