"""HAProxy `jwt_verify` and Apache mod_auth_openidc started for real, as bench/run.py starts them:
the run's token passes to the upstream, every kind of bad token is refused before it. Skipped with
the install command when a binary is missing (a failure under CI=true, where .ci/run installs them)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import baselines
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fast_upstream import UPSTREAM_BODY
from procs import BenchError, Children, free_port, http_get, wait_tcp

from tests.support import system

BENCH_DIR = Path(baselines.__file__).resolve().parent
ISSUER = "http://127.0.0.1:40000/realms/test"
KID = "bench-key-1"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key: Any, *, alg: str = "RS256", kid: str = KID, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "api", "sub": "alice", "iat": now, "exp": now + 3600} | claims
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def children() -> Iterator[Children]:
    registry = Children()
    yield registry
    registry.stop_all()


@pytest.fixture(scope="module")
def upstream_port(children: Children, tmp_path_factory: pytest.TempPathFactory) -> int:
    port = free_port()
    log = tmp_path_factory.mktemp("upstream") / "upstream.log"
    proc = children.spawn([sys.executable, str(BENCH_DIR / "fast_upstream.py"), "--port", str(port)], log=log)
    wait_tcp(port, proc, what="upstream", log=log)
    return port


def gateway_url(
    tool: baselines.Tool, children: Children, tmp: Path, upstream_port: int, key: rsa.RSAPrivateKey
) -> str:
    binary = baselines.locate(tool)
    if binary is None:
        system.unavailable(tool.binary, tool.install_command)
    checks = baselines.write_token_checks(tmp, key, KID, ISSUER, "api")
    _, port = baselines.launch(tool, binary, children, tmp, upstream_port, checks)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module", params=[baselines.HAPROXY, baselines.APACHE], ids=lambda t: t.binary)
def gateway(
    request: pytest.FixtureRequest,
    children: Children,
    tmp_path_factory: pytest.TempPathFactory,
    upstream_port: int,
    key: rsa.RSAPrivateKey,
) -> str:
    tmp = tmp_path_factory.mktemp(request.param.binary)
    return gateway_url(request.param, children, tmp, upstream_port, key)


def status_with(url: str, authorization: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return http_get(url, timeout=10, headers=headers)


def test_the_runs_token_reaches_the_upstream(gateway: str, key: rsa.RSAPrivateKey) -> None:
    assert status_with(gateway, f"Bearer {token(key)}") == (200, UPSTREAM_BODY)


def bad_tokens(key: rsa.RSAPrivateKey) -> dict[str, str | None]:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = token(key)
    head, payload, _ = good.split(".")
    return {
        "no Authorization": None,
        "not a bearer": "Basic YWxpY2U6c2VjcmV0",
        "forged signature": f"Bearer {baselines.forged(good)}",
        "another key": f"Bearer {token(other)}",
        "signature cut": f"Bearer {head}.{payload}.",
        "alg none": "Bearer " + jwt.encode({"iss": ISSUER, "aud": "api", "sub": "a"}, None, algorithm="none"),
        "expired": f"Bearer {token(key, exp=int(time.time()) - 600)}",
        "wrong audience": f"Bearer {token(key, aud='other')}",
        "wrong issuer": f"Bearer {token(key, iss=ISSUER + '-evil')}",
        "garbage": "Bearer not.a.jwt",
    }


def test_every_kind_of_bad_token_is_refused(gateway: str, key: rsa.RSAPrivateKey) -> None:
    answers = {name: status_with(gateway, auth)[0] for name, auth in bad_tokens(key).items()}
    assert {name: code for name, code in answers.items() if code not in (401, 403)} == {}


def test_the_harness_check_passes_them_and_fails_a_proxy_that_checks_nothing(
    gateway: str, upstream_port: int, key: rsa.RSAPrivateKey
) -> None:
    import run  # bench/run.py

    header = ("Authorization", f"Bearer {token(key)}")
    run.check_refuses_bad_tokens(run.Target(gateway, headers=(header,), verifies_tokens=True))
    # The upstream itself answers 200 to anything: exactly what the check must catch.
    blind = run.Target(f"http://127.0.0.1:{upstream_port}/", headers=(header,), verifies_tokens=True)
    with pytest.raises(BenchError, match="does not check the token"):
        run.check_refuses_bad_tokens(blind)
