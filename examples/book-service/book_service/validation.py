"""Input: JSON bodies, their fields, path segments and query parameters, checked before any use.

Malformed JSON is 400; a well-formed body with wrong fields is 422 and names every bad field.
Unknown fields are refused rather than ignored, so a typo never silently does nothing.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from book_service.errors import ApiError

MAX_BODY_BYTES = 64 * 1024
MAX_TITLE = 300
MAX_AUTHOR = 200
MAX_REVIEW_TEXT = 4000
MAX_REVIEWER = 256
YEAR_RANGE = (-9999, 9999)
RATING_RANGE = (1, 5)
BOOK_FIELDS = ("title", "author", "year")
REVIEW_FIELDS = ("rating", "text")
INTEGER_PATTERN = re.compile(r"-?[0-9]{1,18}")
# Ids are positive SQLite integers; a longer digit string cannot name a book.
ID_PATTERN = re.compile(r"[1-9][0-9]{0,17}")
# Review text may span lines; names and titles may not.
MULTILINE = frozenset("\n\t")


async def json_object(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"the body may have at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"the body may have at most {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(body, object_pairs_hook=unique_keys, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return document


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key: parsers disagree on which wins, so accept neither.
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate keys in an object")
    return document


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def book_fields(document: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """The book fields in the body: all three, or (partial) at least one."""
    problems = unknown_fields(document, BOOK_FIELDS)
    fields: dict[str, Any] = {}
    checks = {
        "title": lambda value: text(value, maximum=MAX_TITLE),
        "author": lambda value: text(value, maximum=MAX_AUTHOR),
        "year": lambda value: integer(value, *YEAR_RANGE),
    }
    for name, check in checks.items():
        if name not in document:
            if not partial:
                problems[name] = "required"
            continue
        try:
            fields[name] = check(document[name])
        except ValueError as error:
            problems[name] = str(error)
    if partial and not fields and not problems:
        problems["body"] = f"give at least one of {', '.join(BOOK_FIELDS)}"
    if problems:
        raise ApiError(422, "invalid_fields", "the book is not valid", fields=problems)
    return fields


def review_fields(document: Mapping[str, Any]) -> tuple[int, str]:
    """(rating, text) of a review body; text is optional."""
    problems = unknown_fields(document, REVIEW_FIELDS)
    rating, review_text = 0, ""
    if "rating" not in document:
        problems["rating"] = "required"
    else:
        try:
            rating = integer(document["rating"], *RATING_RANGE)
        except ValueError as error:
            problems["rating"] = str(error)
    if "text" in document:
        try:
            review_text = text(document["text"], maximum=MAX_REVIEW_TEXT, minimum=0, allowed=MULTILINE)
        except ValueError as error:
            problems["text"] = str(error)
    if problems:
        raise ApiError(422, "invalid_fields", "the review is not valid", fields=problems)
    return rating, review_text


def book_id(value: str) -> int:
    if not ID_PATTERN.fullmatch(value):
        raise ApiError(404, "not_found", "no such book")
    return int(value)


def reviewer_name(value: str) -> str:
    try:
        return text(value, maximum=MAX_REVIEWER, strip=False)
    except ValueError as error:
        raise ApiError(400, "invalid_reviewer", f"the reviewer in the path {error}") from None


def unknown_fields(document: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, str]:
    return {name: "unknown field" for name in document if name not in known}


def text(
    value: Any, *, maximum: int, minimum: int = 1, allowed: frozenset[str] = frozenset(), strip: bool = True
) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if strip:
        value = value.strip()
    if len(value) < minimum:
        raise ValueError("must not be empty")
    if len(value) > maximum:
        raise ValueError(f"must have at most {maximum} characters")
    if any(unicodedata.category(char) == "Cc" and char not in allowed for char in value):
        raise ValueError("must not contain control characters")
    return value


def integer(value: Any, minimum: int, maximum: int) -> int:
    # bool is an int in Python, but `true` is not a number in the JSON the client sent.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("must be an integer")
    if not minimum <= value <= maximum:
        raise ValueError(f"must be between {minimum} and {maximum}")
    return value


def query_int(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    value = optional_query_int(request, name, minimum=minimum, maximum=maximum)
    return default if value is None else value


def optional_query_int(request: Request, name: str, *, minimum: int, maximum: int) -> int | None:
    raw = query_text(request, name)
    if raw is None:
        return None
    if not INTEGER_PATTERN.fullmatch(raw):
        raise ApiError(400, "invalid_query", f"{name!r} must be an integer")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ApiError(400, "invalid_query", f"{name!r} must be between {minimum} and {maximum}")
    return value


def query_text(request: Request, name: str) -> str | None:
    raw = request.query_params.getlist(name)
    if len(raw) > 1:
        raise ApiError(400, "invalid_query", f"give {name!r} at most once")
    return raw[0] if raw else None
