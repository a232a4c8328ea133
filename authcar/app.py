"""The one object built at startup that holds everything a process needs, and the apps built on it."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import IO, TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette

from authcar.admin import build_admin_app
from authcar.assertion import AssertionSigner
from authcar.authn.chain import Authentication
from authcar.background import cancel_and_wait
from authcar.config import Settings
from authcar.gate import Gate, GateOptions
from authcar.headers import HeaderRules
from authcar.identity_headers import IdentityHeaders
from authcar.observe import AccessLog, Metrics
from authcar.otel_env import tracing_wanted
from authcar.policy.reload import PolicySource
from authcar.rate_limit import RateLimiter
from authcar.rate_spec import rate_spec
from authcar.reserved import build_reserved_app
from authcar.revocation import RevocationList
from authcar.store import Store
from authcar.store.setup import store_from_settings, store_readiness
from authcar.tls import CertificateStore
from authcar.upstream import Upstream

if TYPE_CHECKING:
    from authcar.login.flow import BrowserLogin
    from authcar.tracing import Tracing

log = logging.getLogger("authcar")


class Sidecar:
    """Clients, caches and state of one process; built once, started, and closed at shutdown."""

    def __init__(
        self, settings: Settings, *, access_stream: IO[str] | None = None, assertion_pem: bytes | None = None
    ) -> None:
        """`assertion_pem`: the supervisor's assertion key, so that every worker signs with one key.
        Raises PolicyError when the policy directory holds no usable policy."""
        self.settings = settings
        self.metrics = Metrics()
        self.access_log = AccessLog(settings.access_log, settings.log_format, access_stream)
        self.upstream = Upstream(
            settings.upstream,
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            max_connections=settings.upstream_max_connections,
            keepalive_timeout=settings.upstream_keepalive_timeout,
            max_body_bytes=settings.max_body_bytes,
            max_header_bytes=settings.upstream_max_header_bytes,
            buffer_bytes=settings.request_buffer_bytes,
        )
        # What the application is told about the caller, signed so that it can tell it came from here.
        self.assertion_signer = AssertionSigner.from_settings(settings, generated_pem=assertion_pem)
        self.identity_headers = IdentityHeaders(settings, self.assertion_signer)
        self.header_rules = HeaderRules(
            settings.trusted_proxies,
            pass_host_header=settings.pass_host_header,
            upstream_host=self.upstream.host_header,
            identity_header_names=self.identity_headers.header_names,
            forward_authorization=settings.forward_authorization,
        )
        self.tls: CertificateStore | None = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            self.tls = CertificateStore(
                settings.tls_cert_file,
                settings.tls_key_file,
                settings.tls_client_ca_file,
                on_event=self.tls_event,
            )
            self.metrics.tls_expiry.set(self.tls.not_after)
        # The identity provider's client (discovery, JWKS, introspection): httpx, with
        # tight timeouts so a slow provider cannot hold requests for long.
        self.idp_http = httpx.AsyncClient(
            timeout=httpx.Timeout(5.0, connect=3.0), follow_redirects=False, headers={"User-Agent": "authcar"}
        )
        # State with TTLs (introspection results, revocations, rate limits, login sessions): Redis, shared by
        # every replica, when AUTHCAR_REDIS_URL is set, else this process's memory.
        self.store: Store = store_from_settings(settings, on_call=self.time_store_call)
        self.authentication = Authentication(settings, self.idp_http, self.store, self.metrics)
        # Browser login (AUTHCAR_LOGIN): its endpoints, and the sessions the authentication reads.
        self.login: BrowserLogin | None = None
        if settings.login:
            # Imported here: authlib costs a worker ~3 MiB, which one without login need not pay.
            from authcar.login.setup import build_login

            self.login = build_login(settings, self.authentication, self.store)
            if self.login is not None:
                self.upstream.own_cookie = self.login.cookies.is_ours
        self.revocations = RevocationList(
            self.store, fail_open=settings.revocation_fail_open, metrics=self.metrics
        )
        self.policy = PolicySource(settings.policy_dir, self.metrics, role_prefix=settings.policy_role_prefix)
        self.policy.load_initial()
        self.draining = False
        self.tasks: list[asyncio.Task[Any]] = []
        # OpenTelemetry (OTEL_EXPORTER_OTLP_ENDPOINT): imported only when asked for.
        self.tracing: Tracing | None = None
        if tracing_wanted(os.environ):
            from authcar.tracing import Tracing

            self.tracing = Tracing.from_environ(os.environ, self.metrics, upstream_url=settings.upstream)
            self.tracing.instrument(self.idp_http)
            if self.login is not None:
                self.tracing.instrument(self.login.provider.http)
        self.public_app = Gate(
            header_rules=self.header_rules,
            authentication=self.authentication,
            revocations=self.revocations,
            policy=self.policy,
            identity_headers=self.identity_headers,
            upstream=self.upstream,
            reserved_app=build_reserved_app(
                self.assertion_signer, self.login.routes() if self.login is not None else ()
            ),
            metrics=self.metrics,
            access_log=self.access_log,
            options=GateOptions.from_settings(settings),
            rate_limit=self.rate_limiter(),
            login=self.login,
            tracing=self.tracing,
        )
        self.admin_app: Starlette = build_admin_app(self)

    def rate_limiter(self) -> RateLimiter | None:
        settings = self.settings
        if settings.rate_limit is None:
            return None
        return RateLimiter(
            rate_spec(settings.rate_limit, settings.rate_limit_burst), self.store, self.metrics
        )

    async def start(self) -> None:
        await self.upstream.start()
        await self.authentication.start()
        # One confirmation before serving (bounded by the store's timeout), so a sidecar whose store
        # answers starts with a current list; then the poll keeps it so.
        await self.revocations.refresh_quietly()
        self.tasks.append(asyncio.create_task(self.revocations.run(), name="authcar-revocations"))
        self.tasks.append(asyncio.create_task(self.metrics.flush_periodically(), name="authcar-metrics"))
        self.tasks.append(asyncio.create_task(self.policy.watch(), name="authcar-policy-watch"))
        if self.tls is not None:
            self.tasks.append(asyncio.create_task(self.tls.watch(), name="authcar-tls-watch"))

    async def close(self) -> None:
        await cancel_and_wait(self.tasks)
        await self.authentication.close()
        if self.login is not None:
            await self.login.close()
        await self.idp_http.aclose()
        await self.store.close()
        self.metrics.flush()  # the last counts reach the (multiprocess) files before exit
        await self.upstream.close()
        self.access_log.close()
        if self.tracing is not None:
            await self.tracing.close()

    def reload(self) -> None:
        """SIGHUP: re-read everything that can change without a restart."""
        if self.tls is not None:
            self.tls.reload()
        # Compiling 10,000 rules takes over a second: off the event loop (reloads take turns).
        self.tasks.append(
            asyncio.create_task(asyncio.to_thread(self.policy.reload), name="authcar-policy-reload")
        )

    def time_store_call(self, operation: str, result: str, seconds: float) -> None:
        self.metrics.store_duration.labels(operation=operation, result=result).observe(seconds)

    def tls_event(self, event: str, fields: dict[str, Any]) -> None:
        ok = event == "tls_reloaded"
        self.metrics.tls_reloads.labels(result="success" if ok else "failure").inc()
        if ok and self.tls is not None:
            self.metrics.tls_expiry.set(self.tls.not_after)
        log.log(logging.INFO if ok else logging.ERROR, event, extra=fields)

    async def readiness(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {"config": {"ok": True}}
        if self.draining:
            checks["shutdown"] = {"ok": False, "detail": "draining after SIGTERM"}
        keys = self.authentication.readiness()
        if keys is not None:
            checks["keys"] = keys
        policy_ok, policy_detail = self.policy.readiness()
        checks["policy"] = {"ok": policy_ok, "detail": policy_detail}
        problem = await self.upstream.probe()
        checks["upstream"] = {"ok": problem is None, **({"detail": problem} if problem else {})}
        if self.tls is not None:
            checks["tls"] = self.tls.readiness()
        checks["store"] = await store_readiness(self.store)
        checks["revocations"] = self.revocations.readiness()
        return checks
