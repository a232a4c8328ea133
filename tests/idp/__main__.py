"""`python -m tests.idp --port P [--issuer-path /realms/test]`: the provider as its own process.

Prints `idp listening on http://127.0.0.1:P` once it accepts connections; SIGTERM or SIGINT stops it.
Drive it with tests.idp.IdPClient. Its admin API (/_idp/) mints tokens and hands out private keys to anyone
who asks: keep it on a loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from tests.idp.server import run_idp


async def serve(host: str, port: int, issuer_path: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with run_idp(host=host, port=port, issuer_path=issuer_path) as idp:
        print(f"idp listening on {idp.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.idp", description="A test OpenID Connect provider."
    )
    parser.add_argument("--host", default="127.0.0.1", help="keep it loopback: the admin API is open")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--issuer-path", default="/realms/test", help="the issuer is http://HOST:PORT + this")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.issuer_path))


if __name__ == "__main__":
    main()
