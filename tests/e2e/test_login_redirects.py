"""The open-redirect corpus (tests/login/redirect_corpus.yaml) through a real sidecar: each target
given as `rd` to /oauth2/start is carried through the provider and the callback, and the browser is
sent back to it only when it is accepted, else to `/`; given as `rd` to /oauth2/sign_out, a refused
one is a signed-out page, never a redirect. The sidecar's origin is the corpus's (the registered
callback https://books.example/oauth2/callback); the test reaches it on 127.0.0.1 by path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.e2e.test_login import login_settings
from tests.idp import IdP, run_idp
from tests.support.login import free_port, wait_for_login
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream

CORPUS = yaml.safe_load(
    (Path(__file__).parents[1] / "login" / "redirect_corpus.yaml").read_text(encoding="utf-8")
)
CALLBACK = "https://books.example/oauth2/callback"
ALLOWED_HOSTS = ("shop.example", "admin.example:8443")


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        provider.register_client("authcar", "authcar-secret", redirect_uris=[CALLBACK])
        yield provider


@pytest.fixture
async def sidecar(idp: IdP, upstream: RunningUpstream) -> AsyncIterator[RunningSidecar]:
    settings = login_settings(
        idp, free_port(), oidc_redirect_url=CALLBACK, allowed_redirect_hosts=ALLOWED_HOSTS
    )
    async with start_sidecar(upstream.url, **settings) as running:
        await wait_for_login(running.url)
        yield running


async def returned_to(http: httpx.AsyncClient, sidecar: RunningSidecar, target: str) -> str:
    """Where the callback sends the browser after a login begun with `rd=target`."""
    start = await http.get(sidecar.url + "/oauth2/start", params={"rd": target})
    assert start.status_code == 302
    provider = await http.get(start.headers["location"])
    callback = urlsplit(provider.headers["location"])
    assert callback.path == "/oauth2/callback"
    back = await http.get(f"{sidecar.url}{callback.path}?{callback.query}")
    assert back.status_code == 302, back.text
    return back.headers["location"]


async def test_every_refused_target_returns_to_the_root_after_login(sidecar: RunningSidecar) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        arrived = {target: await returned_to(http, sidecar, target) for target in CORPUS["refused"]}
    assert {target: where for target, where in arrived.items() if where != "/"} == {}


async def test_every_accepted_target_is_returned_to_as_written(sidecar: RunningSidecar) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        arrived = {target: await returned_to(http, sidecar, target) for target in CORPUS["accepted"]}
    assert {target: where for target, where in arrived.items() if where != target} == {}


async def test_sign_out_follows_only_accepted_targets(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for target in CORPUS["refused"]:
            answer = await http.get(sidecar.url + "/oauth2/sign_out", params={"rd": target})
            assert answer.status_code == 200, target
            assert "location" not in answer.headers
        for target in CORPUS["accepted"]:
            answer = await http.get(sidecar.url + "/oauth2/sign_out", params={"rd": target})
            assert answer.status_code == 302, target
            assert answer.headers["location"] == target
    assert upstream.seen == []
