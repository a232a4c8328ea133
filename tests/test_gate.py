"""The gate alone: driven as an ASGI app with hand-built scopes, with stand-in parts and no sockets.

Authentication, the policy, the identity headers and the upstream are small stand-ins that record
what they were asked; header rules, metrics and the access log are the real ones (they do no I/O).
Each test asserts what the client was answered, what the upstream saw (or that it saw nothing), and
what the record step handed to the metrics and the access log.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest

from authcar.config import Settings
from authcar.errors import BadGateway, PayloadTooLarge, Revoked, ServiceUnavailable, Unauthorized
from authcar.exchange import Exchange
from authcar.gate import Gate, GateOptions
from authcar.headers import Framed, HeaderRules
from authcar.identity import ANONYMOUS, Identity
from authcar.observe import AccessLog, Metrics
from authcar.policy import Decision, PolicyRequest
from authcar.types import Headers, Message, Receive, Scope, Send

PEER = ("192.0.2.7", 50123)
ALICE = Identity(subject="alice", issuer="https://idp.example", roles=frozenset({"reader"}), source="jwt")


# --- stand-ins --------------------------------------------------------------------------------


class StandInAuthentication:
    """`Bearer alice` is Alice, `Bearer bad` is refused, no token is anonymous."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def authenticate(self, scope: Scope, path: str) -> Identity:
        self.asked.append(path)
        authorization = dict(scope["headers"]).get(b"authorization", b"")
        if authorization == b"Bearer alice":
            return ALICE
        if authorization:
            raise Unauthorized("the token is not acceptable", code="expired")
        return ANONYMOUS


@dataclass
class StandInRevocations:
    """Refuses the subjects in `revoked`; with `unavailable`, every identity (a store outage)."""

    revoked: set[str] = field(default_factory=set)
    unavailable: bool = False
    checked: list[Identity] = field(default_factory=list)

    def check(self, identity: Identity) -> None:
        self.checked.append(identity)
        if identity.is_anonymous:
            return
        if identity.subject in self.revoked:
            raise Revoked()
        if self.unavailable:
            raise ServiceUnavailable("revocations cannot be checked right now", code="revocation_unavailable")


@dataclass
class StandInPolicy:
    """Readers may GET anything; anyone may GET /public; nothing else. Counts the denials explained."""

    version: str = "v-test"
    explained: list[Identity] = field(default_factory=list)

    def decide(self, request: PolicyRequest) -> Decision:
        if request.method == "GET" and "role:reader" in request.roles:
            return Decision(True, ("role:reader", "/*", "GET"), "allowed", self.version)
        if request.method == "GET" and request.path == "/public":
            return Decision(True, ("authcar:anonymous", "/public", "GET"), "allowed", self.version)
        return Decision(False, (), "no_matching_rule", self.version)

    @property
    def current(self) -> StandInPolicy:
        return self

    def explain_denial(self, identity: Identity) -> None:
        self.explained.append(identity)


class StandInIdentityHeaders:
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail

    def headers_for(self, identity: Identity, method: str, path: str) -> Headers:
        if self.fail:
            raise RuntimeError("a bug in the identity headers")
        return [(b"x-auth-request-user", identity.subject.encode())] if identity.subject else []


@dataclass
class Forwarded:
    method: str
    raw_path: bytes
    headers: Headers


class StandInUpstream:
    """Answers 200 "hello" (or fails as told) and records every request it was given."""

    def __init__(self, *, fail_with: str = "", client_failed: str = "") -> None:
        self.seen: list[Forwarded] = []
        self.fail_with = fail_with
        self.client_failed = client_failed

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, framed: Framed, exchange: Exchange
    ) -> None:
        self.seen.append(Forwarded(scope["method"], scope["raw_path"], list(framed.headers)))
        if self.fail_with:
            exchange.error = self.fail_with
            raise BadGateway("the application is not reachable", code="upstream_unreachable")
        if self.client_failed:
            exchange.client_failed(self.client_failed)
            raise PayloadTooLarge()
        exchange.status, exchange.upstream_seconds = 200, 0.001
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-request-id", framed.request_id_bytes)],
            }
        )
        await send({"type": "http.response.body", "body": b"hello"})
        exchange.bytes_out = 5

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, framed: Framed, exchange: Exchange
    ) -> None:
        self.seen.append(Forwarded("WEBSOCKET", scope["raw_path"], list(framed.headers)))
        exchange.status = 101
        await send({"type": "websocket.accept"})


