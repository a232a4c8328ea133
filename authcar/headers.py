"""Request and response header rules: what the client may send on, and what the sidecar sets.

Names arrive lower-cased from the server. Identity headers are compared after folding `_` and `.`
to `-`, because some application frameworks treat `X_Auth_Request_User` as `X-Auth-Request-User`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from authcar.errors import BadRequest
from authcar.types import Headers

# RFC 9110 §7.6.1 plus the legacy ones proxies have always dropped.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",  # RFC 9113 §3.2.1: connection-specific, meaningless past this hop
    }
)

# The server already answered `Expect: 100-continue`; the upstream must not wait for it again.
# `host` is re-set explicitly; the forwarding family is re-derived below.
REQUEST_DROP = HOP_BY_HOP | {b"expect", b"host"}

# Re-derived by the sidecar: from a trusted proxy merged into what it sets, from anyone else dropped.
FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
# The rest of the family (X-Forwarded-Port, -Ssl, -Scheme, ...) and the client-IP headers CDNs set:
# believed, and passed on as sent, only from a trusted proxy. Frameworks use them to decide the
# scheme or the caller's address.
FORWARDED_PREFIX = b"x-forwarded-"
CLIENT_IP_NAMES = frozenset(
    {
        b"forwarded",
        b"forwarded-for",
        b"x-real-ip",
        b"x-client-ip",
        b"client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"front-end-https",
        b"x-url-scheme",
        b"x-scheme",
        b"x-forwarded",
        b"x-host",
        b"x-proxyuser-ip",
        b"x-original-host",
        b"x-original-proto",
        b"x-original-forwarded-for",
        b"x-client-port",
        b"x-real-port",
        b"x-ssl",
    }
)
# Prefixes of the same family: believed only from a trusted proxy (Envoy decides "internal" from
# `x-envoy-internal`; `x-original-*` is what ingress controllers set before rewriting a request).
TRUSTED_ONLY_PREFIXES = (FORWARDED_PREFIX, b"x-envoy-", b"x-original-")

# Headers that change what the application routes or runs: frameworks that honour them would route
# on a path, or run a method, the policy never saw. Never a target for a claim header either (a
# user-editable claim would become a path override).
REQUEST_OVERRIDE_NAMES = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-uri",
        b"x-forwarded-uri",
        b"x-forwarded-path",
        b"x-forwarded-prefix",
        b"x-envoy-original-path",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"x-original-method",
    }
)

# Client-certificate headers as front proxies write them (nginx `X-SSL-Client-*`, Apache `SSL_CLIENT_*`
# as headers, Envoy `X-Forwarded-Client-Cert`, Traefik `X-Forwarded-Tls-Client-Cert`, AWS ALB
# `X-Amzn-Mtls-Clientcert-*`, IIS `X-ARR-ClientCert`, RFC 9440 `Client-Cert`/`Client-Cert-Chain`): an
# application that reads them believes the certificate they describe, so a client must never set
# them. The sidecar writes its own (RFC 9440 `Client-Cert`) for a certificate it verified.
CLIENT_CERT_NAMES = frozenset({b"x-forwarded-client-cert", b"x-arr-clientcert", b"x-client-verify"})
CLIENT_CERT_PREFIXES = (
    b"client-cert",
    b"ssl-client-",
    b"x-ssl-",
    b"x-client-cert",
    b"x-client-s-dn",
    b"x-client-i-dn",
    b"x-client-dn",
    b"x-forwarded-tls-client-",
    b"x-forwarded-ssl-client-",
    b"x-forwarded-client-",
    b"x-amzn-mtls-",
    b"x-mtls-",
    b"x-tls-client-",
)

# Headers whose only purpose is to tell the application who the caller is, and the overrides above.
# Only the sidecar may set them; whatever the client sent under these names (in any spelling) is
# removed.
# The identity headers other authenticating proxies set for their applications: an application
# built for one of them believes whatever a client writes under those names. (Google IAP, Azure App
# Service, AWS ALB, Cloudflare Access, Pomerium, Vouch, Kong, Authelia, Grafana-style auth proxies,
# mod_auth_openidc's OIDC_CLAIM_* and OIDC_access_token, Cloud Endpoints / API Gateway.)
OTHER_PROXY_IDENTITY_PREFIXES = (
    b"x-goog-authenticated-",
    b"x-goog-iap-",
    b"x-ms-client-principal",
    b"x-ms-token-",
    b"x-amzn-oidc-",
    b"cf-access-",
    b"x-pomerium-",
    b"x-vouch-",
    b"x-webauth-",
    b"x-authenticated-",
    b"x-consumer-",
    b"x-credential-",
    b"x-remote-",
    b"remote-",
    b"oidc-",
    b"x-oidc-",
    b"x-endpoint-api-userinfo",
    b"x-apigateway-api-userinfo",
)
OTHER_PROXY_IDENTITY_NAMES = frozenset(
    {
        b"x-auth-user",
        b"x-auth-email",
        b"x-auth-groups",
        b"x-auth-username",
        b"x-auth-roles",
        b"x-userid",
        b"x-username",
        b"x-groups",
        b"x-roles",
        b"x-email-verified",
        b"x-preferred-username",
        b"x-proxy-user",
        b"x-anonymous-consumer",
        b"x-user-id",
        b"x-user-name",
        b"x-user-email",
        b"x-user-groups",
        b"x-user-roles",
        b"x-jwt-assertion",
        b"x-jwt-payload",
    }
)

IDENTITY_PREFIXES = (b"x-auth-request-", b"x-authcar-", *CLIENT_CERT_PREFIXES, *OTHER_PROXY_IDENTITY_PREFIXES)
IDENTITY_NAMES = (
    REQUEST_OVERRIDE_NAMES
    | CLIENT_CERT_NAMES
    | OTHER_PROXY_IDENTITY_NAMES
    | {
        b"x-forwarded-user",
        b"x-forwarded-email",
        b"x-forwarded-groups",
        b"x-forwarded-preferred-username",
        b"x-forwarded-access-token",
        b"x-remote-user",
        b"remote-user",
        b"x-user",
        b"x-email",
        b"x-userinfo",
        b"x-id-token",
        b"x-access-token",
    }
)
# Request headers the rules above frame, re-derive or read themselves: never a claim header either.
FRAMING_NAMES = REQUEST_DROP | FORWARDING | CLIENT_IP_NAMES | {b"content-length", b"x-request-id"}

# One lookup classifies a (folded) request header name; names not listed are classed by prefix.
IDENTITY, TRUSTED_ONLY = 1, 2
RESTRICTED_NAMES: dict[bytes, int] = {
    **dict.fromkeys(FORWARDING | CLIENT_IP_NAMES | {b"x-request-id"}, TRUSTED_ONLY),
    **dict.fromkeys(IDENTITY_NAMES, IDENTITY),
    # Framing and hop-by-hop names reach this lookup only in a `_`/`.` spelling (the exact names are
    # handled above): `Transfer_Encoding` would be framing to a server that folds `_` to `-`.
    **dict.fromkeys(REQUEST_DROP | {b"content-length"}, IDENTITY),
}

RESPONSE_DROP = HOP_BY_HOP | {b"x-request-id"}

REQUEST_ID_PATTERN = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")

# Control bytes in a field value (RFC 9110 §5.5). http1.py's parser (httptools) already refuses them
# in responses; checked again before relaying because the server would refuse to write them only
# after it has marked the response as started, too late for a 502.
FIELD_VALUE_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search


class InvalidResponseHeader(ValueError):
    """The upstream sent a header field that cannot be passed on."""


def fold_name(name: bytes) -> bytes:
    return name.replace(b"_", b"-").replace(b".", b"-")


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Header names the client listed in `Connection`: hop-by-hop for this one hop only."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def new_request_id() -> str:
    """A random (version 4) UUID, formatted directly: a third of uuid.uuid4()'s cost."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def request_id_from(raw: Headers) -> str:
    """The client's X-Request-Id if well-formed, else a new one: for errors found before framing ended."""
    for name, value in raw:
        if name == b"x-request-id" and REQUEST_ID_PATTERN.fullmatch(value):
            return value.decode("ascii")
    return new_request_id()


