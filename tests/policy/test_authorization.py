"""Authorization through the running sidecar, with the book service's policy (policies/).

../shared/SECURITY.md "Paths and authorization", one test per class: a real sidecar in front of a
real upstream, tokens from the test identity provider, requests written byte for byte. Every
refusal asserts the status, the JSON error, and that the upstream saw nothing; every request let
through asserts that the upstream received exactly the path the policy decided on. Policy reloads
are in tests/policy/test_authorization_reload.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from authcar.policy import PolicyError
from tests.idp import IdP, run_idp
from tests.support.process import start_sidecar_process
from tests.support.rawhttp import RawResponse, request_bytes, send_raw
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream, serve_upstream

# One event loop for the module, so most tests can share one sidecar (starting and stopping one
# costs about half a second).
pytestmark = pytest.mark.asyncio(loop_scope="module")

BOOK_POLICY = Path(__file__).resolve().parents[2] / "policies"
# The demo's people: alice reads, bob edits, carol administers.
ROLES = {"alice": ("reader",), "bob": ("editor",), "carol": ("admin",)}

READ_BOOKS_RULE = ["role:reader", "/books", "^(GET|HEAD)$", "allow", "*"]
READ_BOOK_RULE = ["role:reader", "/books/:id", "^(GET|HEAD)$", "allow", "*"]
CREATE_BOOK_RULE = ["role:editor", "/books", "^POST$", "allow", "*"]
OWN_REVIEW_RULE = ["role:reader", "/books/:id/reviews/:reviewer", "^(PUT|DELETE)$", "allow", "reviewer"]
DELETE_BOOK_RULE = ["role:admin", "/books/:id", "^DELETE$", "allow", "*"]
AUDIT_RULE = ["role:admin", "/audit", "^(GET|HEAD)$", "allow", "*"]
ANONYMOUS_HEALTH_RULE = ["authcar:anonymous", "/healthz", "^(GET|HEAD)$", "allow", "*"]

# --- a sidecar guarding the book service ------------------------------------------------------


@dataclass
class Guarded:
    """The sidecar, what reached the upstream, and the access log as the operator reads it."""

    sidecar: RunningSidecar
    upstream: RunningUpstream
    idp: IdP
    access_log: io.StringIO
    sent_ids: list[str] = field(default_factory=list)  # request ids of the answers to `send`

    def token(self, subject: str, roles: Iterable[str] | None = None) -> str:
        return self.idp.mint(sub=subject, roles=tuple(ROLES.get(subject, ()) if roles is None else roles))

    async def send(
        self,
        method: str,
        target: str,
        *,
        as_user: str | None = None,
        token: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> RawResponse:
        """One request exactly as written: client libraries would clean up the targets under test."""
        sent = list(headers)
        bearer = token if token is not None else (self.token(as_user) if as_user is not None else None)
        if bearer is not None:
            sent.append(("Authorization", f"Bearer {bearer}"))
        if body:
            sent.append(("Content-Length", str(len(body))))
        request = request_bytes(method, target, sent, body)
        response = await send_raw(self.sidecar.port, request, head=method == "HEAD")
        self.sent_ids.append(response.header("x-request-id") or "")
        return response

    def reset(self) -> None:
        """Forget what earlier tests sent, so each test sees only its own requests."""
        self.sent_ids.clear()
        self.upstream.seen.clear()

    async def lines_for(self, request_ids: Iterable[str], within: float = 5.0) -> dict[str, dict[str, Any]]:
        """The access-log lines of these requests, by request id.

        A line is written just after the answer's last byte, so it may trail the answer: wait for it.
        """
        wanted = set(request_ids)
        deadline = time.monotonic() + within
        while True:
            self.sidecar.service.sidecar.access_log.flush()
            lines = [json.loads(line) for line in self.access_log.getvalue().splitlines()]
            found = {line["request_id"]: line for line in lines if line["request_id"] in wanted}
            if len(found) == len(wanted):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"never logged: {sorted(wanted - set(found))[:5]}")
            await asyncio.sleep(0.01)

    async def log_lines(self) -> list[dict[str, Any]]:
        """The lines of every request this test sent through `send`, in order."""
        found = await self.lines_for(self.sent_ids)
        return [found[request_id] for request_id in self.sent_ids]

    async def last_log_line(self) -> dict[str, Any]:
        return (await self.lines_for(self.sent_ids[-1:]))[self.sent_ids[-1]]

    @property
    def policy_version(self) -> str:
        return self.sidecar.service.sidecar.policy.version

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with httpx.AsyncClient(timeout=10) as admin:
            text = (await admin.get(self.sidecar.admin_url + "/metrics")).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


@pytest_asyncio.fixture(loop_scope="module")
async def upstream() -> AsyncIterator[RunningUpstream]:
    """An upstream of the test's own, for a sidecar configured differently from the shared one."""
    async with serve_upstream() as running_upstream:
        yield running_upstream


