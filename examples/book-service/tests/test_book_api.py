"""The API behind a valid assertion: books, reviews, ownership, the audit trail, input validation."""

from __future__ import annotations

from typing import Any

import pytest
from book_service_kit import ASSERTION, JwksServer, RunningService, ServiceFactory, claims_for, mint

EDITOR = {"sub": "bob", "roles": ("editor",)}
ADMIN = {"sub": "carol", "roles": ("admin",)}
READER = {"sub": "alice", "roles": ("reader",)}
DUNE = {"title": "Dune", "author": "Frank Herbert", "year": 1965}


def create_book(service: RunningService, book: dict[str, Any] = DUNE, **caller: Any) -> dict[str, Any]:
    answer = service.call("POST", "/books", json_body=book, **(caller or EDITOR))
    assert answer.status_code == 201, answer.text
    return answer.json()


def audit_of(service: RunningService, book_id: int) -> list[dict[str, Any]]:
    answer = service.call("GET", f"/audit?book_id={book_id}", **ADMIN)
    assert answer.status_code == 200, answer.text
    return answer.json()["entries"]


def test_healthz_needs_no_assertion(service: RunningService) -> None:
    answer = service.http.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
    assert service.http.head("/healthz").status_code == 200


def test_book_lifecycle_records_who_changed_what(service: RunningService) -> None:
    book = create_book(service)
    book_id = book["id"]
    assert book["title"] == "Dune"
    assert book["created_by"] == book["updated_by"] == "bob"

    read = service.call("GET", f"/books/{book_id}", **READER)
    assert read.status_code == 200
    assert read.json() == book
    head = service.call("HEAD", f"/books/{book_id}", **READER)
    assert head.status_code == 200
    assert head.content == b""

    listed = service.call("GET", "/books?limit=1000", **READER).json()["books"]
    assert book in listed

    patched = service.call("PATCH", f"/books/{book_id}", json_body={"year": 1966}, **ADMIN)
    assert patched.status_code == 200
    assert patched.json()["year"] == 1966
    assert patched.json()["created_by"] == "bob"
    assert patched.json()["updated_by"] == "carol"

    replaced = service.call(
        "PUT", f"/books/{book_id}", json_body={**DUNE, "title": "Dune Messiah", "year": 1969}, **EDITOR
    )
    assert replaced.status_code == 200
    assert replaced.json()["title"] == "Dune Messiah"
    assert replaced.json()["updated_by"] == "bob"

    deleted = service.call("DELETE", f"/books/{book_id}", **ADMIN)
    assert deleted.status_code == 204
    assert service.call("GET", f"/books/{book_id}", **READER).status_code == 404
    assert service.call("DELETE", f"/books/{book_id}", **ADMIN).status_code == 404

    entries = audit_of(service, book_id)
    assert [(e["action"], e["subject"]) for e in reversed(entries)] == [
        ("book.create", "bob"),
        ("book.update", "carol"),
        ("book.update", "bob"),
        ("book.delete", "carol"),
    ]
    create, patch, put, delete = reversed(entries)
    assert create["changes"] == DUNE
    assert patch["changes"] == {"year": 1966}
    # Only what actually changed: the author was sent again but is the same.
    assert put["changes"] == {"title": "Dune Messiah", "year": 1969}
    assert delete["changes"]["title"] == "Dune Messiah"
    assert all(entry["book_id"] == book_id and entry["at"].endswith("Z") for entry in entries)


def test_audit_records_the_request_id(service: RunningService) -> None:
    answer = service.call("POST", "/books", json_body=DUNE, headers={"X-Request-Id": "req-42"}, **EDITOR)
    [entry] = audit_of(service, answer.json()["id"])
    assert entry["request_id"] == "req-42"


def test_an_update_that_changes_nothing_records_nothing(service: RunningService) -> None:
    book = create_book(service)
    answer = service.call("PUT", f"/books/{book['id']}", json_body=DUNE, **ADMIN)
    assert answer.status_code == 200
    assert answer.json()["updated_by"] == "bob"
    assert [entry["action"] for entry in audit_of(service, book["id"])] == ["book.create"]


def test_creating_answers_with_the_location(service: RunningService) -> None:
    answer = service.call("POST", "/books", json_body=DUNE, **EDITOR)
    assert answer.headers["location"] == f"/books/{answer.json()['id']}"


