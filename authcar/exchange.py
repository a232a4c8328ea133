"""What happened on the wire for one request: filled in by whoever answers it, read by the record.

The gate creates one `Exchange` per request; the upstream (forwarding and WebSockets), the sidecar's
own endpoints and the gate's error answers fill it in; the gate's record step turns it into the
access-log line and the metrics. It lives apart from all of them so none has to import another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Exchange:
    """The answer's status and size, and the upstream leg's time and failure, of one request."""

    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float = 0.0
    error: str = ""  # the failure's kind, if the exchange failed
    client_gone: bool = False
    # The client, not the application, ended the exchange (left, or sent a body it may not send):
    # logged as the failure, but not counted as an upstream error.
    client_caused: bool = False

    def client_failed(self, kind: str) -> None:
        self.error = kind
        self.client_caused = True