@contextlib.asynccontextmanager
async def book_sidecar(upstream: RunningUpstream, idp: IdP, **overrides: Any) -> AsyncIterator[Guarded]:
    settings: dict[str, Any] = {
        "policy_dir": BOOK_POLICY,
        "oidc_issuer_url": idp.issuer,
        "oidc_audience": ("api",),
        "allow_anonymous": False,
        "public_paths": ("GET|HEAD /healthz",),
        "access_log": True,
    }
    async with start_sidecar(upstream.url, **{**settings, **overrides}) as sidecar:
        access_log = io.StringIO()
        sidecar.service.sidecar.access_log.stream = access_log
        yield Guarded(sidecar, upstream, idp, access_log)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_book(idp: IdP) -> AsyncIterator[Guarded]:
    async with serve_upstream() as upstream, book_sidecar(upstream, idp) as guarded:
        yield guarded


@pytest.fixture
def book(shared_book: Guarded) -> Guarded:
    """The shared sidecar, with nothing seen or logged yet."""
    shared_book.reset()
    return shared_book


# What each error code is answered with (README "What the client receives on errors").
STATUS_OF = {"policy_denied": 403, "no_credentials": 401, "expired": 401}


async def assert_refused(response: RawResponse, guarded: Guarded, *codes: str) -> None:
    """Refused with one of `codes` (default policy_denied) and its status, and nothing reached the app
    (not even later: a public /healthz marker sent afterwards arrives with nothing before it)."""
    expected = {(STATUS_OF.get(code, 400), code) for code in codes or ("policy_denied",)}
    body = response.json()
    assert set(body) == {"error", "error_description", "request_id"}
    assert (response.status, body["error"]) in expected, (response.status, body)
    assert body["request_id"] == response.header("x-request-id")
    assert await guarded.upstream.seen_before_marker(guarded.sidecar.port, "/healthz") == []


async def assert_forwarded(guarded: Guarded, response: RawResponse, method: str, raw_path: str) -> None:
    """The application got exactly this request, and the policy decided on the very same path."""
    assert response.status == 200, response.body
    [seen] = guarded.upstream.seen
    assert (seen.method, seen.raw_path) == (method, raw_path)
    line = await guarded.last_log_line()
    assert (line["method"], line["status"]) == (method, 200)
    assert line["path"] == raw_path.split("?", 1)[0]  # the path the policy saw, without the query


# --- the book service's rules ---------------------------------------------------------------


async def test_a_reader_lists_books(book: Guarded) -> None:
    response = await book.send("GET", "/books", as_user="alice")
    await assert_forwarded(book, response, "GET", "/books")
    assert (await book.last_log_line())["rule"] == READ_BOOKS_RULE


async def test_a_reader_cannot_create_a_book(book: Guarded) -> None:
    response = await book.send("POST", "/books", as_user="alice", body=b'{"title": "Dune"}')
    await assert_refused(response, book)
    # The client learns that it was refused, not which rule or why.
    assert response.json()["error_description"] == "the policy does not allow this request"
    assert response.header("www-authenticate") is None


async def test_an_editor_creates_a_book(book: Guarded) -> None:
    response = await book.send("POST", "/books", as_user="bob", body=b'{"title": "Dune"}')
    await assert_forwarded(book, response, "POST", "/books")
    assert response.json()["body_bytes"] == len(b'{"title": "Dune"}')
    assert (await book.last_log_line())["rule"] == CREATE_BOOK_RULE


async def test_an_editor_cannot_delete_a_book(book: Guarded) -> None:
    await assert_refused(await book.send("DELETE", "/books/1", as_user="bob"), book)


