"""nginx configs for the benchmark: a fixed-200 upstream and a keepalive proxy.

Each instance lives in its own temp prefix (conf, pid, logs, temp paths) and
runs in the foreground, so nothing touches /etc/nginx or /var/lib/nginx."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from fast_upstream import UPSTREAM_BODY


def nginx_path() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_version(binary: str) -> str:
    # nginx prints its version on stderr.
    res = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (res.stderr or res.stdout).strip()


def _supports_e_flag(binary: str) -> bool:
    # `-e` (startup error log) exists since 1.19.5; without it an unprivileged
    # run may complain about the compiled-in log path before reading our conf.
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", nginx_version(binary))
    if match is None:
        return False
    return tuple(int(g) for g in match.groups()) >= (1, 19, 5)


def _common_head(prefix: Path) -> str:
    # As root nginx would switch workers to `nobody`, which cannot read a
    # root-owned temp dir; keep workers as the current user instead.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}"
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 4096; multi_accept on; }\n"
    )


def _http_head(prefix: Path) -> str:
    # Temp paths point into the prefix: the compiled-in ones (/var/lib/nginx)
    # may be missing or unwritable.
    return (
        "access_log off;\n"
        "keepalive_requests 1000000;\n"  # default 1000 would reconnect wrk's connections mid-run
        "keepalive_timeout 75s;\n"
        "client_max_body_size 2m;\n"  # the 1 MiB upload workload
        "client_body_buffer_size 2m;\n"  # ... held in memory, not spooled to a temp file
        f"client_body_temp_path {prefix}/body;\n"
        f"proxy_temp_path {prefix}/proxy;\n"
        f"fastcgi_temp_path {prefix}/fastcgi;\n"
        f"uwsgi_temp_path {prefix}/uwsgi;\n"
        f"scgi_temp_path {prefix}/scgi;\n"
    )


DOWNLOAD_PATH = "/1m"
DOWNLOAD_BYTES = 1024 * 1024


def download_body() -> bytes:
    """What the upstream serves at DOWNLOAD_PATH (the 1 MiB download workload)."""
    return b"0123456789abcdef" * (DOWNLOAD_BYTES // 16)


def upstream_conf(prefix: Path, port: int) -> str:
    body = UPSTREAM_BODY.decode().replace("\n", "\\n")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "download.bin").write_bytes(download_body())
    return (
        _common_head(prefix) + "http {\n" + _http_head(prefix) + "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    default_type text/plain;\n"
        f'    location / {{ return 200 "{body}"; }}\n'
        f"    location = {DOWNLOAD_PATH} {{ alias {prefix}/download.bin; }}\n"
        "  }\n"
        "}\n"
    )


def proxy_conf(prefix: Path, port: int, upstream_port: int) -> str:
    return (
        _common_head(prefix)
        + "http {\n"
        + _http_head(prefix)
        + f"  upstream u {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 1000000; }}\n"
        "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    location / {\n"
        "      proxy_pass http://u;\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "    }\n"
        "  }\n"
        "}\n"
    )


def nginx_argv(binary: str, prefix: Path, conf_text: str) -> list[str]:
    """Write the conf under `prefix` and return the foreground command line."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
    if _supports_e_flag(binary):
        argv[1:1] = ["-e", str(prefix / "error.log")]
    return argv