async def own_endpoints(scope: Scope, receive: Receive, send: Send) -> None:
    """The sidecar's own app (reserved paths): says which request id it was given."""
    request_id = dict(scope["headers"])[b"x-request-id"]
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"own:" + request_id})


# --- the gate and its requests ----------------------------------------------------------------


@dataclass
class Rig:
    gate: Gate
    authentication: StandInAuthentication
    policy: StandInPolicy
    upstream: StandInUpstream
    metrics: Metrics
    log_stream: io.StringIO

    def log_lines(self) -> list[dict[str, Any]]:
        self.gate.access_log.flush()
        return [json.loads(line) for line in self.log_stream.getvalue().splitlines()]

    def only_line(self) -> dict[str, Any]:
        lines = self.log_lines()
        assert len(lines) == 1, lines
        return lines[0]

    def requests_counted(self, status: int, decision: str) -> float | None:
        self.metrics.flush()
        labels = {"status": str(status), "decision": decision}
        return self.metrics.registry.get_sample_value("authcar_requests_total", labels)


def rig(
    *,
    upstream: StandInUpstream | None = None,
    identity_headers: StandInIdentityHeaders | None = None,
    revocations: StandInRevocations | None = None,
    trusted_proxies: tuple[str, ...] = (),
    **settings: Any,
) -> Rig:
    """A gate with the sidecar's default settings but for `settings`."""
    metrics = Metrics()
    stream = io.StringIO()
    authentication, policy = StandInAuthentication(), StandInPolicy()
    upstream = upstream or StandInUpstream()
    gate = Gate(
        header_rules=HeaderRules(trusted_proxies, pass_host_header=True, upstream_host="127.0.0.1:8080"),
        authentication=authentication,
        revocations=revocations or StandInRevocations(),
        policy=policy,
        identity_headers=identity_headers or StandInIdentityHeaders(),
        upstream=upstream,
        reserved_app=own_endpoints,
        metrics=metrics,
        access_log=AccessLog(True, "json", stream),
        options=GateOptions.from_settings(Settings(**settings)),
    )
    return Rig(gate, authentication, policy, upstream, metrics, stream)


def scope_for(
    method: str = "GET",
    target: str = "/items",
    headers: Headers | None = None,
    *,
    kind: str = "http",
    client: tuple[str, int] = PEER,
) -> Scope:
    raw_path = target.encode("ascii")
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "ws" if kind == "websocket" else "http",
        "path": unquote(target),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"books.example"), *(headers or [])],
        "client": client,
        "server": ("127.0.0.1", 4180),
        "extensions": {},
    }


@dataclass
class Answer:
    messages: list[Message]

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


async def call(gate: Gate, scope: Scope) -> Answer:
    sent: list[Message] = []
    first = {"type": "websocket.connect"} if scope["type"] == "websocket" else {"type": "http.request"}
    pending = [first]

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    return Answer(sent)


# --- the pipeline's outcomes ------------------------------------------------------------------


async def test_an_allowed_caller_is_forwarded_with_its_identity_and_without_the_forged_one() -> None:
    r = rig()
    headers = [
        (b"authorization", b"Bearer alice"),
        (b"x-auth-request-user", b"mallory"),
        (b"x-request-id", b"r-1"),
    ]
    answer = await call(r.gate, scope_for("GET", "/items/7", headers))

    assert answer.status == 200
    assert answer.body == b"hello"
    [seen] = r.upstream.seen
    assert (seen.method, seen.raw_path) == ("GET", b"/items/7")
    assert [v for n, v in seen.headers if n == b"x-auth-request-user"] == [b"alice"]
    assert (b"x-request-id", b"r-1") in seen.headers
    line = r.only_line()
    assert {
        k: line[k] for k in ("request_id", "client", "method", "path", "status", "decision", "subject")
    } == {
        "request_id": "r-1",
        "client": PEER[0],
        "method": "GET",
        "path": "/items/7",
        "status": 200,
        "decision": "allow",
        "subject": "alice",
    }
    assert line["roles"] == ["authcar:authenticated", "role:reader"]
    assert line["rule"] == ["role:reader", "/*", "GET"]
    assert line["policy"] == "v-test"
    assert "peer" not in line  # no proxy in between: the peer is the client
    assert r.requests_counted(200, "allow") == 1