async def test_an_admin_deletes_a_book(book: Guarded) -> None:
    response = await book.send("DELETE", "/books/1", as_user="carol")
    await assert_forwarded(book, response, "DELETE", "/books/1")
    assert (await book.last_log_line())["rule"] == DELETE_BOOK_RULE


async def test_a_reader_writes_their_own_review(book: Guarded) -> None:
    response = await book.send("PUT", "/books/1/reviews/alice", as_user="alice", body=b"5 stars")
    await assert_forwarded(book, response, "PUT", "/books/1/reviews/alice")
    assert (await book.last_log_line())["rule"] == OWN_REVIEW_RULE


async def test_nobody_writes_someone_elses_review(book: Guarded) -> None:
    # bob is an editor and so a reader, but the owner column names alice's review, not his.
    await assert_refused(
        await book.send("PUT", "/books/1/reviews/alice", as_user="bob", body=b"1 star"), book
    )


async def test_the_owner_check_compares_the_path_the_application_receives(book: Guarded) -> None:
    # `%61` is `a`: normalised before the policy, so the owner compared is the segment forwarded.
    response = await book.send("PUT", "/books/1/reviews/%61lice", as_user="alice", body=b"5 stars")
    await assert_forwarded(book, response, "PUT", "/books/1/reviews/alice")


@pytest.mark.parametrize(
    "target",
    [
        "/books/1/reviews/ALICE",  # another segment to an application that compares exactly
        "/books/1/reviews/alice/",  # keyMatch2's :reviewer is one whole segment
        "/books/1/reviews/alice/edit",
        "/books/1/reviews/alice%40example.com",
    ],
)
async def test_an_owner_rule_holds_only_for_the_owners_exact_segment(book: Guarded, target: str) -> None:
    await assert_refused(await book.send("PUT", target, as_user="alice", body=b"5 stars"), book)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        # keyMatch2 patterns hold for the whole path, not a prefix of it.
        ("GET", "/bookstore"),
        ("GET", "/books-archive"),
        ("GET", "/books/1/edit"),
        ("GET", "/books/1/reviews/alice/history"),
        ("GET", "/books/"),  # a trailing slash is another path
        # Method regexes are anchored at both ends: `^(GET|HEAD)$` does not hold for GETS.
        ("GETS", "/books"),
        ("GET2", "/books"),
        ("PROPFIND", "/books"),
        ("OPTIONS", "/books"),
        ("get", "/books"),  # methods are case-sensitive
    ],
)
async def test_a_rule_holds_for_its_whole_path_and_method_only(
    book: Guarded, method: str, target: str
) -> None:
    response = await book.send(method, target, as_user="alice")
    # A method the HTTP parser does not know is a malformed request; a known one is judged and denied.
    await assert_refused(response, book, "policy_denied", "malformed_request")


# --- getting past the /audit boundary (bob may read books, only admins the audit log) ---------


