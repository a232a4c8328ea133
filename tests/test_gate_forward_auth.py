"""Forward-auth through the gate's own stages, with the stand-in parts of tests/test_gate.py: the
described request is authenticated, authorized and asserted like a proxied one, answered instead of
forwarded, and recorded; and for every path, forward-auth decides what the proxy listener decides."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from authcar.config import Settings
from authcar.gate import Gate, GateOptions
from authcar.headers import HeaderRules
from authcar.identity import Identity
from authcar.observe import AccessLog, Metrics
from authcar.policy import Decision, PolicyRequest
from authcar.rate_limit import RateLimiter
from authcar.rate_spec import RateSpec
from authcar.store import MemoryStore
from authcar.types import Headers
from tests.test_gate import (
    ALICE,
    Answer,
    Rig,
    StandInAuthentication,
    StandInRevocations,
    StandInUpstream,
    call,
    own_endpoints,
    scope_for,
)

GATEWAY = ("10.0.0.5", 40000)  # in the trusted proxies below
STRANGER = ("192.0.2.7", 50123)  # not
TRUSTED = ("10.0.0.0/8",)


@dataclass
class PathPolicy:
    """Anyone may GET under /public/; readers may GET and HEAD under /items/; nothing else."""

    version: str = "v-fa"
    explained: list[Identity] = field(default_factory=list)

    def decide(self, request: PolicyRequest) -> Decision:
        if request.method == "GET" and request.path.startswith("/public/"):
            return Decision(True, ("authcar:anonymous", "/public/*", "GET"), "allowed", self.version)
        if (
            request.method in ("GET", "HEAD")
            and request.path.startswith("/items/")
            and "role:reader" in request.roles
        ):
            return Decision(True, ("role:reader", "/items/*", "GET|HEAD"), "allowed", self.version)
        return Decision(False, (), "no_matching_rule", self.version)

    @property
    def current(self) -> PathPolicy:
        return self

    def explain_denial(self, identity: Identity) -> None:
        self.explained.append(identity)


class RecordingIdentityHeaders:
    """The identity headers name the subject and the (method, path) they were minted for."""

    def __init__(self) -> None:
        self.minted: list[tuple[str, str]] = []

    def headers_for(self, identity: Identity, method: str, path: str) -> Headers:
        self.minted.append((method, path))
        headers = [(b"x-auth-request-jwt", f"assertion:{method}:{path}".encode())]
        if identity.subject:
            headers.insert(0, (b"x-auth-request-user", identity.subject.encode()))
        return headers


def fa_rig(
    *,
    trusted_proxies: tuple[str, ...] = TRUSTED,
    revocations: StandInRevocations | None = None,
    rate_limit: RateLimiter | None = None,
    **options: Any,
) -> tuple[Rig, list[tuple[str, str]]]:
    metrics, stream = Metrics(), io.StringIO()
    authentication, policy, upstream = StandInAuthentication(), PathPolicy(), StandInUpstream()
    identity_headers = RecordingIdentityHeaders()
    gate = Gate(
        header_rules=HeaderRules(trusted_proxies, pass_host_header=True, upstream_host="127.0.0.1:8080"),
        authentication=authentication,
        revocations=revocations or StandInRevocations(),
        rate_limit=rate_limit,
        policy=policy,
        identity_headers=identity_headers,
        upstream=upstream,
        reserved_app=own_endpoints,
        metrics=metrics,
        access_log=AccessLog(True, "json", stream),
        options=GateOptions.from_settings(Settings(**options)),
    )
    return Rig(gate, authentication, policy, upstream, metrics, stream), identity_headers.minted  # type: ignore[arg-type]


def nginx_asks(
    method: str, uri: str, token: str = "", *, client: tuple[str, int] = GATEWAY, extra: Headers = ()
) -> Any:
    """What nginx auth_request sends: its own GET, the client's headers, X-Original-*."""
    headers: Headers = [(b"x-original-method", method.encode()), (b"x-original-uri", uri.encode()), *extra]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return scope_for("GET", "/oauth2/auth", headers, client=client)


def forward_auth_count(r: Rig, status: int, decision: str) -> float | None:
    r.metrics.flush()
    labels = {"status": str(status), "decision": decision}
    return r.metrics.registry.get_sample_value("authcar_forward_auth_requests_total", labels)


