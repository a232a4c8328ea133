"""The sidecar's own pages for people in a browser: an error (the login could not finish) and
"signed out". Small, accessible (a language, a title, one heading, a main landmark, readable
contrast in light and dark), and self-contained: no scripts, no images, no external assets, so a
Content-Security-Policy of `default-src 'none'` holds with only this page's own style allowed by
its hash. Nothing a request said appears unescaped, and no page ever holds a token.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

STYLE = (
    ":root{color-scheme:light dark;--fg:#1a1a1a;--bg:#fff;--muted:#555;--link:#0b57d0}"
    "@media (prefers-color-scheme:dark){:root{--fg:#eee;--bg:#161616;--muted:#bbb;--link:#a8c7fa}}"
    "body{margin:0;font:1rem/1.5 system-ui,sans-serif;color:var(--fg);background:var(--bg)}"
    "main{max-width:36rem;margin:4rem auto;padding:0 1.25rem}"
    "h1{font-size:1.5rem;margin:0 0 .75rem}p{margin:.5rem 0}"
    ".id{color:var(--muted);font-size:.875rem}a{color:var(--link)}"
)
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# What every page is served with: not cached, not framed, not sniffed, no referrer to the provider.
PAGE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (
        b"content-security-policy",
        f"default-src 'none'; style-src '{STYLE_HASH}'; form-action 'self'; frame-ancestors 'none';"
        f" base-uri 'none'".encode(),
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def page(
    title: str, paragraphs: list[str], *, link: tuple[str, str] | None = None, request_id: str = ""
) -> bytes:
    """`title` (the <title> and the one <h1>), plain-text paragraphs, an optional (text, href) link
    (hrefs are ours: relative paths only), and the request id people can quote to an operator."""
    if link is not None and not link[1].startswith("/"):
        raise ValueError("a page links only to our own paths")
    body = "".join(f"<p>{escape(text)}</p>" for text in paragraphs)
    if link is not None:
        body += f'<p><a href="{escape(link[1])}">{escape(link[0])}</a></p>'
    if request_id:
        body += f'<p class="id">Request id: <code>{escape(request_id)}</code></p>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>"
    ).encode()


def error_page(status: int, message: str, *, request_id: str, retry_path: str = "/") -> bytes:
    """The login could not finish (a callback without its state, a refused sign-in...)."""
    titles = {
        400: "Sign-in failed",
        403: "Sign-in refused",
        502: "Sign-in unavailable",
        503: "Sign-in unavailable",
    }
    return page(
        titles.get(status, "Sign-in failed"),
        [message],
        link=("Try signing in again", retry_path),
        request_id=request_id,
    )


def signed_out_page(sign_in_path: str = "/") -> bytes:
    return page("Signed out", ["You are signed out."], link=("Sign in again", sign_in_path))


def continue_page(target: str) -> bytes:
    """Signed in: on to `target` (already held to the redirect policy) from this page, for
    AUTHCAR_COOKIE_SAMESITE=strict. The provider's redirect to the callback is a cross-site
    navigation, and a 302 onward would stay one: a Strict session cookie would not be sent with it
    and the browser would be asked to sign in again. A navigation this page starts is our own
    site's, so the cookie goes with it. A refresh, not a script, so the page's CSP stays as it is."""
    href = escape(target, quote=True)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={href}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Signed in</title><style>{STYLE}</style></head>"
        f'<body><main><h1>Signed in</h1><p><a href="{href}">Continue</a></p></main></body></html>'
    ).encode()
