"""Configuration from BOOKS_* variables, and `python -m book_service` as a real process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from book_service import Settings, SettingsError
from book_service_kit import ASSERTION, JwksServer, SidecarKey, claims_for, free_socket, mint

SERVICE_DIR = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.db) == ("127.0.0.1", 8080, ":memory:")
    assert settings.jwks_url == "http://127.0.0.1:4180/.well-known/authcar/jwks.json"
    assert settings.assertion_audience == "upstream"


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "BOOKS_HOST": "::1",
            "BOOKS_PORT": "9000",
            "BOOKS_DB": "/data/books.db",
            "BOOKS_AUTHCAR_JWKS_URL": "http://127.0.0.1:5000/keys",
            "BOOKS_ASSERTION_AUDIENCE": "books",
            "BOOKS_JWKS_COOLDOWN": "2.5",
            "BOOKS_JWKS_MAX_AGE": "60",
            "BOOKS_ASSERTION_LEEWAY": "1",
            "BOOKS_ADMIN_ROLE": "librarian",
            "BOOKS_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings == Settings(
        host="::1",
        port=9000,
        db="/data/books.db",
        jwks_url="http://127.0.0.1:5000/keys",
        assertion_audience="books",
        jwks_cooldown=2.5,
        jwks_max_age=60,
        assertion_leeway=1,
        admin_role="librarian",
        log_level="debug",
    )


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(
            {
                "BOOKS_HOST": "0.0.0.0",
                "BOOKS_PORT": "http",
                "BOOKS_AUTHCAR_JWKS_URL": "file:///etc/keys",
                "BOOKS_ASSERTION_LEEWAY": "nan",
                "BOOKS_LOG_LEVEL": "loud",
            }
        )
    message = str(raised.value)
    for name in (
        "BOOKS_HOST",
        "BOOKS_PORT",
        "BOOKS_AUTHCAR_JWKS_URL",
        "BOOKS_ASSERTION_LEEWAY",
        "BOOKS_LOG_LEVEL",
    ):
        assert name in message


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com"])
def test_only_loopback_addresses_are_accepted(host: str) -> None:
    with pytest.raises(SettingsError, match="loopback"):
        Settings.from_env({"BOOKS_HOST": host})


def test_the_module_runs_as_a_service(tmp_path: Path) -> None:
    key = SidecarKey.generate()
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    db_path = tmp_path / "books.db"
    env = {
        **os.environ,
        "BOOKS_PORT": str(port),
        "BOOKS_DB": str(db_path),
        "BOOKS_LOG_LEVEL": "warning",
    }
    with JwksServer([key]).running() as jwks:
        env["BOOKS_AUTHCAR_JWKS_URL"] = jwks.url
        process = subprocess.Popen(
            [sys.executable, "-m", "book_service"],
            cwd=SERVICE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process)
            token = mint(key, claims_for("POST", "/books", sub="bob"))
            answer = httpx.post(
                f"{url}/books",
                json={"title": "Emma", "author": "Jane Austen", "year": 1815},
                headers={ASSERTION: token},
            )
            assert answer.status_code == 201
            assert httpx.get(f"{url}/books").status_code == 401
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr.decode()
    # The file outlives the process.
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT title, created_by FROM books").fetchall() == [("Emma", "bob")]


def test_bad_configuration_stops_the_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "book_service"],
        cwd=SERVICE_DIR,
        env={**os.environ, "BOOKS_HOST": "0.0.0.0", "BOOKS_PORT": "-1"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"BOOKS_HOST" in result.stderr
    assert b"BOOKS_PORT" in result.stderr


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the service exited: {process.communicate()[1].decode()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("the service did not become healthy")