# --- the answers ------------------------------------------------------------------------------


async def test_an_allowed_request_is_answered_200_with_the_identity_for_it_and_nothing_is_forwarded() -> None:
    r, minted = fa_rig()
    answer = await call(
        r.gate, nginx_asks("HEAD", "/items//7?x=1", "alice", extra=[(b"x-request-id", b"fa-1")])
    )

    assert answer.status == 200
    assert answer.body == b""
    assert answer.headers[b"content-length"] == b"0"
    assert answer.headers[b"cache-control"] == b"no-store"
    assert answer.headers[b"x-auth-request-user"] == b"alice"
    # The assertion is bound to the described request, not to GET /oauth2/auth.
    assert answer.headers[b"x-auth-request-jwt"] == b"assertion:HEAD:/items/7"
    assert minted == [("HEAD", "/items/7")]
    assert answer.headers[b"x-request-id"] == b"fa-1"
    assert r.upstream.seen == []
    assert r.authentication.asked == ["/items/7"]
    line = r.only_line()
    assert {
        k: line[k] for k in ("method", "path", "status", "decision", "subject", "forward_auth", "client")
    } == {
        "method": "HEAD",
        "path": "/items/7",
        "status": 200,
        "decision": "allow",
        "subject": "alice",
        "forward_auth": "x-original",
        "client": GATEWAY[0],
    }
    assert line["rule"] == ["role:reader", "/items/*", "GET|HEAD"]
    assert forward_auth_count(r, 200, "allow") == 1
    assert r.requests_counted(200, "allow") == 1


async def test_a_denied_caller_gets_403_with_the_json_body() -> None:
    r, minted = fa_rig()
    answer = await call(r.gate, nginx_asks("DELETE", "/items/7", "alice"))
    assert answer.status == 403
    assert answer.json()["error"] == "policy_denied"
    assert answer.headers[b"cache-control"] == b"no-store"
    assert b"x-auth-request-user" not in answer.headers
    assert minted == []
    assert r.upstream.seen == []
    assert r.policy.explained == [ALICE]
    line = r.only_line()
    assert (line["method"], line["path"], line["decision"], line["reason"], line["forward_auth"]) == (
        "DELETE",
        "/items/7",
        "deny",
        "no_matching_rule",
        "x-original",
    )
    assert forward_auth_count(r, 403, "deny") == 1


async def test_an_anonymous_caller_is_asked_for_credentials_and_a_bad_token_is_401() -> None:
    r, _ = fa_rig()
    anonymous = await call(r.gate, nginx_asks("GET", "/items/7"))
    assert anonymous.status == 401
    assert anonymous.json()["error"] == "no_credentials"
    assert anonymous.headers[b"www-authenticate"] == b'Bearer realm="authcar"'
    bad = await call(r.gate, nginx_asks("GET", "/items/7", "bad"))
    assert bad.status == 401
    assert bad.headers[b"www-authenticate"].startswith(b'Bearer realm="authcar"')
    assert r.upstream.seen == []
    public = await call(r.gate, nginx_asks("GET", "/public/x"))
    assert public.status == 200
    assert b"x-auth-request-user" not in public.headers
    assert public.headers[b"x-auth-request-jwt"] == b"assertion:GET:/public/x"
    assert [line["decision"] for line in r.log_lines()] == ["deny", "deny", "anonymous"]


async def test_dry_run_answers_200_for_a_denial_and_logs_it() -> None:
    r, _ = fa_rig(dry_run=True)
    answer = await call(r.gate, nginx_asks("DELETE", "/items/7", "alice"))
    assert answer.status == 200
    assert r.upstream.seen == []
    assert r.only_line()["decision"] == "dry_run_allow"


async def test_envoy_asks_with_the_path_after_the_prefix_and_its_own_method() -> None:
    r, minted = fa_rig()
    allowed = await call(
        r.gate,
        scope_for("GET", "/oauth2/auth/items/7", [(b"authorization", b"Bearer alice")], client=GATEWAY),
    )
    assert allowed.status == 200
    assert minted == [("GET", "/items/7")]
    denied = await call(
        r.gate,
        scope_for("DELETE", "/oauth2/auth/items/7", [(b"authorization", b"Bearer alice")], client=GATEWAY),
    )
    assert denied.status == 403
    assert [line["forward_auth"] for line in r.log_lines()] == ["path", "path"]
    assert r.upstream.seen == []