BYPASSES = [
    # dot segments, raw and encoded
    pytest.param("/books/1/../../audit", {"dot_segment"}, id="dot-dot"),
    pytest.param("/books/%2e%2e/audit", {"dot_segment"}, id="encoded-dot-dot"),
    pytest.param("/books/%2E./audit", {"dot_segment"}, id="half-encoded-dot-dot"),
    pytest.param("/./audit", {"dot_segment"}, id="dot"),
    pytest.param("/books/%c0%ae%c0%ae/audit", {"invalid_percent_encoding"}, id="overlong-utf8-dot"),
    # encoded slashes and backslashes
    pytest.param("/books/1%2f..%2faudit", {"encoded_slash"}, id="encoded-slash"),
    pytest.param("/books/1%2F..%2Faudit", {"encoded_slash"}, id="encoded-slash-upper"),
    pytest.param("/books/1%5c..%5caudit", {"encoded_slash"}, id="encoded-backslash"),
    pytest.param("/books\\..\\audit", {"invalid_path_character"}, id="backslash"),
    pytest.param("/books/1\\..\\..\\audit", {"invalid_path_character"}, id="backslash-dot-dot"),
    # double encoding
    pytest.param("/%2561udit", {"double_encoding"}, id="double-encoding"),
    pytest.param("/books/%252e%252e/audit", {"double_encoding"}, id="double-encoded-dot-dot"),
    pytest.param("/books/1%252f..%252faudit", {"double_encoding"}, id="double-encoded-slash"),
    # path parameters
    pytest.param("/audit;x", {"path_parameter"}, id="semicolon"),
    pytest.param("/books;/../audit", {"path_parameter"}, id="semicolon-dot-dot"),
    pytest.param("/audit%3bx", {"path_parameter"}, id="encoded-semicolon"),
    pytest.param("/audit..;/", {"path_parameter"}, id="tomcat-semicolon"),
    # control characters
    pytest.param("/audit%00", {"encoded_control"}, id="encoded-nul"),
    pytest.param("/audit%00.json", {"encoded_control"}, id="encoded-nul-extension"),
    pytest.param("/audit\x00", {"malformed_request", "invalid_path_character"}, id="raw-nul"),
    pytest.param("/audit%0d%0aX-Injected:%20yes", {"encoded_control"}, id="encoded-crlf"),
    pytest.param("/audit\t", {"malformed_request", "invalid_path_character"}, id="raw-tab"),
    # other spellings of /audit: merged or judged as they are, and refused for an editor
    pytest.param("//audit", {"policy_denied"}, id="double-slash"),
    pytest.param("///audit//", {"policy_denied"}, id="many-slashes"),
    pytest.param("/%61udit", {"policy_denied"}, id="encoded-unreserved"),
    pytest.param("/AUDIT", {"policy_denied"}, id="upper-case"),
    pytest.param("/Audit", {"policy_denied"}, id="mixed-case"),
    pytest.param("/audit/", {"policy_denied"}, id="trailing-slash"),
    pytest.param("/audit%20", {"policy_denied"}, id="encoded-space"),
    pytest.param("/audit?x=/books", {"policy_denied"}, id="query-looks-like-an-allowed-path"),
    pytest.param("/audit?/books/1", {"policy_denied"}, id="query-is-an-allowed-path"),
    pytest.param(
        "http://sidecar.test/audit", {"policy_denied", "bad_request_target"}, id="absolute-form-target"
    ),
    pytest.param("*", {"bad_request_target"}, id="asterisk-form"),
    # fragments
    pytest.param("/audit#/books/1", {"invalid_path_character"}, id="fragment-looks-allowed"),
    pytest.param("/books/1#frag", {"invalid_path_character"}, id="fragment"),
    pytest.param("/books/1#/../../audit", {"invalid_path_character"}, id="fragment-dot-dot"),
]


@pytest.mark.parametrize(("target", "codes"), BYPASSES)
async def test_no_spelling_of_a_path_gets_past_the_policy(
    book: Guarded, target: str, codes: set[str]
) -> None:
    await assert_refused(await book.send("GET", target, as_user="bob"), book, *codes)


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/audit", "/audit"),
        ("//audit", "/audit"),
        ("///audit", "/audit"),
        ("/%61udit", "/audit"),
        ("/%61%75%64%69%74", "/audit"),
        ("/audit?x=/books", "/audit?x=/books"),  # the query is passed as sent; the policy never reads it
        ("//audit?next=/../books", "/audit?next=/../books"),
    ],
)
async def test_an_allowed_spelling_is_forwarded_as_the_path_the_policy_saw(
    book: Guarded, target: str, forwarded: str
) -> None:
    response = await book.send("GET", target, as_user="carol")
    await assert_forwarded(book, response, "GET", forwarded)
    assert (await book.last_log_line())["rule"] == AUDIT_RULE


async def test_an_allowed_path_with_a_trailing_slash_is_another_path(book: Guarded) -> None:
    # Fail safe: `/audit/` is not `/audit`, so a rule for one never lets the other through.
    await assert_refused(await book.send("GET", "/audit/", as_user="carol"), book)


# --- override headers -----------------------------------------------------------------------

PATH_OVERRIDES = ("X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Forwarded-Uri", "X-Forwarded-Path")
METHOD_OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


def override_names_seen(guarded: Guarded) -> set[str]:
    folded = {name.lower().replace("_", "-") for seen in guarded.upstream.seen for name, _ in seen.headers}
    return folded & {name.lower() for name in PATH_OVERRIDES + METHOD_OVERRIDES}