async def test_what_is_checked_is_what_is_forwarded_and_logged() -> None:
    r = rig()
    answer = await call(r.gate, scope_for("GET", "//public", []))
    # The stand-in policy allows anyone on /public only: the normalised path decided, and went on.
    assert answer.status == 200
    assert r.authentication.asked == ["/public"]
    assert [seen.raw_path for seen in r.upstream.seen] == [b"/public"]
    line = r.only_line()
    assert (line["path"], line["decision"], line["subject"]) == ("/public", "anonymous", "")


async def test_a_denied_caller_gets_403_nothing_is_forwarded_and_the_denial_is_recorded() -> None:
    r = rig()
    answer = await call(r.gate, scope_for("DELETE", "/items/7", [(b"authorization", b"Bearer alice")]))

    assert answer.status == 403
    assert r.upstream.seen == []
    assert r.policy.explained == [ALICE]
    line = r.only_line()
    assert (line["status"], line["decision"], line["reason"], line["subject"]) == (
        403,
        "deny",
        "no_matching_rule",
        "alice",
    )
    assert line["request_id"] == answer.json()["request_id"] == answer.headers[b"x-request-id"].decode()
    assert r.requests_counted(403, "deny") == 1
    assert r.metrics.registry.get_sample_value("authcar_authz_decisions_total", {"decision": "deny"}) == 1


async def test_an_anonymous_caller_the_policy_refuses_is_asked_for_credentials() -> None:
    r = rig()
    answer = await call(r.gate, scope_for("GET", "/items"))
    assert answer.status == 401
    assert answer.json()["error"] == "no_credentials"
    assert r.upstream.seen == []
    line = r.only_line()
    assert (line["decision"], line["reason"], line["roles"]) == (
        "deny",
        "no_matching_rule",
        ["authcar:anonymous"],
    )


async def test_a_refused_token_is_401_and_the_policy_is_never_asked() -> None:
    r = rig()
    answer = await call(r.gate, scope_for("GET", "/items", [(b"authorization", b"Bearer bad")]))
    assert answer.status == 401
    assert answer.json()["error"] == "expired"
    assert r.upstream.seen == []
    line = r.only_line()
    assert (line["decision"], line["reason"], line["subject"]) == ("deny", "expired", "")
    assert "policy" not in line  # no decision was taken


async def test_a_revoked_identity_is_401_revoked_before_the_policy_and_nothing_is_forwarded() -> None:
    revocations = StandInRevocations(revoked={"alice"})
    r = rig(revocations=revocations)
    answer = await call(r.gate, scope_for("GET", "/items", [(b"authorization", b"Bearer alice")]))
    assert answer.status == 401
    assert answer.json()["error"] == "revoked"
    assert answer.headers[b"www-authenticate"].startswith(b'Bearer realm="authcar", error="invalid_token"')
    assert revocations.checked == [ALICE]
    assert r.upstream.seen == []
    line = r.only_line()
    assert (line["decision"], line["reason"], line["subject"]) == ("deny", "revoked", "alice")
    assert "policy" not in line


async def test_revocations_that_cannot_be_checked_are_503_with_retry_after_but_anonymous_passes() -> None:
    r = rig(revocations=StandInRevocations(unavailable=True))
    answer = await call(r.gate, scope_for("GET", "/items", [(b"authorization", b"Bearer alice")]))
    assert answer.status == 503
    assert answer.json()["error"] == "revocation_unavailable"
    assert answer.headers[b"retry-after"] == b"1"
    assert r.upstream.seen == []
    public = await call(r.gate, scope_for("GET", "/public"))
    assert public.status == 200
    assert len(r.upstream.seen) == 1