async def test_an_error_answer_has_a_body_unless_the_request_itself_is_a_head() -> None:
    r, _ = fa_rig()
    # nginx asks with a GET about a HEAD: the answer to the GET has its body.
    described_head = await call(r.gate, nginx_asks("HEAD", "/admin", "alice"))
    assert described_head.status == 403
    assert described_head.json()["error"] == "policy_denied"
    # Envoy asks with the HEAD itself: no body, as for any HEAD.
    own_head = await call(
        r.gate, scope_for("HEAD", "/oauth2/auth/admin", [(b"authorization", b"Bearer alice")], client=GATEWAY)
    )
    assert own_head.status == 403
    assert own_head.body == b""


# --- the stages that follow authentication hold for forward-auth too ----------------------------


async def test_a_revoked_token_is_401_to_the_gateway_too() -> None:
    revocations = StandInRevocations(revoked={"alice"})
    r, minted = fa_rig(revocations=revocations)
    answer = await call(r.gate, nginx_asks("GET", "/items/7", "alice"))
    assert answer.status == 401
    assert answer.json()["error"] == "revoked"
    assert answer.headers[b"www-authenticate"].startswith(b'Bearer realm="authcar", error="invalid_token"')
    assert revocations.checked == [ALICE]
    assert minted == []


async def test_the_rate_limit_counts_forward_auth_requests_per_described_client() -> None:
    r, _ = fa_rig(rate_limit=RateLimiter(RateSpec(1, 3600, 1), MemoryStore(), Metrics()))
    assert (await call(r.gate, nginx_asks("GET", "/items/7", "alice"))).status == 200
    limited = await call(r.gate, nginx_asks("GET", "/items/8", "alice"))
    assert limited.status == 429
    assert limited.json()["error"] == "rate_limited"
    assert b"retry-after" in limited.headers
    # Anonymous callers by the address the trusted gateway names, not by the gateway's own.
    for address in (b"203.0.113.1", b"203.0.113.2"):
        answer = await call(r.gate, nginx_asks("GET", "/public/x", extra=[(b"x-forwarded-for", address)]))
        assert answer.status == 200
    again = await call(r.gate, nginx_asks("GET", "/public/x", extra=[(b"x-forwarded-for", b"203.0.113.1")]))
    assert again.status == 429
    assert [line["decision"] for line in r.log_lines()][-1] == "rate_limited"
    assert forward_auth_count(r, 429, "rate_limited") == 2


# --- refusals ---------------------------------------------------------------------------------


async def test_an_untrusted_peer_is_refused_and_no_stage_runs() -> None:
    r, minted = fa_rig()
    for scope in (
        nginx_asks("GET", "/items/7", "alice", client=STRANGER),
        scope_for("GET", "/oauth2/auth/items/7", [(b"authorization", b"Bearer alice")], client=STRANGER),
    ):
        answer = await call(r.gate, scope)
        assert answer.status == 403
        assert answer.json()["error"] == "forward_auth_untrusted_peer"
    assert r.authentication.asked == []
    assert minted == []
    assert r.upstream.seen == []
    lines = r.log_lines()
    assert [(line["forward_auth"], line["path"], line["decision"]) for line in lines] == [
        ("refused", "/oauth2/auth", "deny"),
        ("refused", "/oauth2/auth/items/7", "deny"),
    ]
    assert forward_auth_count(r, 403, "deny") == 2


async def test_without_trusted_proxies_forward_auth_answers_no_one() -> None:
    r, _ = fa_rig(trusted_proxies=())
    answer = await call(r.gate, nginx_asks("GET", "/public/x", client=("127.0.0.1", 1)))
    assert (answer.status, answer.json()["error"]) == (403, "forward_auth_untrusted_peer")


async def test_a_described_path_trick_is_403_with_the_proxy_listeners_code() -> None:
    r, _ = fa_rig()
    proxied = await call(
        r.gate, scope_for("GET", "/public/%2e%2e/items/7", [(b"authorization", b"Bearer alice")])
    )
    asked = await call(r.gate, nginx_asks("GET", "/public/%2e%2e/items/7", "alice"))
    assert (proxied.status, asked.status) == (400, 403)
    assert proxied.json()["error"] == asked.json()["error"] == "dot_segment"
    assert r.authentication.asked == []
    assert r.log_lines()[1]["reason"] == "dot_segment"