@dataclass(frozen=True, slots=True)
class Framed:
    """What the gate learns from a request's headers, once."""

    headers: list[tuple[bytes, bytes]]  # to send upstream, identity and hop-by-hop headers removed
    request_id: str
    request_id_bytes: bytes
    host: str  # the Host header ("" without one): checked against the request target by the gate
    client_ip: str  # the real client as trusted proxies tell it (an IP address), else the peer
    content_length: int | None
    chunked: bool


class HeaderRules:
    """Applies the header rules for one configuration; built once at startup."""

    def __init__(
        self,
        trusted_proxies: Iterable[str],
        *,
        pass_host_header: bool,
        upstream_host: str,
        identity_header_names: Iterable[str] = (),
        forward_authorization: bool = True,
    ) -> None:
        """`identity_header_names`: the operator's claim headers, stripped like the built-in family;
        `forward_authorization=False` drops the client's Authorization (after authentication read it)."""
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.pass_host_header = pass_host_header
        self.upstream_host = upstream_host.encode("latin-1")
        stripped = {fold_name(name.lower().encode("latin-1")) for name in identity_header_names}
        if not forward_authorization:
            stripped.add(b"authorization")
        self.restricted = {**RESTRICTED_NAMES, **dict.fromkeys(stripped, IDENTITY)}
        # Most requests name the same host: a one-entry memo skips re-checking its syntax.
        self.last_valid_host: bytes | None = None

    def is_trusted(self, address: str) -> bool:
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def is_trusted_ip(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in network for network in self.trusted)

    def frame(self, raw: Headers, client: tuple[str, int] | None, scheme: str) -> Framed:
        """Split the client's headers into what goes upstream and what the gate needs to know."""
        peer = client[0] if client else ""
        trusted = self.is_trusted(peer)
        request_id = ""
        host = ""
        host_seen = False
        content_length: int | None = None
        chunked = False
        connection: list[bytes] = []
        forwarded: dict[bytes, bytes] = {}
        kept: list[tuple[bytes, bytes]] = []
        restricted = self.restricted

        for name, value in raw:
            if name in REQUEST_DROP:
                if name == b"connection":
                    connection.append(value)
                elif name == b"transfer-encoding":
                    # The server's parser has already de-chunked the body; we re-frame it ourselves.
                    # Anything but one plain "chunked" is a coding we do not speak or a smuggling
                    # attempt (RFC 9112 §6.1): refuse rather than guess where the body ends.
                    if chunked or value.strip().lower() != b"chunked":
                        raise BadRequest("unsupported Transfer-Encoding", code="bad_transfer_encoding")
                    chunked = True
                elif name == b"host":
                    if host_seen:
                        raise BadRequest("more than one Host header", code="bad_host")
                    host_seen = True
                    if value != self.last_valid_host:
                        check_host(value)
                        self.last_valid_host = value
                    host = value.decode("ascii")
                continue
            if name == b"content-length":
                length = parse_content_length(value)
                if content_length is not None and length != content_length:
                    raise BadRequest("conflicting Content-Length headers", code="bad_content_length")
                # Never kept: the upstream request's framing is written by the client pool from
                # what was parsed here, so nothing in the header list (not `Connection`) can alter it.
                content_length = length
                continue
            elif name == b"x-request-id":
                if not request_id and REQUEST_ID_PATTERN.fullmatch(value):
                    request_id = value.decode("ascii")
                continue
            else:
                folded = fold_name(name)
                kind = restricted.get(folded)
                if kind is None:
                    if folded.startswith(IDENTITY_PREFIXES):
                        kind = IDENTITY
                    elif folded.startswith(TRUSTED_ONLY_PREFIXES):
                        kind = TRUSTED_ONLY
                if kind is not None:
                    # Identity only ever comes from the sidecar; the forwarding family only from a
                    # trusted proxy, and never in a `_`/`.` spelling, which WSGI-style apps would read
                    # as the real header.
                    if kind == IDENTITY or not trusted or folded != name:
                        continue
                    if name in FORWARDING:
                        # Several values are joined, as RFC 9110 allows for list headers.
                        forwarded[name] = forwarded[name] + b", " + value if name in forwarded else value
                        continue
            kept.append((name, value))

        if content_length is not None and chunked:
            # RFC 9112 §6.3: both present is a smuggling attempt; the parser should have refused it.
            raise BadRequest("both Content-Length and Transfer-Encoding", code="ambiguous_body_length")

        # Connection may name headers to drop, but never the ones the sidecar sets itself.
        named = connection_tokens(connection)
        if named:
            kept = [(n, v) for n, v in kept if n not in named]

        client_ip = peer
        peer_bytes = peer.encode("latin-1")
        if trusted and b"x-forwarded-for" in forwarded:
            chain = forwarded[b"x-forwarded-for"]
            xff = chain + b", " + peer_bytes
            client_ip = self.real_client(chain.decode("latin-1"), peer)
        else:
            xff = peer_bytes
        proto = forwarded.get(b"x-forwarded-proto", b"") if trusted else b""
        fwd_host = forwarded.get(b"x-forwarded-host", b"") if trusted else b""
        host_bytes = host.encode("latin-1")

        headers = kept
        headers.append((b"host", host_bytes if (self.pass_host_header and host) else self.upstream_host))
        if xff:
            headers.append((b"x-forwarded-for", xff))
        headers.append((b"x-forwarded-proto", proto or scheme.encode("latin-1")))
        if fwd_host or host:
            headers.append((b"x-forwarded-host", fwd_host or host_bytes))
        if trusted and b"forwarded" in forwarded:
            headers.append((b"forwarded", forwarded[b"forwarded"]))
        request_id = request_id or new_request_id()
        request_id_bytes = request_id.encode("ascii")
        headers.append((b"x-request-id", request_id_bytes))
        return Framed(
            headers=headers,
            request_id=request_id,
            request_id_bytes=request_id_bytes,
            host=host,
            client_ip=client_ip,
            content_length=content_length,
            chunked=chunked,
        )

    def real_client(self, chain: str, peer: str) -> str:
        """The right-most address in X-Forwarded-For that is not one of our trusted proxies (`peer`
        is one). A hop that is not a plain IP address ends the walk at the last hop we can vouch for:
        it is what a client wrote, passed on, and the access log (and later rate limits per client
        address) must only ever get an address."""
        client = peer
        for hop in reversed(chain.split(",")):
            hop = hop.strip()
            if not hop:
                continue
            try:
                ip = ipaddress.ip_address(hop)
            except ValueError:
                return client
            if ip.version == 6 and ip.scope_id is not None:
                return client  # a zone names an interface of someone else's host
            client = str(ip)
            if not self.is_trusted_ip(ip):
                return client
        return client