async def test_dry_run_lets_a_denial_through_and_says_why() -> None:
    r = rig(dry_run_paths=("DELETE /items/*",))
    answer = await call(r.gate, scope_for("DELETE", "/items/7", [(b"authorization", b"Bearer alice")]))
    assert answer.status == 200
    assert [seen.method for seen in r.upstream.seen] == ["DELETE"]
    line = r.only_line()
    assert (line["decision"], line["reason"]) == ("dry_run_allow", "no_matching_rule")
    assert r.policy.explained == []  # let through: nothing to explain

    other = rig(dry_run_paths=("DELETE /items/*",))
    assert (
        await call(other.gate, scope_for("POST", "/items/7", [(b"authorization", b"Bearer alice")]))
    ).status == 403


async def test_reserved_paths_are_answered_by_the_sidecar_itself_with_the_settled_request_id() -> None:
    r = rig()
    answer = await call(r.gate, scope_for("GET", "/oauth2/nothing-here", [(b"x-request-id", b"bad id!")]))
    assert answer.status == 404
    request_id = answer.headers[b"x-request-id"]
    assert answer.body == b"own:" + request_id  # the endpoint saw the id it answered with
    assert request_id != b"bad id!"  # a malformed client id is replaced, never echoed
    assert r.upstream.seen == []
    assert r.authentication.asked == []
    line = r.only_line()
    assert (line["status"], line["decision"], line["bytes_out"]) == (404, "sidecar", len(answer.body))
    assert line["request_id"] == request_id.decode()


@pytest.mark.parametrize(
    ("method", "target", "extra", "code"),
    [
        ("GET", "/a/%2e%2e/b", [], "dot_segment"),
        ("TRACE", "/items", [], "method_not_allowed"),
        ("GET", "/items", [(b"host", b"other.example")], "bad_host"),
        ("POST", "/items", [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], None),
    ],
    ids=["encoded-dot-segment", "trace", "two-hosts", "length-and-chunked"],
)
async def test_bad_requests_are_refused_before_any_stage_runs(
    method: str, target: str, extra: Headers, code: str | None
) -> None:
    r = rig()
    answer = await call(r.gate, scope_for(method, target, [(b"authorization", b"Bearer alice"), *extra]))
    assert 400 <= answer.status < 500
    if code is not None:
        assert answer.json()["error"] == code
    assert r.authentication.asked == []
    assert r.upstream.seen == []
    line = r.only_line()
    assert line["decision"] == "error"
    assert line["status"] == answer.status
    # Refused before framing settled on an id: the record keeps the one the client was given.
    assert line["request_id"] == answer.headers[b"x-request-id"].decode()
    assert line["bytes_out"] == len(answer.body) > 0


async def test_a_bug_in_a_stage_is_a_502_never_a_traceback_and_nothing_is_forwarded() -> None:
    r = rig(identity_headers=StandInIdentityHeaders(fail=True))
    answer = await call(r.gate, scope_for("GET", "/items", [(b"authorization", b"Bearer alice")]))
    assert answer.status == 502
    assert answer.json()["error"] == "internal_error"
    assert b"Traceback" not in answer.body
    assert b"a bug" not in answer.body
    assert r.upstream.seen == []
    line = r.only_line()
    assert (line["decision"], line["subject"]) == ("error", "alice")


async def test_an_upstream_failure_is_answered_and_counted_by_its_kind() -> None:
    r = rig(upstream=StandInUpstream(fail_with="connect_failed"))
    answer = await call(r.gate, scope_for("GET", "/items", [(b"authorization", b"Bearer alice")]))
    assert answer.status == 502
    assert len(r.upstream.seen) == 1
    line = r.only_line()
    assert (line["decision"], line["upstream_error"], line["status"]) == ("error", "connect_failed", 502)
    assert (
        r.metrics.registry.get_sample_value("authcar_upstream_errors_total", {"kind": "connect_failed"}) == 1
    )
    assert r.requests_counted(502, "error") == 1


async def test_a_failure_the_client_caused_is_logged_but_not_counted_against_the_application() -> None:
    r = rig(upstream=StandInUpstream(client_failed="body_too_large"))
    answer = await call(r.gate, scope_for("GET", "/items", [(b"authorization", b"Bearer alice")]))
    assert answer.status == 413
    line = r.only_line()
    assert (line["upstream_error"], line["status"]) == ("body_too_large", 413)
    assert (
        r.metrics.registry.get_sample_value("authcar_upstream_errors_total", {"kind": "body_too_large"})
        is None
    )


