"""Browser login built from the settings, on the authentication's login issuer (AUTHCAR_LOGIN)."""

from __future__ import annotations

from authcar.authn.chain import Authentication
from authcar.config import Settings
from authcar.login.cookies import SidecarCookies
from authcar.login.flow import BrowserLogin, LoginOptions
from authcar.login.provider import LoginProvider
from authcar.login.redirects import RedirectPolicy
from authcar.login.state import LoginStateSealer
from authcar.store import Store


def build_login(settings: Settings, authentication: Authentication, store: Store) -> BrowserLogin | None:
    """None unless login is on. Validation made sure the pieces exist (validation/login.py); the
    authentication then reads browser sessions through the returned object."""
    config = settings.login_issuer()
    issuer = authentication.login_issuer
    if not settings.login or config is None or issuer is None:
        return None
    assert config.client_id
    assert config.client_secret
    assert settings.oidc_redirect_url
    assert settings.cookie_secret
    provider = LoginProvider(
        issuer,
        client_id=config.client_id,
        client_secret=config.client_secret,
        redirect_uri=settings.oidc_redirect_url,
        scopes=settings.oidc_scopes,
    )
    login = BrowserLogin(
        provider,
        store,
        cookies=SidecarCookies(
            settings.session_cookie_name(), secure=settings.cookie_secure, samesite=settings.cookie_samesite
        ),
        sealer=LoginStateSealer(settings.cookie_secret.encode()),
        redirects=RedirectPolicy.build(settings.oidc_redirect_url, settings.allowed_redirect_hosts),
        options=LoginOptions(
            reserved_prefix=settings.reserved_prefix,
            redirect_url=settings.oidc_redirect_url,
            post_logout_redirect_url=settings.post_logout_redirect_url,
            idle=settings.session_idle_timeout,
            max_age=settings.session_max_age,
            pass_access_token=settings.pass_access_token,
        ),
    )
    authentication.sessions = login
    return login
