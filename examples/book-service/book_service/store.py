"""Books, reviews and the audit trail in SQLite (standard library only).

Every change and its audit record are written in one transaction: there is no change without a
record of who made it, and no record of a change that did not happen. One connection serves the
process, guarded by a lock; the app calls these methods from a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

# AUTOINCREMENT: a deleted book's id is never reused, so audit records keep naming one book.
SCHEMA = """
CREATE TABLE IF NOT EXISTS books (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    author TEXT NOT NULL,
    year INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    book_id INTEGER NOT NULL REFERENCES books (id) ON DELETE CASCADE,
    reviewer TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
    text TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (book_id, reviewer)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    subject TEXT NOT NULL,
    action TEXT NOT NULL,
    book_id INTEGER,
    reviewer TEXT,
    request_id TEXT NOT NULL,
    changes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_book ON audit (book_id);
CREATE INDEX IF NOT EXISTS audit_by_subject ON audit (subject);
"""
BOOK_COLUMNS = "id, title, author, year, created_by, created_at, updated_by, updated_at"
REVIEW_COLUMNS = "book_id, reviewer, rating, text, created_at, updated_at"
AUDIT_COLUMNS = "id, at, subject, action, book_id, reviewer, request_id, changes"
BOOK_FIELDS = ("title", "author", "year")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: the asserted subject, and the request that carried it."""

    subject: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Book:
    id: int
    title: str
    author: str
    year: int
    created_by: str
    created_at: str
    updated_by: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Review:
    book_id: int
    reviewer: str
    rating: int
    text: str
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: str
    subject: str
    action: str
    book_id: int | None
    reviewer: str | None
    request_id: str
    changes: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BookStore:
    def __init__(self, path: str, *, clock: Callable[[], str] = utc_now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) in `_transaction`.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA busy_timeout = 5000")
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # books

    def list_books(self, *, limit: int, offset: int) -> list[Book]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {BOOK_COLUMNS} FROM books ORDER BY id LIMIT ? OFFSET ?",  # noqa: S608
                (limit, offset),
            ).fetchall()
        return [Book(*row) for row in rows]

    def get_book(self, book_id: int) -> Book | None:
        with self._read() as db:
            return self._book(db, book_id)

    def create_book(self, fields: dict[str, Any], actor: Actor) -> Book:
        now = self.clock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO books (title, author, year, created_by, created_at, updated_by, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fields["title"], fields["author"], fields["year"], actor.subject, now, actor.subject, now),
            )
            book_id = int(cursor.lastrowid or 0)
            self._record(db, now, actor, "book.create", book_id, None, {f: fields[f] for f in BOOK_FIELDS})
            book = self._book(db, book_id)
        assert book is not None
        return book

    def update_book(self, book_id: int, fields: dict[str, Any], actor: Actor) -> Book | None:
        """Apply the given fields; None if there is no such book. Unchanged values record nothing."""
        if not set(fields) <= set(BOOK_FIELDS):
            # Field names become column names below: only ever the known ones.
            raise ValueError(f"not book fields: {sorted(set(fields) - set(BOOK_FIELDS))}")
        now = self.clock()
        with self._transaction() as db:
            current = self._book(db, book_id)
            if current is None:
                return None
            changes = {name: value for name, value in fields.items() if getattr(current, name) != value}
            if not changes:
                return current
            assignments = ", ".join(f"{name} = ?" for name in changes)
            db.execute(
                f"UPDATE books SET {assignments}, updated_by = ?, updated_at = ? WHERE id = ?",  # noqa: S608
                (*changes.values(), actor.subject, now, book_id),
            )
            self._record(db, now, actor, "book.update", book_id, None, changes)
            return self._book(db, book_id)

    def delete_book(self, book_id: int, actor: Actor) -> bool:
        now = self.clock()
        with self._transaction() as db:
            current = self._book(db, book_id)
            if current is None:
                return False
            reviews = db.execute("SELECT count(*) FROM reviews WHERE book_id = ?", (book_id,)).fetchone()[0]
            db.execute("DELETE FROM books WHERE id = ?", (book_id,))
            deleted = {**{f: getattr(current, f) for f in BOOK_FIELDS}, "reviews_deleted": reviews}
            self._record(db, now, actor, "book.delete", book_id, None, deleted)
            return True

    # reviews

    def list_reviews(self, book_id: int) -> list[Review] | None:
        """The book's reviews by reviewer; None if there is no such book."""
        with self._read() as db:
            if self._book(db, book_id) is None:
                return None
            rows = db.execute(
                f"SELECT {REVIEW_COLUMNS} FROM reviews WHERE book_id = ? ORDER BY reviewer",  # noqa: S608
                (book_id,),
            ).fetchall()
        return [Review(*row) for row in rows]

    def put_review(
        self, book_id: int, reviewer: str, rating: int, text: str, actor: Actor
    ) -> tuple[Review, bool] | None:
        """Create or replace a review: (review, created); None if there is no such book."""
        now = self.clock()
        with self._transaction() as db:
            if self._book(db, book_id) is None:
                return None
            current = self._review(db, book_id, reviewer)
            if current is None:
                db.execute(
                    "INSERT INTO reviews (book_id, reviewer, rating, text, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (book_id, reviewer, rating, text, now, now),
                )
                written = {"rating": rating, "text": text}
                self._record(db, now, actor, "review.create", book_id, reviewer, written)
            elif (current.rating, current.text) != (rating, text):
                db.execute(
                    "UPDATE reviews SET rating = ?, text = ?, updated_at = ?"
                    " WHERE book_id = ? AND reviewer = ?",
                    (rating, text, now, book_id, reviewer),
                )
                changes = {
                    name: value
                    for name, value in (("rating", rating), ("text", text))
                    if getattr(current, name) != value
                }
                self._record(db, now, actor, "review.update", book_id, reviewer, changes)
            review = self._review(db, book_id, reviewer)
        assert review is not None
        return review, current is None

    def delete_review(self, book_id: int, reviewer: str, actor: Actor) -> bool | None:
        """True if deleted, False if there was no such review, None if there is no such book."""
        now = self.clock()
        with self._transaction() as db:
            if self._book(db, book_id) is None:
                return None
            current = self._review(db, book_id, reviewer)
            if current is None:
                return False
            db.execute("DELETE FROM reviews WHERE book_id = ? AND reviewer = ?", (book_id, reviewer))
            deleted = {"rating": current.rating, "text": current.text}
            self._record(db, now, actor, "review.delete", book_id, reviewer, deleted)
            return True

    # audit

    def audit(
        self, *, limit: int, book_id: int | None = None, subject: str | None = None
    ) -> list[AuditEntry]:
        """Newest first, optionally only one book's or one subject's changes."""
        conditions: list[str] = []
        parameters: list[Any] = []
        if book_id is not None:
            conditions.append("book_id = ?")
            parameters.append(book_id)
        if subject is not None:
            conditions.append("subject = ?")
            parameters.append(subject)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
                (*parameters, limit),
            ).fetchall()
        return [AuditEntry(*row[:7], changes=json.loads(row[7])) for row in rows]

    # helpers, called with the lock held

    def _book(self, db: sqlite3.Connection, book_id: int) -> Book | None:
        row = db.execute(f"SELECT {BOOK_COLUMNS} FROM books WHERE id = ?", (book_id,)).fetchone()  # noqa: S608
        return Book(*row) if row else None

    def _review(self, db: sqlite3.Connection, book_id: int, reviewer: str) -> Review | None:
        row = db.execute(
            f"SELECT {REVIEW_COLUMNS} FROM reviews WHERE book_id = ? AND reviewer = ?",  # noqa: S608
            (book_id, reviewer),
        ).fetchone()
        return Review(*row) if row else None

    def _record(
        self,
        db: sqlite3.Connection,
        at: str,
        actor: Actor,
        action: str,
        book_id: int | None,
        reviewer: str | None,
        changes: dict[str, Any],
    ) -> None:
        db.execute(
            "INSERT INTO audit (at, subject, action, book_id, reviewer, request_id, changes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, actor.subject, action, book_id, reviewer, actor.request_id, json.dumps(changes)),
        )
