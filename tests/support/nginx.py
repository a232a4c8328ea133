"""A real nginx (Debian's, with auth_request) for tests, in its own temp prefix: conf, pid, logs and
temp paths all live there, it runs in the foreground, and nothing touches /etc/nginx or the system
service. Without nginx a test skips with the reason, except under CI=true (where .ci/run installs
it), where it fails."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 20.0  # generous upper bound: nginx starts in milliseconds
CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")


def nginx_binary() -> str:
    """The path of nginx, or skip (fail in CI) with the reason."""
    found = shutil.which("nginx") or next((p for p in CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("nginx is required in CI (.ci/run installs the nginx package)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


def main_conf(prefix: Path, http_body: str) -> str:
    """A whole nginx.conf around `http_body` (server blocks), everything kept under `prefix`."""
    # As root, workers would switch to `nobody`, who cannot read a root-owned temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"{kind}_temp_path {prefix}/{kind};\n" for kind in ("proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\naccess_log off;\nclient_body_temp_path {prefix}/body;\n{temp}{http_body}}}\n"
    )


@dataclass
class RunningNginx:
    process: subprocess.Popen[bytes]
    prefix: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def check_conf(binary: str, prefix: Path, conf_text: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a conf written under `prefix`."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    argv = [binary, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(conf), "-t"]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=START_TIMEOUT)


@contextmanager
def running_nginx(prefix: Path, conf_text: str, port: int) -> Iterator[RunningNginx]:
    """nginx in the foreground on `port` (named by `conf_text`), until the block ends."""
    binary = nginx_binary()
    checked = check_conf(binary, prefix, conf_text)
    assert checked.returncode == 0, checked.stderr
    argv = [binary, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    process = subprocess.Popen(
        [*argv, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    running = RunningNginx(process, prefix, port)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"nginx exited: {running.error_log()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nginx did not listen: {running.error_log()}"
                time.sleep(0.02)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
