"""The test provider's sign-in page in a real browser: what login tests through the sidecar stand on."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.idp import IdPProcess, idp_process
from tests.idp.keys import b64url
from tests.idp.relying_party import RelyingParty, relying_party
from tests.support.browser import clear_browser_state, headless_chromium, wait_for_url


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def provider() -> Iterator[IdPProcess]:
    with idp_process() as running:  # its own process: the blocking driver would stall an in-loop one
        running.client.configure(interactive=True)
        yield running


@pytest.fixture
def rp() -> Iterator[RelyingParty]:
    with relying_party() as running:
        yield running


def start_login(browser: WebDriver, provider: IdPProcess, rp: RelyingParty, verifier: str) -> None:
    query = {
        "response_type": "code",
        "client_id": "authcar",
        "redirect_uri": rp.url("/callback"),
        "scope": "openid email",
        "state": "s-" + secrets.token_urlsafe(8),
        "nonce": "n-1",
        "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    }
    browser.get(f"{provider.client.authorization_endpoint}?{urlencode(query)}")


def test_a_browser_signs_in_on_the_page_and_lands_on_the_redirect_uri_with_code_and_state(
    browser: WebDriver, provider: IdPProcess, rp: RelyingParty
) -> None:
    clear_browser_state(browser)
    verifier = secrets.token_urlsafe(48)
    start_login(browser, provider, rp, verifier)
    assert browser.title == "Sign in to authcar"
    users = [
        button.get_attribute("data-user") for button in browser.find_elements(By.CSS_SELECTOR, "[data-user]")
    ]
    assert users == ["alice", "bob", "carol"]
    state = browser.find_element(By.CSS_SELECTOR, 'input[name="state"]').get_attribute("value")

    browser.find_element(By.CSS_SELECTOR, '[data-user="carol"]').click()
    wait_for_url(browser, rp.url("/callback?"))
    assert browser.find_element(By.ID, "state").text == state
    assert browser.find_element(By.ID, "iss").text == provider.client.issuer
    code = browser.find_element(By.ID, "code").text

    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": rp.url("/callback"),
    }
    tokens = httpx.post(provider.client.token_endpoint, data=form, auth=("authcar", "authcar-secret")).json()
    id_token = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert (id_token["sub"], id_token["nonce"]) == ("carol", "n-1")


def test_cancel_in_the_browser_answers_access_denied(
    browser: WebDriver, provider: IdPProcess, rp: RelyingParty
) -> None:
    clear_browser_state(browser)
    start_login(browser, provider, rp, secrets.token_urlsafe(48))
    browser.find_element(By.ID, "cancel").click()
    wait_for_url(browser, rp.url("/callback?"))
    assert browser.find_element(By.ID, "error").text == "access_denied"
    assert not browser.find_elements(By.ID, "code")