async def test_a_path_override_header_cannot_make_a_refused_path_allowed(book: Guarded) -> None:
    overrides = [(name, "/books") for name in PATH_OVERRIDES]
    await assert_refused(await book.send("GET", "/audit", as_user="bob", headers=overrides), book)


async def test_a_path_override_header_is_not_what_the_application_routes_on(book: Guarded) -> None:
    overrides = [(name, "/audit") for name in PATH_OVERRIDES] + [("X_Original_URL", "/audit")]
    response = await book.send("GET", "/books", as_user="bob", headers=overrides)
    await assert_forwarded(book, response, "GET", "/books")
    assert (await book.last_log_line())["rule"] == READ_BOOKS_RULE
    assert override_names_seen(book) == set()
    assert not any("/audit" in value for _, value in book.upstream.seen[0].headers)


async def test_a_method_override_header_cannot_make_a_refused_method_allowed(book: Guarded) -> None:
    overrides = [(name, "GET") for name in METHOD_OVERRIDES]
    await assert_refused(
        await book.send("POST", "/books", as_user="alice", headers=overrides, body=b"{}"), book
    )


async def test_a_method_override_header_is_not_what_the_application_runs(book: Guarded) -> None:
    # Decided as a GET; an application honouring the header would run a DELETE nobody allowed.
    overrides = [(name, "DELETE") for name in METHOD_OVERRIDES]
    response = await book.send("GET", "/books/1", as_user="alice", headers=overrides)
    await assert_forwarded(book, response, "GET", "/books/1")
    assert (await book.last_log_line())["rule"] == READ_BOOK_RULE
    assert override_names_seen(book) == set()


# --- anonymous callers and public paths -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "forwarded"),
    [
        ("GET", "/healthz", "/healthz"),
        ("HEAD", "/healthz", "/healthz"),
        ("GET", "//healthz", "/healthz"),
        ("GET", "/%68ealthz", "/healthz"),
        ("GET", "/healthz?next=/books", "/healthz?next=/books"),
    ],
)
async def test_the_public_health_check_is_forwarded_without_a_token(
    book: Guarded, method: str, target: str, forwarded: str
) -> None:
    response = await book.send(method, target)
    await assert_forwarded(book, response, method, forwarded)
    line = await book.last_log_line()
    assert line["decision"] == "anonymous"
    assert line["roles"] == ["authcar:anonymous"]
    assert line["rule"] == ANONYMOUS_HEALTH_RULE  # public paths skip authentication, not the policy


@pytest.mark.parametrize(
    ("method", "target", "status", "code"),
    [
        ("GET", "/books", 401, "no_credentials"),
        ("POST", "/healthz", 401, "no_credentials"),  # public for GET and HEAD only
        ("GET", "/healthz/", 401, "no_credentials"),
        ("GET", "/HEALTHZ", 401, "no_credentials"),
        ("GET", "/healthz/../books", 400, "dot_segment"),
        ("GET", "/healthz%2f..%2fbooks", 400, "encoded_slash"),
        ("GET", "/healthz;/books", 400, "path_parameter"),
        ("GET", "/books?/healthz", 401, "no_credentials"),
    ],
)
async def test_anything_but_the_public_path_asks_an_anonymous_caller_for_a_token(
    book: Guarded, method: str, target: str, status: int, code: str
) -> None:
    response = await book.send(method, target)
    await assert_refused(response, book, code)
    assert response.status == status
    if status == 401:
        assert response.header("www-authenticate") == 'Bearer realm="authcar"'


@pytest.mark.parametrize(
    ("subject", "target"),
    [
        ("role:admin", "/audit"),
        ("role:reader", "/books"),
        # /healthz would not do: on a public path the token is not even read.
        ("authcar:anonymous", "/books"),
        ("authcar:authenticated", "/books"),
    ],
)
async def test_a_subject_spelled_like_a_role_is_refused(book: Guarded, subject: str, target: str) -> None:
    # In Casbin g(a, a) holds: such a subject would match the role's rules directly.
    await assert_refused(await book.send("GET", target, token=book.token(subject, roles=())), book)
    line = await book.last_log_line()
    assert (line["decision"], line["subject"], line["reason"]) == ("deny", subject, "subject_looks_like_role")


