"""The sidecar's own cookies: the session cookie (AUTHCAR_COOKIE_NAME, only a random id) and one
login-state cookie per login attempt (`<name>-login-<hash of its state>`, see state.py).

They are read by exact name only, and removed from the Cookie header before it is forwarded under
every name an application might read as theirs (authcar/spellings.py: decoded, case-folded,
`-`/`_`/`.` confusion, a copy after a `,`), so the application never sees a session id it could
replay and a client cannot smuggle one past the sidecar under a disguised name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from authcar.spellings import DisguisedName, ProtectedName, readings, skeleton

OWN_VALUE = re.compile(r"[A-Za-z0-9._-]{1,4000}")  # what the sidecar puts in its cookies
SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}


class SidecarCookies:
    def __init__(self, session_name: str, *, secure: bool, samesite: str) -> None:
        self.session_name = session_name
        self.session = ProtectedName(session_name)
        self.family = skeleton(session_name)  # every one of our cookie names starts with it
        self.secure = secure
        self.samesite = SAMESITE[samesite]

    def login_name(self, suffix: str) -> str:
        return f"{self.session_name}-login-{suffix}"

    def session_id(self, cookie_headers: list[bytes]) -> str | None:
        """The session cookie's value, if exactly one cookie of exactly its name came: two (a tossed
        cookie beside ours) or a disguised spelling are no session at all."""
        try:
            values = self.session.cookie_values(cookie_headers)
        except DisguisedName:
            return None
        if len(values) != 1 or not OWN_VALUE.fullmatch(values[0].decode("latin-1")):
            return None
        return values[0].decode("ascii")

    def is_ours(self, raw_name: bytes) -> bool:
        return any(reading.startswith(self.family) for reading in readings(raw_name.strip(), self.family))

    def without_ours(self, cookie_headers: Iterable[bytes]) -> list[bytes]:
        """The Cookie headers to forward: ours removed (also one hidden after a `,`, which RFC 2109
        parsers split on), the rest in order; a header left empty is dropped."""
        kept_headers: list[bytes] = []
        for header in cookie_headers:
            kept = [
                pair.strip()
                for pair in header.split(b";")
                if pair.strip()
                and not any(self.is_ours(piece.partition(b"=")[0]) for piece in pair.split(b","))
            ]
            if kept:
                kept_headers.append(b"; ".join(kept))
        return kept_headers

    def login_names(self, cookie_headers: Iterable[bytes]) -> list[str]:
        """The names of the login-state cookies the browser sent (one per sign-in not finished)."""
        prefix = (self.session_name + "-login-").encode("ascii")
        names = []
        for header in cookie_headers:
            for pair in header.split(b";"):
                name = pair.partition(b"=")[0].strip()
                if name.startswith(prefix) and OWN_VALUE.fullmatch(name.decode("latin-1")):
                    names.append(name.decode("ascii"))
        return names

    def set_cookie(self, name: str, value: str, *, max_age: int | None = None) -> bytes:
        """A Set-Cookie value for one of ours: HttpOnly, Path=/, no Domain (what `__Host-` requires),
        Secure unless configured off, our SameSite; without max_age it ends with the browser session.

        A login-state cookie is never SameSite=Strict: the provider's redirect to the callback is a
        cross-site navigation, on which a Strict cookie is not sent, so no sign-in could finish. Lax
        sends it on that top-level GET and nowhere a third party could use it (it is also signed,
        bound to the state and used once)."""
        if not name.startswith(self.session_name) or not OWN_VALUE.fullmatch(value):
            raise ValueError("not one of the sidecar's cookies or values")
        samesite = self.samesite
        if samesite == "Strict" and name.startswith(self.session_name + "-login-"):
            samesite = "Lax"
        attributes = [f"{name}={value}", "Path=/", "HttpOnly", f"SameSite={samesite}"]
        if self.secure:
            attributes.append("Secure")
        if max_age is not None:
            attributes.append(f"Max-Age={max(0, int(max_age))}")
        return "; ".join(attributes).encode("ascii")

    def clear_cookie(self, name: str) -> bytes:
        """A Set-Cookie value that makes the browser forget one of ours now."""
        return self.set_cookie(name, "x", max_age=0)
