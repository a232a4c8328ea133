"""`authcar demo`, the README's first command: starts, answers as printed, stops cleanly.

Every curl command the demo prints is parsed from its output and run (with httpx, option by option,
shell variables filled in from the token lines it prints), so the printed text cannot drift from what
the demo really does. The walkthrough runs in the printed order, each command must get the status
printed above it, and a refused request must leave no trace in the book service.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from authcar.demo import DemoError, DemoUrls, demo_policy_dir, running_demo, supervise, wait_ready
from authcar.devissuer import DEMO_AUDIENCE, DEMO_CLIENTS
from tests.test_devissuer_login import form_of

REPO = Path(__file__).resolve().parent.parent
DEMO_COMMAND = (sys.executable, "-m", "authcar", "demo")


@dataclass(frozen=True)
class PrintedStep:
    status: int
    says: str
    command: str


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    output: Path

    @property
    def printed(self) -> str:
        return self.output.read_text()

    def url(self, name: str) -> str:
        """A URL from the header the demo prints: `sidecar`, `admin`, `book service`, `dev issuer`."""
        pattern = r"\(admin: (http://127\.0\.0\.1:\d+)\)" if name == "admin" else rf"^  {name} +(http://\S+)"
        found = re.search(pattern, self.printed, re.MULTILINE)
        assert found, self.printed
        return found.group(1)

    @property
    def public(self) -> str:
        return self.url("sidecar")

    @property
    def admin(self) -> str:
        return self.url("admin")

    def variables(self) -> dict[str, str]:
        """The shell variables the demo asks to paste: one token per role."""
        return dict(re.findall(r"^  ([A-Z]+)=(\S+)  # ", self.printed, re.MULTILINE))

    def commands(self) -> list[str]:
        """The printed curl commands, in order."""
        return [line.strip() for line in self.printed.splitlines() if line.strip().startswith("curl ")]

    def walkthrough(self) -> list[PrintedStep]:
        """Each `# <status> <what>` line with the command below it."""
        lines = [line.strip() for line in self.printed.splitlines()]
        return [
            PrintedStep(int(found.group(1)), found.group(2), lines[n + 1])
            for n, line in enumerate(lines)
            if (found := re.fullmatch(r"# (\d{3}) (.+)", line))
        ]

    def curl(self, command: str) -> httpx.Response:
        return curl(command, self.variables())


def start_demo(
    tmp_path: Path, port: int = 0, command: Sequence[str | Path] = DEMO_COMMAND, **popen: Any
) -> Demo:
    output = tmp_path / f"demo-{time.monotonic_ns()}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*map(str, command), "--port", str(port), "--admin-port", "0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            **popen,
        )
    return Demo(process, output)


def wait_printed(demo: Demo, text: str = "Press Ctrl-C", timeout: float = 30) -> None:
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


def curl(command: str, variables: dict[str, str]) -> httpx.Response:
    """Run a printed curl command with httpx: exactly the options the demo prints, nothing guessed."""

    # `| grep ...` only filters what curl prints.
    argv = shlex.split(expand_variables(command.split(" | ")[0], variables))
    assert argv[0] == "curl", command
    url, method, headers, data, auth = None, None, {}, None, None
    options = iter(argv[1:])
    for option in options:
        if option in ("-s", "-i", "-si"):
            continue  # silence and "show headers": the response is inspected here anyway
        if option == "-w":
            next(options)  # what curl prints after the body (the status): inspected here anyway
        elif option == "-X":
            method = next(options)
        elif option == "-H":
            name, _, value = next(options).partition(":")
            headers[name.strip()] = value.strip()
        elif option == "-d":
            data = next(options)
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")  # curl's default
        elif option == "-u":
            user, _, password = next(options).partition(":")
            auth = (user, password)
        elif option.startswith("http://") and url is None:
            url = option
        else:
            raise AssertionError(f"the test does not know curl option {option!r} in {command!r}")
    assert url is not None, command
    method = method or ("POST" if data is not None else "GET")
    return httpx.request(method, url, headers=headers, content=data, auth=auth, timeout=5)


def expand_variables(command: str, variables: dict[str, str]) -> str:
    """What the shell does to the printed commands: $NAME replaced, except inside single quotes."""
    expanded, quoted = [], False
    for piece in re.split(r"('|\$[A-Z_]+)", command):
        if piece == "'":
            quoted = not quoted
        elif piece.startswith("$") and not quoted:
            assert piece[1:] in variables, f"{piece} is not printed for pasting: {command}"
            piece = variables[piece[1:]]
        expanded.append(piece)
    return "".join(expanded)


def token_command(demo: Demo) -> str:
    [command] = [c for c in demo.commands() if "grant_type=client_credentials" in c]
    return command


def audit(demo: Demo) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{demo.public}/audit", headers={"Authorization": f"Bearer {demo.variables()['ADMIN']}"}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["entries"])


def books(demo: Demo) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{demo.public}/books", headers={"Authorization": f"Bearer {demo.variables()['READER']}"}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["books"])


def test_every_printed_command_is_one_the_tests_run(demo: Demo) -> None:
    steps = demo.walkthrough()
    probes = [c for c in demo.commands() if c.startswith(f"curl -s {demo.admin}/")]
    assert len(probes) == 2
    assert sorted(demo.commands()) == sorted([*(s.command for s in steps), token_command(demo), *probes])
    assert sorted(demo.variables()) == sorted(role.upper() for role in DEMO_CLIENTS)
    assert demo.printed.index("authcar demo is running") > demo.printed.index("DEVELOPMENT issuer")
    # What the issue asks the demo to show, each with the status the policy gives it.
    shown = {(s.status, s.command.split()[-1].removeprefix(demo.public)) for s in steps}
    assert {(401, "/books"), (200, "/healthz"), (403, "/books"), (201, "/books"), (204, "/books/1")} <= shown
    assert (200, "/audit") in shown


def test_the_walkthrough_gets_the_printed_statuses_and_refusals_never_reach_the_books(demo: Demo) -> None:
    steps = demo.walkthrough()
    assert len(steps) >= 8
    for step in steps:
        before = (books(demo), audit(demo))

        answer = demo.curl(step.command)

        assert answer.status_code == step.status, f"{step.says}: {step.command}\n{answer.text}"
        if step.status in (401, 403):
            assert answer.json()["error"] in ("no_credentials", "policy_denied"), answer.text
            # The sidecar refused it: the book service saw nothing, so nothing changed there.
            assert (books(demo), audit(demo)) == before, step.says
        if step.status == 401:
            assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="authcar"')

    # The last command shows the audit trail: exactly the changes the policy let through, by whom.
    entries = demo.curl(steps[-1].command).json()["entries"]
    assert [(e["subject"], e["action"], e["book_id"]) for e in reversed(entries)] == [
        ("bob", "book.create", 1),
        ("alice", "review.create", 1),
        ("carol", "book.delete", 1),
    ]
    assert books(demo) == []


@pytest.mark.parametrize("role", sorted(DEMO_CLIENTS))
def test_each_printed_token_is_its_role_s(demo: Demo, role: str) -> None:
    token = demo.variables()[role.upper()]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["roles"] == [role]
    assert claims["sub"] == DEMO_CLIENTS[role].subject
    assert claims["aud"] == DEMO_AUDIENCE
    assert claims["iss"] == demo.url("dev issuer")
    # An hour from when it was minted (the demo may have started minutes ago on a loaded machine).
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["iat"] <= time.time() < claims["exp"]
    assert f"={token}  # {DEMO_CLIENTS[role].subject}\n" in demo.printed


def test_a_token_from_the_printed_token_endpoint_works(demo: Demo) -> None:
    issued = demo.curl(token_command(demo))
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600)

    # The reader's printed command, with the fresh token in place of the one minted at start.
    [reader_lists] = [s for s in demo.walkthrough() if s.status == 200 and "$READER" in s.command]
    answer = curl(reader_lists.command, {**demo.variables(), "READER": body["access_token"]})

    assert answer.status_code == 200, answer.text
    assert "books" in answer.json()


def test_a_wrong_client_secret_is_refused_by_the_token_endpoint(demo: Demo) -> None:
    command = token_command(demo)
    assert "-u reader:demo-secret " in command

    refused = demo.curl(command.replace("-u reader:demo-secret ", "-u reader:wrong-secret "))

    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"


def test_the_issuer_names_itself_as_the_sidecar_expects(demo: Demo) -> None:
    issuer = demo.url("dev issuer")
    discovery = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == issuer
    assert discovery["token_endpoint"] == token_command(demo).split()[-1]
    [key] = httpx.get(discovery["jwks_uri"], timeout=5).json()["keys"]
    for token in demo.variables().values():
        assert jwt.get_unverified_header(token)["kid"] == key["kid"]


def printed_url(demo: Demo, pattern: str) -> str:
    [found] = re.findall(pattern, demo.printed, re.MULTILINE)
    return str(found)


def test_a_browser_signs_in_at_the_printed_url_and_sees_the_book_service(demo: Demo) -> None:
    """What a person does with the printed browser lines, request by request as a browser sends them."""
    opened = printed_url(demo, r"In a browser: open (http://\S+) ")
    assert opened == f"{demo.public}/books"
    userinfo = printed_url(demo, r"^  (http://\S+/oauth2/userinfo) ")
    sign_out = printed_url(demo, r"^  (http://\S+/oauth2/sign_out) ")
    issuer = demo.url("dev issuer")
    page = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    with httpx.Client(timeout=5) as browser:
        start = browser.get(opened, headers=page)
        assert (start.status_code, start.headers["location"]) == (302, "/oauth2/start?rd=%2Fbooks")
        authorize = browser.get(demo.public + start.headers["location"])
        assert authorize.headers["location"].startswith(f"{issuer}/authorize?")
        sign_in = browser.get(authorize.headers["location"], headers=page)
        assert sign_in.status_code == 200
        form = form_of(sign_in.text)
        assert [b["data-user"] for b in form.buttons if "data-user" in b] == ["alice", "bob", "carol"]
        chosen = browser.post(form.action, data={**form.hidden, "user": "bob"})
        assert chosen.headers["location"].startswith(f"{demo.public}/oauth2/callback?")
        back = browser.get(chosen.headers["location"])
        assert (back.status_code, back.headers["location"]) == (302, "/books")
        assert any("HttpOnly" in c for c in back.headers.get_list("set-cookie"))
        shown = browser.get(opened, headers=page)
        assert shown.status_code == 200, shown.text
        assert "books" in shown.json()
        me = browser.get(userinfo).json()
        assert (me["sub"], me["groups"]) == ("bob", ["editor"])

        out = browser.get(sign_out)
        assert out.headers["location"].startswith(f"{issuer}/logout?")
        returned = browser.get(out.headers["location"])
        assert (returned.status_code, returned.headers["location"]) == (302, opened)
        again = browser.get(opened, headers=page)
        assert (again.status_code, again.headers["location"]) == (302, "/oauth2/start?rd=%2Fbooks")
        # A script's call (not a page load) after sign-out keeps its 401, as API clients always get.
        api = browser.get(opened, headers={"Accept": "application/json"})
        assert (api.status_code, api.json()["error"]) == (401, "no_credentials")


def test_the_book_service_is_reachable_only_on_localhost(demo: Demo) -> None:
    books_url = demo.url("book service")
    assert books_url.startswith("http://127.0.0.1:")
    # Straight to the service, without the sidecar's assertion: refused before anything is read.
    assert httpx.get(f"{books_url}/books", timeout=5).status_code == 401


def test_probe_and_metrics_commands_answer(demo: Demo) -> None:
    readyz, metrics = (c for c in demo.commands() if c.startswith(f"curl -s {demo.admin}/"))
    ready = demo.curl(readyz)
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert [name for name in ("keys", "policy", "upstream") if not checks[name]["ok"]] == []
    # The printed filter keeps the request counts only, not their `_created` timestamps.
    pattern = shlex.split(metrics.split(" | ")[1])[1]
    kept = [line for line in demo.curl(metrics).text.splitlines() if re.search(pattern, line)]
    assert kept
    assert all(line.startswith("authcar_requests_total{") for line in kept), kept


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_the_demo_promptly(tmp_path: Path, signum: signal.Signals) -> None:
    demo = start_demo(tmp_path)
    try:
        wait_printed(demo)
        ports = [port_of(demo.url(name)) for name in ("sidecar", "admin", "book service", "dev issuer")]
        with httpx.Client(timeout=5) as kept_alive:  # an idle keep-alive connection must not hold it up
            assert kept_alive.get(f"{demo.public}/healthz").status_code == 200
            demo.process.send_signal(signum)
            # Promptly: wait's 15 s is the bound (an outcome, not a measure of this machine's speed);
            # a demo held open by the idle connection would wait out its 75 s keep-alive.
            assert demo.process.wait(timeout=15) == 0, demo.printed
        assert "authcar demo: stopping" in demo.printed
        # The request's access line comes before the goodbye, not flushed after it.
        assert demo.printed.index("GET /healthz 200") < demo.printed.index("authcar demo: stopping")
        assert "Traceback" not in demo.printed
        assert not [port for port in ports if accepts(port)]
    finally:
        stop(demo)


def test_a_busy_port_is_reported_not_a_traceback(tmp_path: Path, demo: Demo) -> None:
    second = start_demo(tmp_path, port=port_of(demo.public))
    try:
        assert second.process.wait(timeout=15) == 1
        assert "try --port/--admin-port" in second.printed
        # Nothing started before the port was found taken, so nothing warns about it either.
        assert "DEVELOPMENT issuer" not in second.printed
        assert "Traceback" not in second.printed
    finally:
        stop(second)


def test_a_missing_book_service_is_reported_not_a_traceback(tmp_path: Path) -> None:
    # An installation without the book service (None in sys.modules: its import fails as if absent).
    hidden = (
        "import sys; sys.modules['book_service'] = None\nfrom authcar.__main__ import main; sys.exit(main())"
    )
    demo = start_demo(tmp_path, command=[sys.executable, "-c", hidden, "demo"])
    try:
        assert demo.process.wait(timeout=15) == 1
        assert "authcar demo: the book service is not installed" in demo.printed
        assert "pip install -e ." in demo.printed
        assert "Traceback" not in demo.printed
    finally:
        stop(demo)


async def run_until_a_part_stops(part: str, started: list[DemoUrls]) -> None:
    async with running_demo(0, 0) as running:
        started.append(running.urls)
        assert await supervise(running.parts, wait_ready(running.urls.admin, asyncio.Event()))
        # The part ends by itself, as a crash would end it: the demo did not ask it to.
        server = running.books if part == "book service" else running.sidecar.public
        server.should_exit = True
        await asyncio.wait_for(supervise(running.parts, asyncio.Event().wait()), timeout=10)


@pytest.mark.parametrize("part", ["book service", "sidecar"])
async def test_a_part_that_stops_stops_the_whole_demo(part: str) -> None:
    started: list[DemoUrls] = []

    with pytest.raises(DemoError, match=f"^the {part} stopped unexpectedly"):
        await run_until_a_part_stops(part, started)

    [urls] = started
    assert [url for url in (urls.public, urls.admin, urls.books, urls.issuer) if accepts(port_of(url))] == []


def test_the_demo_policy_is_the_repository_s(demo: Demo) -> None:
    # From a checkout, the demo authorizes with policies/ itself: there is no copy to drift.
    assert demo_policy_dir() == REPO / "policies"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