@pytest.mark.parametrize(
    ("subject", "roles", "target"),
    [
        ("admin", (), "/audit"),  # a subject is not a role, whatever its name
        ("reader", (), "/books"),
        ("mallory", ("role:admin",), "/audit"),  # an IdP role is prefixed once more: role:role:admin
    ],
)
async def test_names_that_look_like_roles_grant_nothing(
    book: Guarded, subject: str, roles: tuple[str, ...], target: str
) -> None:
    await assert_refused(await book.send("GET", target, token=book.token(subject, roles=roles)), book)
    assert (await book.last_log_line())["reason"] == "no_matching_rule"


# --- dry run --------------------------------------------------------------------------------


async def test_dry_run_lets_a_denied_request_through_and_logs_why(
    upstream: RunningUpstream, idp: IdP
) -> None:
    async with book_sidecar(upstream, idp, dry_run=True) as dry:
        response = await dry.send("POST", "/books", as_user="alice", body=b"{}")
        await assert_forwarded(dry, response, "POST", "/books")
        line = await dry.last_log_line()
        assert (line["decision"], line["reason"], line["policy"]) == (
            "dry_run_allow",
            "no_matching_rule",
            dry.policy_version,
        )
        assert "rule" not in line  # no rule matched: the default deny

        allowed = await dry.send("GET", "/books", as_user="alice")
        assert allowed.status == 200
        assert (await dry.last_log_line())["decision"] == "allow"

        # Authentication is never dry run.
        upstream.seen.clear()
        await assert_refused(await dry.send("GET", "/books"), dry, "no_credentials")
        expired = idp.mint(sub="alice", roles=("reader",), expires_in=-3600)
        await assert_refused(await dry.send("GET", "/books", token=expired), dry, "expired")


async def test_dry_run_paths_shadow_only_their_paths(upstream: RunningUpstream, idp: IdP) -> None:
    async with book_sidecar(upstream, idp, dry_run_paths=("/books/*",)) as dry:
        shadowed = await dry.send("PUT", "/books/1", as_user="alice", body=b"{}")
        await assert_forwarded(dry, shadowed, "PUT", "/books/1")
        assert (await dry.last_log_line())["decision"] == "dry_run_allow"

        upstream.seen.clear()
        # /books itself is not below /books/: enforced, as is everything else.
        await assert_refused(await dry.send("POST", "/books", as_user="alice", body=b"{}"), dry)
        await assert_refused(await dry.send("GET", "/audit", as_user="alice"), dry)
        assert [line["decision"] for line in await dry.log_lines()] == ["dry_run_allow", "deny", "deny"]


# --- decisions in the access log --------------------------------------------------------------


async def test_an_allowed_request_is_logged_with_subject_roles_rule_and_policy_version(book: Guarded) -> None:
    token = book.token("bob")
    response = await book.send(
        "POST", "/books", token=token, headers=[("X-Request-Id", "create-1")], body=b"{}"
    )
    assert response.status == 200
    [line] = await book.log_lines()
    assert line["request_id"] == "create-1"
    assert line["decision"] == "allow"
    assert line["subject"] == "bob"
    assert line["roles"] == ["authcar:authenticated", "role:editor"]
    assert line["rule"] == CREATE_BOOK_RULE  # the policy line that decided, as written in policy.csv
    assert line["policy"] == book.policy_version
    assert len(line["policy"]) == 12
    assert "reason" not in line
    async with httpx.AsyncClient(timeout=10) as admin:
        ready = (await admin.get(book.sidecar.admin_url + "/readyz")).json()
    assert ready["checks"]["policy"]["detail"].startswith(f"policy: version {line['policy']}")


async def test_a_denied_request_is_logged_with_the_reason(book: Guarded) -> None:
    refused = await book.send("POST", "/books", as_user="alice", headers=[("X-Request-Id", "create-2")])
    assert refused.status == 403
    [line] = await book.log_lines()
    assert line["request_id"] == "create-2"
    assert (line["status"], line["decision"], line["reason"]) == (403, "deny", "no_matching_rule")
    assert (line["subject"], line["roles"]) == ("alice", ["authcar:authenticated", "role:reader"])
    assert line["policy"] == book.policy_version
    assert "rule" not in line


async def test_an_unauthenticated_request_is_logged_as_denied_for_want_of_a_token(book: Guarded) -> None:
    assert (await book.send("GET", "/books")).status == 401
    [line] = await book.log_lines()
    assert (line["status"], line["decision"], line["reason"], line["subject"]) == (
        401,
        "deny",
        "no_credentials",
        "",
    )


