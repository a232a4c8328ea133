"""The same gate under another ASGI server, for the server comparison of bench/run.py (issue 14).

`authcar run` serves the gate with uvicorn and authcar's own protocol subclass (authcar/protocol.py:
head limits, client pacing, the pipelining cap, trailers dropped, the corked head). This module
builds the identical Sidecar from the same AUTHCAR_* environment and hands its public app to another
server, so that a row measures the server and nothing else:

    python bench/asgi_servers.py uvicorn-stock|hypercorn|granian PORT

- `uvicorn-stock`: uvicorn 'httptools' with its stock protocol (what authcar's subclass adds, priced);
- `hypercorn`: Hypercorn on uvloop, one worker;
- `granian`: Granian (Rust HTTP, the ASGI app on Python's loop), one worker, one runtime thread.

None of these has the protections authcar's protocol adds; they are benchmark rows, not options.
The admin listener is not served: startup completes only once the signing keys are loaded, so the
first request with the token is answered 200 (the harness waits for that).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from authcar.app import Sidecar
from authcar.config.loading import load_settings

SERVERS = ("uvicorn-stock", "hypercorn", "granian")


class GateUnderTest:
    """An ASGI app whose lifespan builds and starts the Sidecar, then passes requests to its gate."""

    def __init__(self) -> None:
        self.sidecar: Sidecar | None = None
        self.gate: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        await self.gate(scope, receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.sidecar = Sidecar(load_settings().settings)
                await self.sidecar.start()
                # Keys first: the harness's first request carries a token.
                for _ in range(300):
                    keys = self.sidecar.authentication.readiness()
                    if keys is None or keys.get("ok"):
                        break
                    await asyncio.sleep(0.1)
                self.gate = self.sidecar.public_app
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.sidecar is not None:
                    await self.sidecar.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = GateUnderTest()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in SERVERS:
        print(f"usage: asgi_servers.py {'|'.join(SERVERS)} PORT", file=sys.stderr)
        return 2
    server, port = argv[0], int(argv[1])
    target = "asgi_servers:app"
    if server == "uvicorn-stock":
        import uvicorn

        uvicorn.run(
            target, host="127.0.0.1", port=port, loop="uvloop", http="httptools", ws="none",
            lifespan="on", access_log=False, log_level="warning", server_header=False, date_header=False,
        )  # fmt: skip
    elif server == "hypercorn":
        from hypercorn.config import Config
        from hypercorn.run import run

        config = Config()
        config.application_path = target
        config.bind = [f"127.0.0.1:{port}"]
        config.workers = 1
        config.worker_class = "uvloop"
        config.accesslog = None
        config.loglevel = "WARNING"
        return run(config)
    else:
        from granian.constants import Interfaces, Loops
        from granian.server import Server

        Server(
            target, address="127.0.0.1", port=port, interface=Interfaces.ASGI, workers=1,
            runtime_threads=1, loop=Loops.uvloop, websockets=False, log_level="warning",
        ).serve()  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