# RFC 9112 §3.2 / RFC 3986 §3.2.2: uri-host [ ":" port ]. Registered names are limited to the
# unreserved characters (no percent-encoding, no sub-delims such as `,` `;` `=` `&`, which some
# applications split on); an IP literal must be a plain IPv6 address (no zone, no IPvFuture).
HOST_PATTERN = re.compile(rb"(?:\[([0-9A-Fa-f:.]{2,45})\]|([A-Za-z0-9._~-]{1,253}))(?::([0-9]{1,5}))?")


def check_host(value: bytes) -> None:
    """Raise BadRequest unless `value` is a syntactically valid Host field value."""
    match = HOST_PATTERN.fullmatch(value)
    if match is None:
        raise BadRequest("the Host header is not a valid host[:port]", code="bad_host")
    literal, _, port = match.groups()
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            raise BadRequest("the Host header is not a valid IPv6 literal", code="bad_host") from None
    if port is not None and not 0 < int(port) <= 65535:
        raise BadRequest("the Host header's port is out of range", code="bad_host")


def parse_content_length(value: bytes) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 19:
        raise BadRequest("invalid Content-Length", code="bad_content_length")
    return int(text)


def response_headers(
    raw: Iterable[tuple[bytes, bytes]],
    request_id: bytes,
    *,
    body: bool = True,
    own_cookie: Callable[[bytes], bool] | None = None,
) -> Headers:
    """Upstream response headers minus hop-by-hop ones (and those the upstream named in Connection).

    `body=False` is for statuses that never have one (1xx, 204, 304): their Content-Length, legal on
    a 304, would make the server wait for body bytes that never come and drop the connection.
    `own_cookie` (browser login): a Set-Cookie whose name it claims is dropped, so the application
    cannot set the sidecar's session or login-state cookie (a session of someone else's choosing).
    Raises InvalidResponseHeader for a value the server would refuse to write.
    """
    named: frozenset[bytes] = frozenset()
    out: Headers = []
    codings = 0
    for name, value in raw:
        lower = name.lower()
        if lower == b"connection":
            named = named | connection_tokens((value,))
        elif lower == b"transfer-encoding":
            # The client pool undoes "chunked" and nothing else: any other coding would reach the
            # client re-framed as if it were the body itself.
            codings += 1
            if codings > 1 or value.strip().lower() != b"chunked":
                raise InvalidResponseHeader(lower.decode("latin-1"))
        if lower in RESPONSE_DROP or (not body and lower == b"content-length"):
            continue
        if own_cookie is not None and lower == b"set-cookie" and own_cookie(value.partition(b"=")[0]):
            continue
        if FIELD_VALUE_CONTROL(value):
            raise InvalidResponseHeader(lower.decode("latin-1"))
        out.append((lower, value))
    if named:
        out = [(n, v) for n, v in out if n not in named]
    out.append((b"x-request-id", request_id))
    return out
