"""Forward-auth (`/oauth2/auth`): which request a gateway asks about, read from its description.

A gateway in front of many services (nginx `auth_request`, ingress-nginx `auth-url`, Traefik
`forwardAuth`, Envoy `ext_authz`) sends the sidecar a request that *describes* the client's request;
the gate decides the described request with its usual stages and answers instead of forwarding.
This module only reads and vets the description; it decides nothing.

Where the description comes from:

    X-Forwarded-Method, X-Forwarded-Uri    Traefik, ingress-nginx snippets, most nginx guides
    X-Original-Method, X-Original-URI      nginx `auth_request` (`$request_method`, `$request_uri`)
    X-Original-URL                         ingress-nginx (`$scheme://$http_host$request_uri`)
    X-Forwarded-Host, X-Forwarded-Proto    the described host and scheme (not part of the decision)
    /oauth2/auth/<path>                    Envoy `ext_authz` with `path_prefix`: the path after the
                                           prefix, with this request's own method and query

Rules (each refusal is a 403 with a reason code: the gateway reads only the status, and nginx turns
any status but 2xx/401/403 into a 500):

- Only a peer in AUTHCAR_TRUSTED_PROXIES may ask (`forward_auth_untrusted_peer`), whatever mode:
  anyone else could learn the decision, and get the signed assertion, for a request it never made.
- One description: every header that describes the same thing must say the same, each name at
  most once (`forward_auth_conflict`). A gateway that sets X-Original-URI but passes on a client's
  X-Forwarded-Uri is therefore refused rather than believed either way.
- A method and a URI are both described (`forward_auth_incomplete`): nginx's own subrequest is a
  GET whatever the client sent, so a missing method is never taken to be this request's.
- The method is an RFC 9110 token, not CONNECT or TRACE in any case (`forward_auth_bad_method`).
- The URI is origin-form, or absolute-form `http(s)://host/...`, printable ASCII without a fragment,
  at most MAX_URI_BYTES; a host it names must agree with X-Forwarded-Host (`forward_auth_bad_uri`).
- The path goes through `authcar.paths.normalise_path`, the proxy listener's one normalisation;
  what it refuses (400 there) is refused here with the same code, as a 403.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from authcar.errors import BadRequest, Forbidden
from authcar.headers import check_host
from authcar.paths import normalise_path
from authcar.types import Scope

DescriptionSource = Literal["x-forwarded", "x-original", "path"]

# Longer than any URL a browser or gateway sends (nginx's default large_client_header_buffers is 8k).
MAX_URI_BYTES = 8192
# RFC 9110 §5.6.2 token; longer than any registered method.
METHOD_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
# Printable ASCII without `#` (a fragment never belongs to a request target) and without space.
URI_CHARACTERS = re.compile(rb"[\x21\x22\x24-\x7e]+")
ABSOLUTE_FORM = re.compile(rb"(https?)://([^/?]*)(.*)", re.IGNORECASE)

METHOD_HEADERS = (b"x-forwarded-method", b"x-original-method")
URI_HEADERS: dict[bytes, DescriptionSource] = {
    b"x-forwarded-uri": "x-forwarded",
    b"x-original-uri": "x-original",
    b"x-original-url": "x-original",
}
HOST_HEADER = b"x-forwarded-host"
PROTO_HEADER = b"x-forwarded-proto"
DESCRIPTION_HEADERS = frozenset({*METHOD_HEADERS, *URI_HEADERS, HOST_HEADER, PROTO_HEADER})


def refused(description: str, *, code: str) -> Forbidden:
    return Forbidden(description, code=code)


@dataclass(frozen=True, slots=True)
class Description:
    """The request a gateway asks about, vetted: what the gate authenticates, authorizes and asserts."""

    method: str
    path: str  # normalised by authcar.paths.normalise_path: the path the policy and the assertion see
    query: bytes
    host: str  # "" when the gateway did not say (the decision never depends on it)
    proto: str  # "http", "https", or "" when the gateway did not say
    source: DescriptionSource  # where the URI came from, for the access log

    @property
    def url(self) -> str:
        """The described request as a URL, or its path when host or scheme are unknown.

        The hook for browser sign-in (issue 13): the return-to target of a 401's sign-in URL. The
        host is a gateway's word; the login flow must still hold it to AUTHCAR_ALLOWED_REDIRECT_HOSTS.
        """
        target = self.path + ("?" + self.query.decode("ascii") if self.query else "")
        if self.host and self.proto:
            return f"{self.proto}://{self.host}{target}"
        return target

    def scope(self, scope: Scope) -> Scope:
        """The forward-auth request's scope, made to say the described request: method, path and
        query are the description's, the headers (the client's token and cookies) the request's own.

        The TLS extension is left out: a client certificate on this connection is the gateway's,
        never the described client's, and must not authenticate the request it describes.
        """
        extensions = {name: value for name, value in scope.get("extensions", {}).items() if name != "tls"}
        described: Scope = {
            **scope,
            "method": self.method,
            "path": unquote(self.path),
            "raw_path": self.path.encode("ascii"),
            "query_string": self.query,
            "extensions": extensions,
        }
        if self.proto:
            described["scheme"] = self.proto
        return described


@dataclass(frozen=True, slots=True)
class Target:
    """One described URI, split: the raw path and query, and the scheme and host if absolute-form."""

    raw_path: bytes
    query: bytes
    proto: str
    host: str


class ForwardAuth:
    """Recognises forward-auth requests and reads their description; one per gate."""

    def __init__(self, reserved_prefix: str, refused_methods: Collection[str]) -> None:
        self.path = reserved_prefix.rstrip("/") + "/auth"
        self.raw_path = self.path.encode("ascii")
        self.raw_prefix = self.raw_path + b"/"
        self.refused_methods = frozenset(method.upper() for method in refused_methods)

    def recognises(self, raw_path: bytes) -> bool:
        """`/oauth2/auth` or `/oauth2/auth/<path>`, as sent (before normalisation, which would refuse
        a described path's tricks with a 400 rather than the 403 a gateway understands)."""
        return raw_path == self.raw_path or raw_path.startswith(self.raw_prefix)

    def describe(self, scope: Scope, *, trusted: bool) -> Description:
        """The vetted description of the request `scope` asks about; Forbidden when there is none."""
        if not trusted:
            raise refused(
                "forward-auth is answered only to AUTHCAR_TRUSTED_PROXIES", code="forward_auth_untrusted_peer"
            )
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in DESCRIPTION_HEADERS:
                if name in found:
                    raise refused(f"more than one {name.decode()} header", code="forward_auth_conflict")
                found[name] = value

        raw_path: bytes = scope["raw_path"]
        methods: list[str] = []
        targets: list[Target] = []
        source: DescriptionSource | None = None
        if raw_path != self.raw_path:
            # Envoy's path_prefix: the path after it, with this request's own method and query.
            methods.append(scope["method"])
            targets.append(Target(raw_path[len(self.raw_path) :], scope.get("query_string", b""), "", ""))
            source = "path"
        for name in METHOD_HEADERS:
            if name in found:
                methods.append(self.method(found[name]))
        for name, header_source in URI_HEADERS.items():
            if name in found:
                targets.append(parse_uri(found[name]))
                source = source or header_source
        if not methods or not targets or source is None:
            raise refused(
                "a forward-auth request must describe a method and a URI", code="forward_auth_incomplete"
            )
        if len(set(methods)) > 1:
            raise refused("the described methods disagree", code="forward_auth_conflict")
        if len({(target.raw_path, target.query) for target in targets}) > 1:
            raise refused("the described URIs disagree", code="forward_auth_conflict")

        hosts = {target.host for target in targets if target.host}
        if HOST_HEADER in found:
            hosts.add(vetted_host(found[HOST_HEADER]))
        protos = {target.proto for target in targets if target.proto}
        if PROTO_HEADER in found:
            protos.add(vetted_proto(found[PROTO_HEADER]))
        if len(hosts) > 1 or len(protos) > 1:
            raise refused("the described host or scheme disagree", code="forward_auth_conflict")

        target = targets[0]
        try:
            # The very function the proxy listener runs on its own paths.
            path = normalise_path(target.raw_path)
        except BadRequest as error:
            raise refused(error.description, code=error.code) from None
        return Description(
            method=methods[0],
            path=path,
            query=target.query,
            host=hosts.pop() if hosts else "",
            proto=protos.pop() if protos else "",
            source=source,
        )

    def method(self, value: bytes) -> str:
        if not METHOD_TOKEN.fullmatch(value):
            raise refused("the described method is not an HTTP method", code="forward_auth_bad_method")
        method = value.decode("ascii")
        if method.upper() in self.refused_methods:
            raise refused(f"{method} is not served", code="forward_auth_bad_method")
        return method


def parse_uri(value: bytes) -> Target:
    """An origin-form (`/path?query`) or absolute-form (`https://host/path?query`) URI, split."""
    if len(value) > MAX_URI_BYTES:
        raise refused("the described URI is too long", code="forward_auth_bad_uri")
    if not URI_CHARACTERS.fullmatch(value):
        # Control characters (CR, LF, NUL), space, non-ASCII bytes, a fragment, or nothing at all.
        raise refused(
            "the described URI holds a character no request target has", code="forward_auth_bad_uri"
        )
    proto = host = ""
    absolute = ABSOLUTE_FORM.fullmatch(value)
    if absolute is not None:
        scheme, authority, value = absolute.groups()
        proto, host = scheme.decode("ascii").lower(), vetted_host(authority)
        value = value or b"/"
    elif value[:1] != b"/":
        raise refused("the described URI is neither a path nor an http(s) URL", code="forward_auth_bad_uri")
    raw_path, _, query = value.partition(b"?")
    if not raw_path:
        raw_path = b"/"  # `https://host?q`
    return Target(raw_path, query, proto, host)


def vetted_host(value: bytes) -> str:
    try:
        check_host(value)
    except BadRequest:
        raise refused("the described host is not a valid host[:port]", code="forward_auth_bad_uri") from None
    return value.decode("ascii").lower()


def vetted_proto(value: bytes) -> str:
    proto = value.strip().lower()
    if proto not in (b"http", b"https"):
        raise refused("the described scheme is not http or https", code="forward_auth_bad_uri")
    return proto.decode("ascii")