def test_reviews_belong_to_their_reviewer(service: RunningService) -> None:
    book_id = create_book(service)["id"]
    reviews = f"/books/{book_id}/reviews"

    created = service.call("PUT", f"{reviews}/alice", json_body={"rating": 4, "text": "Sandy."}, **READER)
    assert created.status_code == 201
    assert created.json()["reviewer"] == "alice"
    updated = service.call("PUT", f"{reviews}/alice", json_body={"rating": 5}, **READER)
    assert updated.status_code == 200
    assert updated.json()["rating"] == 5
    assert updated.json()["text"] == ""

    # Nobody writes in someone else's name, admins included.
    for caller in (EDITOR, ADMIN):
        refused = service.call("PUT", f"{reviews}/alice", json_body={"rating": 1}, **caller)
        assert refused.status_code == 403
        assert refused.json()["error"] == "not_your_review"
    assert service.call("DELETE", f"{reviews}/alice", **EDITOR).status_code == 403

    service.call("PUT", f"{reviews}/bob", json_body={"rating": 3}, **EDITOR)
    listed = service.call("GET", reviews, sub=None, roles=()).json()["reviews"]
    assert [(r["reviewer"], r["rating"]) for r in listed] == [("alice", 5), ("bob", 3)]

    # Own review: deletable by its reviewer; anyone's: by an admin.
    assert service.call("DELETE", f"{reviews}/bob", **EDITOR).status_code == 204
    assert service.call("DELETE", f"{reviews}/alice", **ADMIN).status_code == 204
    assert service.call("GET", reviews, **READER).json()["reviews"] == []
    assert service.call("DELETE", f"{reviews}/alice", **ADMIN).status_code == 404

    actions = [(e["action"], e["subject"], e["reviewer"]) for e in reversed(audit_of(service, book_id))]
    assert actions == [
        ("book.create", "bob", None),
        ("review.create", "alice", "alice"),
        ("review.update", "alice", "alice"),
        ("review.create", "bob", "bob"),
        ("review.delete", "bob", "bob"),
        ("review.delete", "carol", "alice"),
    ]


def test_deleting_a_book_deletes_its_reviews(service: RunningService) -> None:
    book_id = create_book(service)["id"]
    service.call("PUT", f"/books/{book_id}/reviews/alice", json_body={"rating": 2}, **READER)
    service.call("DELETE", f"/books/{book_id}", **ADMIN)
    assert service.call("GET", f"/books/{book_id}/reviews", **READER).status_code == 404
    [delete, *_] = audit_of(service, book_id)
    assert delete["changes"]["reviews_deleted"] == 1
    assert [row for row in service.snapshot()["reviews"] if row[0] == book_id] == []


def test_reviews_of_a_missing_book_are_404(service: RunningService) -> None:
    answer = service.call("PUT", "/books/999999999/reviews/alice", json_body={"rating": 3}, **READER)
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"


def test_anonymous_callers_read_but_never_write(service: RunningService) -> None:
    book_id = create_book(service)["id"]
    assert service.call("GET", f"/books/{book_id}", sub=None, roles=()).status_code == 200
    before = service.snapshot()
    for method, path, body in [
        ("POST", "/books", DUNE),
        ("PATCH", f"/books/{book_id}", {"year": 1}),
        ("DELETE", f"/books/{book_id}", None),
        ("GET", "/audit", None),
    ]:
        answer = service.call(method, path, json_body=body, sub=None, roles=("admin",))
        assert answer.status_code == 401, (method, path)
        assert answer.json()["error"] == "subject_required"
    assert service.snapshot() == before


def test_audit_is_for_admins(service: RunningService) -> None:
    for caller in (READER, EDITOR):
        answer = service.call("GET", "/audit", **caller)
        assert answer.status_code == 403
        assert answer.json()["error"] == "admin_required"


