"""The names under which the server hands requests facts in the ASGI scope's `extensions`.

The protocol (authcar/protocol.py) fills them in; the pipeline's stages read them. Both import the
names from here, so the wire-level protocol needs nothing from the stages above it.
"""

from __future__ import annotations

from typing import Any

from authcar.types import Scope

# The authority of an absolute-form request target (`GET http://host/path`), which the protocol sees
# and uvicorn's scope does not: a bytes `host[:port]`, or b"" when the target names none we accept.
TARGET_AUTHORITY_EXTENSION = "authcar.target_authority"
# The GatewayError the protocol answered when it ended a request during its body (too slow, or chunk
# framing without end): the disconnect the application then receives is the sidecar's doing.
BODY_REFUSED_EXTENSION = "authcar.request_body_refused"
# One mutable mapping per client connection, the same for every request on it: a stage keeps there
# what is worth keeping from one request to the next (the authenticator, its last token's digest).
# The protocol only creates it; what goes in, under which key, is the stage's own business.
CONNECTION_STATE_EXTENSION = "authcar.connection_state"

ConnectionState = dict[str, Any]


def connection_state(scope: Scope) -> ConnectionState | None:
    """The request's per-connection slot; None when the server provides none (another server, a test)."""
    extensions = scope.get("extensions")
    return extensions.get(CONNECTION_STATE_EXTENSION) if extensions else None
