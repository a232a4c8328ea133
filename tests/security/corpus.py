"""The payload files (tests/security/payloads/*.yaml) as cases: what to send and what must happen.

A file names its class (a section of ../shared/SECURITY.md) and lists cases:

    - id: cl-named-in-connection          # unique within the file
      request:                            # lines joined with CRLF, then a blank line, then `body`
        - POST /api/x HTTP/1.1
        - "Host: app.test"
        - "Authorization: Bearer {token:valid}"
        - "Connection: Content-Length"
        - "Content-Length: {body_length}"
      body: "..."
      # or  raw: "exact bytes, YAML escapes (\\r \\n \\x00) allowed"
      # or  token: NAME   (GET /api/token with that bearer token and Connection: close)
      # or  target: /api/x  (+ method: GET, headers: [lines], anonymous: false, body): that request
      #     with Host app.test, a valid reader's token unless anonymous, and Connection: close
      status: 200               # one per expected answer; "400|505" allows either
      code: bad_host            # the JSON error code of the (single) error answer
      upstream: none            # or what the single sanitised request must look like:
        # {requests: 1, method, target, body, chunked, absent: [names], present: [names],
        #  equal: {name: value}}
      pipeline: 20              # the request rendered (fresh tokens each time) 20 times on one connection
      jwks_fetches: 1           # the provider's JWKS endpoint was asked at most this often meanwhile
      xfail: "lead: framing/desync"   # the awaited fix; the case must then fail (strict)
      skip: "why the case cannot run yet"

Templates, filled in when the case runs: {token:NAME} (tests/security/tokens.py), {body_length}
(length of the body after templating), {repeat:TEXT*N}, {canary} (the recording upstream's URL,
where nothing may ever be fetched from).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PAYLOADS = Path(__file__).resolve().parent / "payloads"
TEMPLATE = re.compile(r"\{(token:[A-Za-z0-9_]+|body_length|repeat:[^{}*]*\*\d+|canary)\}")
TOKEN_CASE_TARGET = "/api/token"
CASE_KEYS = frozenset(
    {"id", "why", "request", "raw", "body", "token", "status", "code", "upstream", "xfail", "skip"}
    | {"target", "method", "headers", "anonymous", "pipeline", "jwks_fetches"}
)
UPSTREAM_KEYS = frozenset({"requests", "method", "target", "body", "chunked", "absent", "present", "equal"})


@dataclass(frozen=True)
class Expected:
    """What the recording upstream must have received for a case."""

    requests: int = 0
    method: str | None = None
    target: str | None = None
    body: bytes | None = None
    chunked: bool | None = None
    absent: tuple[str, ...] = ()
    present: tuple[str, ...] = ()
    equal: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Case:
    file: str
    id: str
    klass: str
    statuses: tuple[tuple[int, ...], ...]  # per answer, the statuses allowed
    code: str | None
    expected: Expected
    request: tuple[str, ...] | None = None
    raw: str | None = None
    body: str = ""
    why: str = ""
    xfail: str | None = None
    skip: str | None = None
    pipeline: int = 1
    jwks_fetches: int | None = None

    @property
    def name(self) -> str:
        return f"{self.file}:{self.id}"

    def render(self, fill: Callable[[str], str]) -> bytes:
        """The exact bytes to send; `fill` answers one template (without its braces)."""

        def substitute(text: str, body_length: int | None) -> str:
            def one(match: re.Match[str]) -> str:
                name = match.group(1)
                if name == "body_length":
                    if body_length is None:
                        raise ValueError(f"{self.name}: {{body_length}} only works with request + body")
                    return str(body_length)
                if name.startswith("repeat:"):
                    text, _, count = name[len("repeat:") :].rpartition("*")
                    return text * int(count)
                return fill(name)

            return TEMPLATE.sub(one, text)

        def once() -> bytes:
            if self.raw is not None:
                return substitute(self.raw, None).encode("latin-1")
            assert self.request is not None
            body = substitute(self.body, None).encode("latin-1")
            head = "\r\n".join(substitute(line, len(body)) for line in self.request)
            return head.encode("latin-1") + b"\r\n\r\n" + body

        return b"".join(once() for _ in range(self.pipeline))


def statuses_of(value: Any) -> tuple[tuple[int, ...], ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(tuple(int(s) for s in str(item).split("|")) for item in items)


def expected_of(value: Any, statuses: tuple[tuple[int, ...], ...], where: str) -> Expected:
    if value == "none":
        return Expected()
    if value is None:
        # Unsaid: as many forwarded requests as answers that can only be the application's.
        return Expected(requests=sum(all(200 <= s < 300 for s in allowed) for allowed in statuses))
    if not isinstance(value, dict) or not set(value) <= UPSTREAM_KEYS:
        raise ValueError(
            f"{where}: upstream must be 'none' or a mapping with keys among {sorted(UPSTREAM_KEYS)}"
        )
    body = value.get("body")
    return Expected(
        requests=int(value.get("requests", 1)),
        method=value.get("method"),
        target=value.get("target"),
        body=body.encode("latin-1") if isinstance(body, str) else None,
        chunked=value.get("chunked"),
        absent=tuple(value.get("absent", ())),
        present=tuple(value.get("present", ())),
        equal=tuple((str(k), str(v)) for k, v in (value.get("equal") or {}).items()),
    )


def case_of(file: str, klass: str, entry: dict[str, Any]) -> Case:
    where = f"{file}:{entry.get('id', '?')}"
    unknown = set(entry) - CASE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    request = entry.get("request")
    if "token" in entry:
        request = [
            f"GET {TOKEN_CASE_TARGET} HTTP/1.1",
            "Host: app.test",
            f"Authorization: Bearer {{token:{entry['token']}}}",
            "Connection: close",
        ]
    if "target" in entry:
        request = [
            f"{entry.get('method', 'GET')} {entry['target']} HTTP/1.1",
            "Host: app.test",
            *([] if entry.get("anonymous") else ["Authorization: Bearer {token:valid}"]),
            *entry.get("headers", ()),
            *(["Content-Length: {body_length}"] if entry.get("body") else []),
            "Connection: close",
        ]
    if entry.get("skip"):
        statuses: tuple[tuple[int, ...], ...] = ()
    else:
        if (request is None) == ("raw" not in entry):
            raise ValueError(f"{where}: give exactly one of request, raw or token")
        statuses = statuses_of(entry["status"]) * int(entry.get("pipeline", 1))
    return Case(
        file=file,
        id=str(entry["id"]),
        klass=klass,
        statuses=statuses,
        code=entry.get("code"),
        expected=expected_of(entry.get("upstream"), statuses, where) if statuses else Expected(),
        request=tuple(request) if request is not None else None,
        raw=entry.get("raw"),
        body=entry.get("body", ""),
        why=entry.get("why", ""),
        xfail=entry.get("xfail"),
        skip=entry.get("skip"),
        pipeline=int(entry.get("pipeline", 1)),
        jwks_fetches=entry.get("jwks_fetches"),
    )


def load_cases(directory: Path = PAYLOADS) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(directory.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        seen: set[str] = set()
        for entry in document["cases"]:
            case = case_of(path.stem, document["class"], entry)
            if case.id in seen:
                raise ValueError(f"{case.name}: the id is used twice")
            seen.add(case.id)
            cases.append(case)
    return cases