async def test_a_deny_rule_beats_every_allow_and_is_logged_as_the_rule_that_refused(
    tmp_path: Path, upstream: RunningUpstream, idp: IdP
) -> None:
    frozen = ["role:editor", "/books/1984", "^(PUT|PATCH|DELETE)$", "deny", "*"]
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "model.conf").write_bytes((BOOK_POLICY / "model.conf").read_bytes())
    (policy / "policy.csv").write_text(
        (BOOK_POLICY / "policy.csv").read_text() + "p, " + ", ".join(frozen) + "\n"
    )
    async with book_sidecar(upstream, idp, policy_dir=policy) as guarded:
        await assert_refused(await guarded.send("PUT", "/books/1984", as_user="bob", body=b"{}"), guarded)
        line = await guarded.last_log_line()
        assert (line["decision"], line["reason"], line["rule"]) == ("deny", "denied_by_rule", frozen)
        # Admins inherit the editors' rules, the deny among them.
        await assert_refused(await guarded.send("DELETE", "/books/1984", as_user="carol"), guarded)
        assert (await guarded.last_log_line())["rule"] == frozen
        # Every spelling of the frozen book is the frozen book, or refused outright.
        for target, code, reason in [
            ("//books/1984", "policy_denied", "denied_by_rule"),
            ("/books//1984", "policy_denied", "denied_by_rule"),
            ("/books/%31984", "policy_denied", "denied_by_rule"),
            ("/books/1984/", "policy_denied", "no_matching_rule"),  # not /books/:id either
            ("/BOOKS/1984", "policy_denied", "no_matching_rule"),
            ("/books/1984;v=2", "path_parameter", ""),
            ("/books/1984%2f", "encoded_slash", ""),
            ("/books/1984/.", "dot_segment", ""),
            ("/books/x/../1984", "dot_segment", ""),
        ]:
            await assert_refused(await guarded.send("PUT", target, as_user="bob", body=b"{}"), guarded, code)
            assert (await guarded.last_log_line()).get("reason", "") == reason, target
        # Other books are untouched.
        response = await guarded.send("PUT", "/books/1985", as_user="bob", body=b"{}")
        await assert_forwarded(guarded, response, "PUT", "/books/1985")


# --- metrics --------------------------------------------------------------------------------


async def send_one_of_each_decision(guarded: Guarded) -> None:
    """Two allows, a policy denial, a dry-run allow (PUT /books/1), a 401 and an anonymous health check."""
    assert (await guarded.send("GET", "/books", as_user="alice")).status == 200
    assert (await guarded.send("GET", "/books/1", as_user="alice")).status == 200
    assert (await guarded.send("POST", "/books", as_user="alice", body=b"{}")).status == 403
    assert (await guarded.send("PUT", "/books/1", as_user="alice", body=b"{}")).status == 200
    assert (await guarded.send("GET", "/books")).status == 401
    assert (await guarded.send("GET", "/healthz")).status == 200
    await guarded.log_lines()  # logged, so counted too: the line is written after the counters move


async def test_request_counters_move_by_decision(upstream: RunningUpstream, idp: IdP) -> None:
    async with book_sidecar(upstream, idp, dry_run_paths=("/books/*",)) as guarded:
        await send_one_of_each_decision(guarded)
        metrics = await guarded.metrics()

    def requests(decision: str, status: str) -> float | None:
        return metrics.get(("authcar_requests_total", (("decision", decision), ("status", status))))

    assert requests("allow", "200") == 2
    assert requests("dry_run_allow", "200") == 1
    assert requests("deny", "403") == 1
    assert requests("deny", "401") == 1
    assert requests("anonymous", "200") == 1


async def test_authorization_decision_counter_moves_by_decision(upstream: RunningUpstream, idp: IdP) -> None:
    async with book_sidecar(upstream, idp, dry_run_paths=("/books/*",)) as guarded:
        await send_one_of_each_decision(guarded)
        metrics = await guarded.metrics()

    def decisions(decision: str) -> float | None:
        return metrics.get(("authcar_authz_decisions_total", (("decision", decision),)))

    # The anonymous health check is an allow by the policy too; the 401 never reached the policy.
    assert decisions("allow") == 3
    assert decisions("deny") == 1
    assert decisions("dry_run_allow") == 1


