"""A stand-in relying party for testing the provider itself: it shows what arrives at its redirect URI
and records the logout tokens posted to its back-channel logout URI.

An HTTP server in a thread of its own (tests/support/threaded_http.py), so it answers both async
tests (the provider in the test's event loop posts to it) and a blocking browser driver.

    with relying_party() as rp:
        rp.url("/callback")            # a page showing the query it was called with
        rp.url("/backchannel")         # POST logout_token=...; rp.logout_tokens lists them
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape
from urllib.parse import parse_qsl, urlsplit

from tests.support.threaded_http import QuietHandler, serve_in_thread

MAX_BODY = 65536


@dataclass
class RelyingParty:
    origin: str = ""  # set once its server listens
    logout_tokens: list[str] = field(default_factory=list)
    backchannel_status: int = 200  # what the back-channel URI answers (a failing RP: 400, 501...)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.origin + path


def callback_page(query: str) -> bytes:
    """Each query parameter in an element whose id is its name: `code`, `state`, `error`, `iss`."""
    items = "\n".join(
        f'<dt>{escape(name)}</dt><dd id="{escape(name)}">{escape(value)}</dd>'
        for name, value in parse_qsl(query, keep_blank_values=True)
    )
    head = '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>callback</title></head>'
    return f"{head}\n<body><dl>\n{items}\n</dl></body></html>\n".encode()


def handler_for(rp: RelyingParty) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.answer(200, callback_page(urlsplit(self.path).query))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if urlsplit(self.path).path != "/backchannel" or not 0 < length <= MAX_BODY:
                self.answer(400, b"", "text/plain")
                return
            form = dict(parse_qsl(self.rfile.read(length).decode("latin-1")))
            with rp.lock:
                if "logout_token" in form:
                    rp.logout_tokens.append(form["logout_token"])
                status = rp.backchannel_status
            self.answer(status, b"", "text/plain")

    return Handler


@contextmanager
def relying_party(host: str = "127.0.0.1") -> Iterator[RelyingParty]:
    rp = RelyingParty()
    with serve_in_thread(handler_for(rp), host) as port:
        rp.origin = f"http://{host}:{port}"
        yield rp