async def test_a_websocket_handshake_goes_through_the_same_stages() -> None:
    r = rig()
    refused = await call(r.gate, scope_for("GET", "/live", kind="websocket"))
    assert refused.messages[0]["type"] == "websocket.http.response.start"
    assert refused.status == 401
    accepted = await call(
        r.gate, scope_for("GET", "/live", [(b"authorization", b"Bearer alice")], kind="websocket")
    )
    assert accepted.messages == [{"type": "websocket.accept"}]
    assert [(seen.method, seen.raw_path) for seen in r.upstream.seen] == [("WEBSOCKET", b"/live")]
    assert [(line["method"], line["status"], line["decision"]) for line in r.log_lines()] == [
        ("WEBSOCKET", 401, "deny"),
        ("WEBSOCKET", 101, "allow"),
    ]


# --- the client address: the real client as trusted proxies tell it --------------------------


async def test_the_client_address_behind_a_trusted_proxy_is_the_one_it_names() -> None:
    r = rig(trusted_proxies=("10.0.0.0/8",))
    headers = [(b"authorization", b"Bearer alice"), (b"x-forwarded-for", b"203.0.113.9, 10.1.2.3")]
    await call(r.gate, scope_for("GET", "/items", headers, client=("10.0.0.5", 40000)))
    line = r.only_line()
    # 10.1.2.3 is one of ours too: the right-most hop that is not is the caller.
    assert (line["client"], line["peer"]) == ("203.0.113.9", "10.0.0.5")
    [seen] = r.upstream.seen
    assert (b"x-forwarded-for", b"203.0.113.9, 10.1.2.3, 10.0.0.5") in seen.headers


async def test_an_untrusted_peer_cannot_name_another_client_address() -> None:
    r = rig(trusted_proxies=("10.0.0.0/8",))
    headers = [
        (b"x-forwarded-for", b"10.9.9.9"),
        (b"x-real-ip", b"10.9.9.9"),
        (b"forwarded", b"for=10.9.9.9"),
    ]
    await call(r.gate, scope_for("GET", "/public", headers))
    line = r.only_line()
    assert line["client"] == PEER[0]
    assert "peer" not in line


@pytest.mark.parametrize(
    "chain",
    [
        b'x"}, 10.0.0.9',  # JSON-breaking text a client wrote, passed on by our proxy
        b"unknown, 10.0.0.9",
        b"203.0.113.9 10.0.0.7, 10.0.0.9",  # two addresses without a comma
        b"fe80::1%eth0, 10.0.0.9",  # a zone: someone else's interface
        b"203.0.113.9:4711, 10.0.0.9",  # a port is not an address
        b"_, 10.0.0.9",
    ],
)
async def test_a_hop_that_is_not_an_address_ends_at_the_last_hop_we_vouch_for(chain: bytes) -> None:
    r = rig(trusted_proxies=("10.0.0.0/8",))
    await call(r.gate, scope_for("GET", "/public", [(b"x-forwarded-for", chain)], client=("10.0.0.5", 40000)))
    line = r.only_line()  # the JSON line still parses
    assert (line["client"], line["peer"]) == ("10.0.0.9", "10.0.0.5")


async def test_only_trusted_hops_name_the_left_most_and_addresses_are_written_canonically() -> None:
    r = rig(trusted_proxies=("10.0.0.0/8", "2001:db8::/32"))
    chain = b"10.0.0.1, 2001:DB8:0:0::7"
    await call(r.gate, scope_for("GET", "/public", [(b"x-forwarded-for", chain)], client=("10.0.0.5", 40000)))
    assert r.only_line()["client"] == "10.0.0.1"
    r = rig(trusted_proxies=("10.0.0.0/8",))
    chain = b"2001:DB8:0:0::7, 10.0.0.1"
    await call(r.gate, scope_for("GET", "/public", [(b"x-forwarded-for", chain)], client=("10.0.0.5", 40000)))
    assert r.only_line()["client"] == "2001:db8::7"
