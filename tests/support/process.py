"""Running `authcar` as a real subprocess, the way Kubernetes does, for lifecycle tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class SidecarProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def events(self) -> list[dict[str, object]]:
        """The JSON event lines the process has logged so far."""
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "event" in entry:  # access lines share the file but are not events
                    lines.append(entry)
        return lines

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


# A policy that lets every caller through, for tests about everything but authorization.
ALLOW_ALL_POLICY = Path(__file__).resolve().parent.parent / "policies" / "allow-all"


def start_sidecar_process(log_dir: Path, env: dict[str, str], *, ready_timeout: float = 20) -> SidecarProcess:
    """Start `python -m authcar run` on free ports and wait until its admin listener answers."""
    log_path = log_dir / f"authcar-{time.monotonic_ns()}.log"
    full_env = {
        **os.environ,
        "AUTHCAR_HOST": "127.0.0.1",
        "AUTHCAR_ADMIN_HOST": "127.0.0.1",
        "AUTHCAR_PORT": "0",
        "AUTHCAR_ADMIN_PORT": "0",
        "AUTHCAR_LOG_FORMAT": "json",
        "AUTHCAR_POLICY_DIR": str(ALLOW_ALL_POLICY),
        **env,
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "authcar", "run"],
            stdout=subprocess.DEVNULL if env.get("AUTHCAR_ACCESS_LOG") == "false" else log,
            stderr=log,
            env=full_env,
            cwd=Path(__file__).resolve().parents[2],
        )
    running = SidecarProcess(process, log_path, 0, 0)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"authcar exited with {process.returncode}:\n{log_path.read_text()}")
        listening = [e for e in running.events() if e.get("event") == "listening"]
        if listening:
            running.port = int(str(listening[0]["public"]).rsplit(":", 1)[1])
            running.admin_port = int(str(listening[0]["admin"]).rsplit(":", 1)[1])
            try:
                if httpx.get(running.admin_url + "/healthz", timeout=1).status_code == 200:
                    return running
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    running.stop()
    raise RuntimeError(f"authcar did not become healthy:\n{log_path.read_text()}")
