"""Reading the identity provider's answers without trusting their size, encoding or pace.

Every answer authcar parses from the provider (discovery, JWKS, introspection) is read through
`read_bounded`: the bytes as sent, never decompressed (authcar asks for `identity`; a compressed
answer could expand a thousandfold in one read), and never more than the caller's limit, whatever
`Content-Length` claims. `get_bounded` adds a deadline for the whole answer, so a provider that
trickles a byte at a time cannot hold a key refresh, and everyone waiting on it, indefinitely.
"""

from __future__ import annotations

import asyncio

import httpx

# Sent with every request whose answer is read through read_bounded.
PLAIN_ANSWER = {"Accept": "application/json", "Accept-Encoding": "identity"}


class UnreadableAnswer(Exception):
    """The answer cannot be used; the message, for logs, says why."""


async def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """The body as sent, or UnreadableAnswer once it is compressed or passes `limit` bytes."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnreadableAnswer(f"the answer is compressed ({encoding[:20]!r}); authcar asked for none")
    length = response.headers.get("content-length", "").strip()
    if length.isdigit() and (len(length) > 18 or int(length) > limit):
        raise UnreadableAnswer(f"the answer is larger than {limit} bytes")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise UnreadableAnswer(f"the answer is larger than {limit} bytes")
    return bytes(body)


async def get_bounded(http: httpx.AsyncClient, url: str, limit: int, within: float) -> bytes:
    """GET `url`: the body of a 200 answer, read whole within `within` seconds, or UnreadableAnswer."""
    try:
        async with asyncio.timeout(within), http.stream("GET", url, headers=PLAIN_ANSWER) as response:
            if response.status_code != 200:
                raise UnreadableAnswer(f"{url} answered {response.status_code}")
            return await read_bounded(response, limit)
    except TimeoutError:
        raise UnreadableAnswer(f"{url} sent no complete answer within {within:g} s") from None
    except httpx.HTTPError as exc:
        raise UnreadableAnswer(f"cannot fetch {url}: {exc.__class__.__name__}") from None
