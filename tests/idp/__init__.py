"""A real OpenID Connect provider for the tests, over real sockets: discovery, JWKS, authorization code
with PKCE (signing `idp.user` in by itself, or, with `idp.interactive`, through a sign-in page listing
`idp.users`), client credentials, rotating refresh tokens, RFC 7662 introspection, userinfo, RP-initiated
logout and back-channel logout delivery (`await idp.backchannel_logout(sid=...)`), Keycloak-shaped.

    async with run_idp() as idp:          # in the test's event loop, on a free port
        token = idp.mint(roles=["admin"])
        idp.mode = "down"

    python -m tests.idp --port 8081       # as its own process; drive it with IdPClient(url)
"""

from tests.idp.client import AdminError, IdPClient, IdPProcess, idp_process
from tests.idp.keys import hmac_jws, sign_jws, unsigned_jws
from tests.idp.oauth import OAuthError
from tests.idp.provider import ENDPOINTS, Client, IdP, User
from tests.idp.server import run_idp

__all__ = [
    "ENDPOINTS",
    "AdminError",
    "Client",
    "IdP",
    "IdPClient",
    "IdPProcess",
    "OAuthError",
    "User",
    "hmac_jws",
    "idp_process",
    "run_idp",
    "sign_jws",
    "unsigned_jws",
]
