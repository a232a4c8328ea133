"""Delivering logout tokens to relying parties (OIDC Back-Channel Logout 1.0 section 2.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.idp.provider import IdP

DELIVERY_TIMEOUT = 10.0


async def deliver_logout_token(idp: IdP, uri: str, token: str) -> dict[str, Any]:
    """POST `logout_token=<token>` to `uri`, as the spec says: form-encoded, no redirects followed, no
    cookies. Records the answer's status in idp.backchannel_deliveries (None: nobody answered)."""
    try:
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT, follow_redirects=False) as http:
            response = await http.post(
                uri, data={"logout_token": token}, headers={"Cache-Control": "no-cache"}
            )
    except httpx.HTTPError as exc:
        idp.backchannel_deliveries.append((uri, None))
        return {"status": None, "body": f"{type(exc).__name__}: {exc}", "logout_token": token}
    idp.backchannel_deliveries.append((uri, response.status_code))
    return {"status": response.status_code, "body": response.text, "logout_token": token}
