"""`python -m book_service`: serve on BOOKS_HOST:BOOKS_PORT with settings from the environment."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

import uvicorn

from book_service.app import build_app
from book_service.settings import Settings, SettingsError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Server(uvicorn.Server):
    """A uvicorn server that exits 0 after a graceful stop.

    uvicorn re-raises the stop signal once it has shut down, so a normal SIGTERM from Kubernetes or
    `docker stop` would end the process as killed (143) and Ctrl+C with a traceback.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as error:
        print(f"book-service: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The sidecar in front of us (on 127.0.0.1) sets X-Forwarded-For; uvicorn's logs show the client.
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        server_header=False,
    )
    server = Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