async def test_a_websocket_handshake_on_the_endpoint_is_not_forward_auth() -> None:
    r, _ = fa_rig()
    answer = await call(r.gate, scope_for("GET", "/oauth2/auth", [], kind="websocket", client=GATEWAY))
    assert answer.status == 404  # the sidecar's own endpoints; never the upstream
    assert r.upstream.seen == []


# --- forward-auth decides what the proxy listener decides ------------------------------------

PIECES = [
    "items",
    "public",
    "admin",
    "7",
    "a",
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2F",
    "%2f",
    "%5C",
    "\\",
    ";",
    ";x=1",
    "%3B",
    "%25",
    "%252e",
    "2e",
    "%EF%BC%8E",
    "%E2%88%95",
    "%EF%BD%81dmin",
    "%61",
    "%7E",
    "~",
    "%C3%A9",
    "%C0%AE",
    "%00",
    "%zz",
    "%",
    "%E3%80%82",
]
# Under a prefix the policy allows, so that "allowed" is as likely as the refusals.
paths = st.builds(
    lambda prefix, parts: prefix + "/".join(parts),
    st.sampled_from(["/items/", "/public/", "/"]),
    st.lists(
        st.one_of(st.sampled_from(["7", "a", "b", ""]), st.sampled_from(PIECES)), min_size=1, max_size=4
    ),
)
tokens = st.sampled_from(["", "alice", "bad"])
methods = st.sampled_from(["GET", "HEAD", "DELETE"])


def outcome_of(r: Rig, answer: Answer, *, forwarded: bool) -> tuple[str, str]:
    """allowed / denied (and how) / refused (and why), whichever listener answered; read from the
    answer and its access line (a HEAD's answer has no body to read the code from)."""
    line = r.log_lines()[-1]
    status = answer.status
    if status == 200:
        return ("allowed", "")
    if line.get("reason") in ("no_matching_rule", "expired"):
        return ("denied", f"{status} {line['reason']}")
    assert status == (400 if forwarded else 403), (status, answer.body)
    if forwarded:
        return ("refused", answer.json()["error"] if answer.body else "")
    return ("refused", line["reason"])


@settings(deadline=None)
@given(path=paths, token=tokens, method=methods)
@example(path="/items/7", token="alice", method="GET")
@example(path="/public//a/", token="", method="GET")
@example(path="/items/%2e%2e/admin", token="alice", method="GET")
@example(path="/items/a;x=1", token="alice", method="HEAD")
@example(path="/admin", token="alice", method="GET")
def test_forward_auth_decides_every_path_as_the_proxy_listener_does(
    path: str, token: str, method: str
) -> None:
    asyncio.run(compare_listeners(path, token, method))


def same(proxied: tuple[str, str], asked: tuple[str, str]) -> bool:
    if proxied[0] == "refused" and not proxied[1]:
        return asked[0] == "refused"  # a HEAD's 400 has no body to name its code
    return proxied == asked


async def compare_listeners(path: str, token: str, method: str) -> None:
    r, minted = fa_rig()
    headers: Headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    proxied = outcome_of(r, await call(r.gate, scope_for(method, path, headers)), forwarded=True)
    forwarded_paths = [seen.raw_path.decode() for seen in r.upstream.seen]
    minted.clear()
    asked = outcome_of(r, await call(r.gate, nginx_asks(method, path, token)), forwarded=False)
    assert same(proxied, asked), (proxied, asked)
    event(proxied[0])
    if asked[0] == "allowed":
        # The very path that would have been forwarded is the one the assertion is bound to.
        assert minted == [(method, forwarded_paths[0])]
    envoy_scope = scope_for(method, "/oauth2/auth" + path, headers, client=GATEWAY)
    envoy = outcome_of(r, await call(r.gate, envoy_scope), forwarded=False)
    assert same(proxied, envoy), (proxied, envoy)
    assert len(r.upstream.seen) == (1 if proxied[0] == "allowed" else 0)
