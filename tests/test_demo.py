"""`authcar demo`, the README's first command: starts, answers as printed, stops cleanly on Ctrl-C.

Every curl command the demo prints is parsed from its output and run (with httpx, option by option),
so the printed text cannot drift from what the demo really does.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from authcar.demo import free_port
from authcar.devissuer import DEMO_AUDIENCE, DEMO_CLIENTS


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    output: Path
    port: int
    admin_port: int

    @property
    def printed(self) -> str:
        return self.output.read_text()

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def issuer(self) -> str:
        found = re.search(r"^  dev issuer +(http://127\.0\.0\.1:\d+) ", self.printed, re.MULTILINE)
        assert found, self.printed
        return found.group(1)

    def commands(self) -> list[str]:
        """The printed curl commands, in order."""
        return [line.strip() for line in self.printed.splitlines() if line.strip().startswith("curl ")]

    def role_commands(self) -> dict[str, str]:
        """Role -> its printed command, from the `# role (subject, ...)` line above each."""
        lines = [line.strip() for line in self.printed.splitlines()]
        return {
            match.group(1): lines[n + 1]
            for n, line in enumerate(lines)
            if (match := re.match(r"# (\w+) \(", line))
        }


def start_demo(tmp_path: Path, port: int | None = None) -> Demo:
    demo_port, admin_port = port or free_port(), free_port()
    output = tmp_path / f"demo-{time.monotonic_ns()}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "authcar",
                "demo",
                "--port",
                str(demo_port),
                "--admin-port",
                str(admin_port),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Demo(process, output, demo_port, admin_port)


def wait_printed(demo: Demo, text: str = "Press Ctrl-C", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in demo.printed:
        assert demo.process.poll() is None, demo.printed
        assert time.monotonic() < deadline, demo.printed
        time.sleep(0.05)


def stop(demo: Demo) -> None:
    if demo.process.poll() is None:
        demo.process.kill()
        demo.process.wait(timeout=10)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = start_demo(tmp_path_factory.mktemp("demo"))
    try:
        wait_printed(running)
        yield running
    finally:
        stop(running)


def curl(command: str) -> httpx.Response:
    """Run a printed curl command with httpx: exactly the options the demo prints, nothing guessed."""
    argv = shlex.split(command.split(" | ")[0])  # `| grep ...` only filters what curl prints
    assert argv[0] == "curl", command
    url, headers, data, auth = None, {}, None, None
    options = iter(argv[1:])
    for option in options:
        if option in ("-s", "-i", "-si"):
            continue  # silence and "show headers": the response is inspected here anyway
        if option == "-H":
            name, _, value = next(options).partition(":")
            headers[name.strip()] = value.strip()
        elif option == "-d":
            data = next(options)
            headers["Content-Type"] = "application/x-www-form-urlencoded"  # what curl -d sends
        elif option == "-u":
            user, _, password = next(options).partition(":")
            auth = (user, password)
        elif option.startswith("http://") and url is None:
            url = option
        else:
            raise AssertionError(f"the test does not know curl option {option!r} in {command!r}")
    assert url is not None, command
    return httpx.request("POST" if data else "GET", url, headers=headers, content=data, auth=auth, timeout=5)


def token_of(command: str) -> str:
    found = re.search(r"Authorization: Bearer ([\w.-]+)", command)
    assert found, command
    return found.group(1)


def token_command(demo: Demo) -> str:
    [command] = [c for c in demo.commands() if "grant_type=client_credentials" in c]
    return command


def test_every_printed_command_is_one_the_tests_run(demo: Demo) -> None:
    commands = demo.commands()
    no_token = [c for c in commands if c.startswith(f"curl -si {demo.public}/") and "Authorization" not in c]
    spoofing = [c for c in commands if "X-Auth-Request-User" in c]
    probes = [c for c in commands if c.startswith(f"curl -s {demo.admin}/")]
    roles = demo.role_commands()
    assert sorted(roles) == sorted(DEMO_CLIENTS)
    assert len(no_token) == 1
    assert len(spoofing) == 1
    assert len(probes) == 2
    assert sorted(commands) == sorted([*no_token, *roles.values(), token_command(demo), *spoofing, *probes])
    assert demo.printed.index("authcar demo is running") > demo.printed.index("DEVELOPMENT issuer")


def test_without_a_token_the_sidecar_answers_401_and_the_app_sees_nothing(demo: Demo) -> None:
    [no_token] = [c for c in demo.commands() if c.startswith(f"curl -si {demo.public}/")]
    reader = demo.role_commands()["reader"]
    before = curl(reader).json()["requests_seen"]

    refused = curl(no_token)

    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="authcar"')
    assert refused.json()["error"]
    # The app counts every request it sees: the refused one never reached it.
    assert curl(reader).json()["requests_seen"] == before + 1


@pytest.mark.parametrize("role", sorted(DEMO_CLIENTS))
def test_each_printed_role_token_reaches_the_app(demo: Demo, role: str) -> None:
    command = demo.role_commands()[role]
    token = token_of(command)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["roles"] == [role]
    assert claims["sub"] == DEMO_CLIENTS[role].subject
    assert claims["aud"] == DEMO_AUDIENCE
    assert 3500 < claims["exp"] - time.time() <= 3600

    answer = curl(command)

    assert answer.status_code == 200, answer.text
    echoed = answer.json()
    received = {name.lower(): value for name, value in echoed["headers_received"].items()}
    assert (echoed["method"], echoed["path"]) == ("GET", "/books/1")
    assert received["authorization"] == f"Bearer {token}"
    assert {"x-forwarded-for", "x-request-id"} <= received.keys()
    if "x-auth-request-user" in received:  # once identity headers are injected, they must be this role's
        assert received["x-auth-request-user"] == DEMO_CLIENTS[role].subject


def test_a_token_from_the_printed_token_endpoint_works(demo: Demo) -> None:
    issued = curl(token_command(demo))
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600

    # The reader's printed command, with the fresh token in place of the one minted at start.
    command = demo.role_commands()["reader"]
    answer = curl(command.replace(token_of(command), body["access_token"]))

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers_received"]["Authorization"] == f"Bearer {body['access_token']}"


def test_a_wrong_client_secret_is_refused_by_the_token_endpoint(demo: Demo) -> None:
    command = token_command(demo)
    assert "-u reader:demo-secret " in command

    refused = curl(command.replace("-u reader:demo-secret ", "-u reader:wrong-secret "))

    assert refused.status_code == 401
    assert refused.headers["Content-Type"].startswith("application/json")
    assert refused.json()["error"] == "invalid_client"


def test_the_issuer_names_itself_as_the_sidecar_expects(demo: Demo) -> None:
    discovery = httpx.get(f"{demo.issuer}/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == demo.issuer
    assert discovery["token_endpoint"] == token_command(demo).split()[-1]
    [key] = httpx.get(discovery["jwks_uri"], timeout=5).json()["keys"]
    for command in demo.role_commands().values():
        token = token_of(command)
        assert jwt.get_unverified_header(token)["kid"] == key["kid"]
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == demo.issuer


def test_spoofed_identity_headers_are_removed(demo: Demo) -> None:
    [command] = [c for c in demo.commands() if "X-Auth-Request-User" in c]
    answer = curl(command)
    assert answer.status_code == 200, answer.text
    received = {name.lower(): value for name, value in answer.json()["headers_received"].items()}
    assert received.get("x-auth-request-user") != "carol"  # removed (or replaced by the real subject)


def test_probe_and_metrics_commands_answer(demo: Demo) -> None:
    readyz, metrics = (c for c in demo.commands() if c.startswith(f"curl -s {demo.admin}/"))
    ready = curl(readyz)
    assert ready.status_code == 200
    assert ready.json()["checks"]["keys"]["ok"] is True
    assert "authcar_requests" in curl(metrics).text


def test_ctrl_c_stops_the_demo_promptly(tmp_path: Path) -> None:
    demo = start_demo(tmp_path)
    try:
        wait_printed(demo)
        with httpx.Client(timeout=5) as kept_alive:  # an idle keep-alive connection must not hold it up
            kept_alive.get(f"{demo.public}/books/1")
            demo.process.send_signal(signal.SIGINT)
            started = time.monotonic()
            assert demo.process.wait(timeout=15) == 0, demo.printed
        assert time.monotonic() - started < 5
        assert "authcar demo: stopping" in demo.printed
        assert "Traceback" not in demo.printed
    finally:
        stop(demo)


def test_a_busy_port_is_reported_not_a_traceback(tmp_path: Path, demo: Demo) -> None:
    second = start_demo(tmp_path, port=demo.port)
    try:
        assert second.process.wait(timeout=15) == 1
        assert "try --port/--admin-port" in second.printed
        assert "Traceback" not in second.printed
    finally:
        stop(second)