def test_audit_filters_by_subject(service: RunningService) -> None:
    create_book(service, sub="dora", roles=("editor",))
    entries = service.call("GET", "/audit?subject=dora", **ADMIN).json()["entries"]
    assert [(e["subject"], e["action"]) for e in entries] == [("dora", "book.create")]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"title": "required", "author": "required", "year": "required"}),
        ({**DUNE, "year": "1965"}, {"year": "must be an integer"}),
        ({**DUNE, "year": True}, {"year": "must be an integer"}),
        ({**DUNE, "year": 1965.5}, {"year": "must be an integer"}),
        ({**DUNE, "year": 10**6}, {"year": "must be between -9999 and 9999"}),
        ({**DUNE, "title": "   "}, {"title": "must not be empty"}),
        ({**DUNE, "title": "x" * 301}, {"title": "must have at most 300 characters"}),
        ({**DUNE, "author": "Frank\nHerbert"}, {"author": "must not contain control characters"}),
        ({**DUNE, "author": None}, {"author": "must be a string"}),
        ({**DUNE, "isbn": "x"}, {"isbn": "unknown field"}),
    ],
)
def test_invalid_books_are_422_naming_each_field(
    service: RunningService, body: dict[str, Any], fields: dict[str, str]
) -> None:
    before = service.snapshot()
    answer = service.call("POST", "/books", json_body=body, **EDITOR)
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_fields"
    assert answer.json()["fields"] == fields
    assert service.snapshot() == before


def test_invalid_reviews_are_422(service: RunningService) -> None:
    book_id = create_book(service)["id"]
    path = f"/books/{book_id}/reviews/alice"
    for body, fields in [
        ({}, {"rating": "required"}),
        ({"rating": 0}, {"rating": "must be between 1 and 5"}),
        ({"rating": 6, "text": 3}, {"rating": "must be between 1 and 5", "text": "must be a string"}),
        ({"rating": 3, "stars": 3}, {"stars": "unknown field"}),
    ]:
        answer = service.call("PUT", path, json_body=body, **READER)
        assert answer.status_code == 422, body
        assert answer.json()["fields"] == fields
    # Review text may span lines.
    assert service.call("PUT", path, json_body={"rating": 3, "text": "a\nb"}, **READER).status_code == 201


def test_patch_needs_at_least_one_field(service: RunningService) -> None:
    book_id = create_book(service)["id"]
    answer = service.call("PATCH", f"/books/{book_id}", json_body={}, **EDITOR)
    assert answer.status_code == 422
    assert "body" in answer.json()["fields"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "error"),
    [
        (b'{"title": ', "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "invalid_json"),
        (b'{"title": "a", "title": "b", "author": "c", "year": 1}', "application/json", 400, "invalid_json"),
        (b'{"title": "a", "author": "c", "year": NaN}', "application/json", 400, "invalid_json"),
        (b"title=Dune", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{" + b" " * 70_000 + b"}", "application/json", 413, "body_too_large"),
    ],
)
def test_unreadable_bodies_are_refused(
    service: RunningService, content: bytes, content_type: str, status: int, error: str
) -> None:
    before = service.snapshot()
    token = mint(service.key, claims_for("POST", "/books", sub="bob", roles=("editor",)))
    answer = service.http.post(
        "/books", content=content, headers={ASSERTION: token, "Content-Type": content_type}
    )
    assert answer.status_code == status
    assert answer.json()["error"] == error
    assert service.snapshot() == before


@pytest.mark.parametrize("path", ["/books/0", "/books/abc", "/books/99999999999999999999999", "/nowhere"])
def test_unknown_resources_are_json_404(service: RunningService, path: str) -> None:
    answer = service.call("GET", path, **READER)
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"


def test_wrong_method_is_json_405_with_allow(service: RunningService) -> None:
    answer = service.call("POST", "/audit", **ADMIN)
    assert answer.status_code == 405
    assert answer.json()["error"] == "method_not_allowed"
    assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "offset=-1", "limit=1&limit=2"])
def test_bad_paging_is_400(service: RunningService, query: str) -> None:
    answer = service.call("GET", f"/books?{query}", **READER)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_query"


def test_paging(service: RunningService) -> None:
    ids = [create_book(service)["id"] for _ in range(3)]
    everything = [book["id"] for book in service.call("GET", "/books?limit=1000", **READER).json()["books"]]
    start = everything.index(ids[0])
    page = service.call("GET", f"/books?limit=2&offset={start + 1}", **READER).json()
    assert [book["id"] for book in page["books"]] == ids[1:3]
    assert (page["limit"], page["offset"]) == (2, start + 1)


def test_a_failure_inside_is_a_json_500(start_service: ServiceFactory, jwks: JwksServer) -> None:
    with start_service(jwks_url=jwks.url) as service:
        service.app.state.store.close()  # every query now raises
        answer = service.call("GET", "/books", **READER)
        assert answer.status_code == 500
        assert answer.json()["error"] == "internal_error"
        assert "Traceback" not in answer.text
        assert "sqlite" not in answer.text.lower()
