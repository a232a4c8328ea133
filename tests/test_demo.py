"""`authcar demo`, the README's first command: starts, answers as printed, stops cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from authcar.demo import free_port


def test_demo_serves_the_printed_commands_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    output = tmp_path / "demo.out"
    with output.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "authcar", "demo", "--port", str(port), "--admin-port", str(admin_port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "Press Ctrl-C" not in output.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, output.read_text()
            time.sleep(0.05)
        printed = output.read_text()
        assert f"http://127.0.0.1:{port}" in printed
        assert re.search(r"curl -s http://127\.0\.0\.1:\d+/books/1", printed)

        answer = httpx.get(
            f"http://127.0.0.1:{port}/books", headers={"X-Auth-Request-User": "admin"}, timeout=5
        ).json()
        received = {name.lower() for name in answer["headers_received"]}
        assert answer["path"] == "/books"
        assert "x-auth-request-user" not in received
        assert {"x-forwarded-for", "x-request-id"} <= received
        assert httpx.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=5).status_code == 200

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=15) == 0
        assert "Traceback" not in output.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