# --- regular expressions in policies ----------------------------------------------------------

REGEX_MODEL = """\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && regexMatch(r.obj, p.obj) && regexMatch(r.act, p.act)
"""
# Generous, so a loaded machine never trips it: a linear-time engine answers in milliseconds;
# Python's backtracking `re` would need about 2^40 steps (hours) for the path below.
REDOS_BOUND_SECONDS = 30.0


def regex_policy(directory: Path, *rules: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.conf").write_text(REGEX_MODEL)
    (directory / "policy.csv").write_text("".join(f"p, authcar:anonymous, {rule}, ^GET$\n" for rule in rules))
    return directory


async def test_an_evil_regex_rule_cannot_make_a_request_take_unbounded_time(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    # A process of its own: a runaway match would block the event loop, and this test's with it.
    env = {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_ALLOW_ANONYMOUS": "true",
        "AUTHCAR_POLICY_DIR": str(regex_policy(tmp_path / "policy", "^/(a+)+$", "^/healthz$")),
        "AUTHCAR_ACCESS_LOG": "false",
    }
    sidecar = await asyncio.to_thread(start_sidecar_process, tmp_path, env)
    try:
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=REDOS_BOUND_SECONDS) as client:
            try:
                evil = await client.get("/" + "a" * 40 + "!")
            except httpx.TimeoutException:
                pytest.fail(f"a single request took more than {REDOS_BOUND_SECONDS} s")
            assert evil.status_code == 401  # anonymous and refused: asked for a token
            # The rule still means what it says, and the sidecar is free for the next request.
            assert (await client.get("/" + "a" * 40)).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
    finally:
        sidecar.stop()
    assert upstream.paths() == ["/" + "a" * 40, "/healthz"]


@pytest.mark.parametrize("rule", [r"^/(a+)\1$", r"^/(?=a)a+$", r"^/(?<!b)a+$"])
async def test_a_regex_no_engine_can_bound_keeps_the_sidecar_from_starting(
    tmp_path: Path, upstream: RunningUpstream, rule: str
) -> None:
    # Backreferences and lookaround: RE2 cannot run them, and Python's re may backtrack without bound.
    policy = regex_policy(tmp_path / "policy", rule, "^/healthz$")
    with pytest.raises(PolicyError) as refused:
        async with start_sidecar(upstream.url, policy_dir=policy):
            pass
    [problem] = refused.value.problems
    assert problem.startswith("policy line 1: it could backtrack without bound"), problem


async def test_a_denied_callers_role_that_a_rule_names_without_its_prefix_is_logged_once_per_rule(
    upstream: RunningUpstream, idp: IdP, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "model.conf").write_text((BOOK_POLICY / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text(
        "p, viewer, /books, ^GET$, allow, *\n"  # meant for the role viewer, which is role:viewer
        "p, viewer, /books/:id, ^GET$, allow, *\n"
        "p, role:reader, /books, ^GET$, allow, *\n"
        "p, authcar:anonymous, /healthz, ^(GET|HEAD)$, allow, *\n"  # assert_refused's marker
    )
    async with book_sidecar(upstream, idp, policy_dir=tmp_path) as guarded:
        with caplog.at_level(logging.WARNING, logger="authcar.policy"):
            for _ in range(3):
                await assert_refused(
                    await guarded.send("GET", "/books", token=guarded.token("dora", ["viewer"])), guarded
                )
            await assert_refused(
                await guarded.send("GET", "/books/1", token=guarded.token("dora", ["viewer"])), guarded
            )
            # A caller without the role is denied without a hint.
            await assert_refused(
                await guarded.send("GET", "/books/2", token=guarded.token("erin", ["other"])), guarded
            )
    hints = [r for r in caplog.records if r.getMessage() == "policy_rule_names_bare_role"]
    assert [(r.rule, r.role) for r in hints] == [  # type: ignore[attr-defined]
        ("viewer, /books, ^GET$, allow, *", "viewer"),
        ("viewer, /books/:id, ^GET$, allow, *", "viewer"),
    ]
    assert "write role:viewer" in hints[0].hint  # type: ignore[attr-defined]
