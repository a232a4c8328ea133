"""TLS termination, hot reload and mTLS, exercised over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import ssl
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from authcar.tls import CertificateStore, ClientCertificate, TLSConfigError, client_certificate
from tests.support.tls_material import CertAuthority, Issued, SecretVolume, expired, not_yet_valid

IO_TIMEOUT = 5.0
SPIFFE_ID = "spiffe://cluster.local/ns/default/sa/client"

Events = list[tuple[str, dict[str, object]]]


# -- PKI and files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: CertAuthority
    other_ca: CertAuthority
    server_rsa: Issued
    server_rsa_2: Issued
    server_rsa_3: Issued
    server_ec: Issued
    client: Issued
    client_of_other_ca: Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, other = CertAuthority("authcar test CA"), CertAuthority("some other CA")
    client_sans: list[x509.GeneralName] = [
        x509.DNSName("client.default.svc"),
        x509.UniformResourceIdentifier(SPIFFE_ID),
        x509.RFC822Name("client@example.com"),
    ]
    return Pki(
        ca=ca,
        other_ca=other,
        server_rsa=ca.issue_server("rsa"),
        server_rsa_2=ca.issue_server("rsa"),
        server_rsa_3=ca.issue_server("rsa"),
        server_ec=ca.issue_server("ec"),
        client=ca.issue_client("client", client_sans),
        client_of_other_ca=other.issue_client("client", client_sans),
    )


def secret(server: Issued, ca: CertAuthority) -> dict[str, bytes]:
    """The keys cert-manager puts in a TLS Secret."""
    return {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.cert_pem}


@pytest.fixture
def volume(tmp_path: Path, pki: Pki) -> SecretVolume:
    vol = SecretVolume(tmp_path / "secret")
    vol.publish(secret(pki.server_rsa, pki.ca))
    return vol


@pytest.fixture
def events() -> Events:
    return []


def make_store(volume: SecretVolume, events: Events, *, mtls: bool = False) -> CertificateStore:
    return CertificateStore(
        volume.path("tls.crt"),
        volume.path("tls.key"),
        client_ca_file=volume.path("ca.crt") if mtls else None,
        on_event=lambda name, fields: events.append((name, fields)),
    )


# -- server side -----------------------------------------------------------------------------


@dataclass
class Listener:
    port: int = 0
    # One entry per connection whose handshake completed: the client identity the handler saw.
    peers: list[ClientCertificate | None] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serving(context: ssl.SSLContext) -> AsyncIterator[Listener]:
    listener = Listener()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.peers.append(client_certificate(writer.get_extra_info("ssl_object")))
        writer.write(b"ok")
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context, ssl_handshake_timeout=IO_TIMEOUT)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


# -- client side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    serial: int
    body: bytes
    version: str | None
    alpn: str | None


ClientFactory = Callable[..., ssl.SSLContext]


@pytest.fixture
def client_ctx(tmp_path: Path, pki: Pki) -> ClientFactory:
    """Build client contexts that trust the test CA, optionally presenting a client certificate."""

    def build(
        cert: Issued | None = None,
        *,
        version: ssl.TLSVersion | None = None,
        check_hostname: bool = True,
    ) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
        ctx.check_hostname = check_hostname
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        if cert is not None:
            cert_path = tmp_path / f"client-{cert.serial:x}.crt"
            key_path = tmp_path / f"client-{cert.serial:x}.key"
            cert_path.write_bytes(cert.cert_pem)
            key_path.write_bytes(cert.key_pem)
            ctx.load_cert_chain(cert_path, key_path)
        return ctx

    return build


async def fetch(port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> Served:
    """One connection: which certificate the server presented and what it said."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname), IO_TIMEOUT
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        body = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
        return Served(
            serial=x509.load_der_x509_certificate(der).serial_number,
            body=body,
            version=ssl_object.version(),
            alpn=ssl_object.selected_alpn_protocol(),
        )
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def served_serial(listener: Listener, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> int:
    served = await fetch(listener.port, ctx, server_hostname)
    assert served.body == b"ok"
    return served.serial


async def assert_refused(listener: Listener, ctx: ssl.SSLContext) -> None:
    """The server must abort the handshake: the handler never runs and the client never sees b"ok".

    With TLS 1.2 the client's handshake fails; with TLS 1.3 the client finishes first and only
    learns of the rejection (alert or EOF) when it reads.
    """
    handled_before = len(listener.peers)
    try:
        served = await fetch(listener.port, ctx)
    except (ssl.SSLError, ConnectionError):
        pass
    else:
        assert served.body == b"", "server accepted a connection it should have refused"
    assert len(listener.peers) == handled_before


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def legacy_tls_versions() -> Iterator[None]:
    # Touching TLSVersion.TLSv1/TLSv1_1 raises DeprecationWarning; here that is the point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# -- 1. initial certificate and protocol policy ---------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
async def test_serves_initial_certificate(
    tmp_path: Path,
    pki: Pki,
    client_ctx: ClientFactory,
    events: Events,
    key_type: str,
    version: ssl.TLSVersion,
) -> None:
    server = pki.server_rsa if key_type == "rsa" else pki.server_ec
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(secret(server, pki.ca))
    store = make_store(volume, events)

    async with serving(store.context) as listener:
        served = await fetch(listener.port, client_ctx(version=version))

    assert served.serial == server.serial
    assert served.body == b"ok"
    assert served.version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert served.alpn == "http/1.1"  # the client offered h2 first; we only speak HTTP/1.1
    assert store.last_reload_ok
    assert store.not_after == server.cert.not_valid_after_utc.timestamp()
    assert events == []


def test_context_policy(volume: SecretVolume, events: Events) -> None:
    ctx = make_store(volume, events).context
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]


async def test_tls11_client_is_refused(
    volume: SecretVolume, events: Events, client_ctx: ClientFactory
) -> None:
    with legacy_tls_versions():
        old_client = client_ctx(check_hostname=False)
        old_client.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client itself offer TLS 1.1
        old_client.minimum_version = ssl.TLSVersion.TLSv1
        old_client.maximum_version = ssl.TLSVersion.TLSv1_1
        permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.load_cert_chain(volume.path("tls.crt"), volume.path("tls.key"))

    # Control: prove this client really speaks TLS 1.1, so the refusal below is the server's doing.
    async with serving(permissive) as listener:
        try:
            control = await fetch(listener.port, old_client)
        except (ssl.SSLError, ConnectionError) as exc:
            pytest.skip(f"this OpenSSL build cannot negotiate TLS 1.1 at all: {exc}")
    assert control.version == "TLSv1.1"

    async with serving(make_store(volume, events).context) as listener:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await fetch(listener.port, old_client)
        assert listener.peers == []


# -- 2. rotation through the Kubernetes ..data symlink swap ---------------------------------------


async def test_reload_after_symlink_swap(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory
) -> None:
    store = make_store(volume, events)
    context = store.context
    client = client_ctx()

    async with serving(store.context) as listener:
        assert await served_serial(listener, client) == pki.server_rsa.serial
        volume.publish(secret(pki.server_rsa_2, pki.ca))
        assert store.reload() is True
        assert await served_serial(listener, client) == pki.server_rsa_2.serial

    assert store.context is context  # the server's context object never changes
    assert store.last_reload_ok
    assert store.not_after == pki.server_rsa_2.cert.not_valid_after_utc.timestamp()
    assert [name for name, _ in events] == ["tls_reloaded"]
    fields = events[0][1]
    assert fields["serial"] == f"{pki.server_rsa_2.serial:x}"
    assert fields["subject"] == pki.server_rsa_2.cert.subject.rfc4514_string()
    assert fields["not_after"] == store.not_after

    # Same bytes again (kubelet also re-publishes unchanged content): no-op, no event.
    volume.publish(secret(pki.server_rsa_2, pki.ca))
    assert store.reload() is False
    assert len(events) == 1


async def test_watch_serves_rotated_certificate_without_explicit_reload(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory
) -> None:
    store = make_store(volume, events)
    client = client_ctx()
    stop = asyncio.Event()
    # A long poll interval, so only a filesystem event can explain a reload within the test.
    watcher = asyncio.create_task(store.watch(stop, poll_interval=60))
    await asyncio.sleep(0.3)  # let the watcher register its inotify watches

    def now_serving(serial: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await served_serial(listener, client) == serial

        return check

    try:
        async with serving(store.context) as listener:
            assert await served_serial(listener, client) == pki.server_rsa.serial
            volume.publish(secret(pki.server_rsa_2, pki.ca))
            await eventually(now_serving(pki.server_rsa_2.serial))
            volume.publish(secret(pki.server_rsa_3, pki.ca))
            await eventually(now_serving(pki.server_rsa_3.serial))
    finally:
        stop.set()
        await asyncio.wait_for(watcher, IO_TIMEOUT)

    assert [name for name, _ in events] == ["tls_reloaded", "tls_reloaded"]
    assert store.last_reload_ok


async def test_watch_stops_promptly_when_cancelled(volume: SecretVolume, events: Events) -> None:
    # The core runs watch() as a task without a stop event and cancels it on shutdown.
    store = make_store(volume, events)
    watcher = asyncio.create_task(store.watch())
    await asyncio.sleep(0.3)
    watcher.cancel()
    # Promptly: well within IO_TIMEOUT, where waiting out the 30 s poll would not be (a bound on the
    # outcome, not a measurement of this machine's speed).
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(watcher, IO_TIMEOUT)


async def test_watch_falls_back_to_polling(
    tmp_path: Path,
    volume: SecretVolume,
    pki: Pki,
    events: Events,
    client_ctx: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store(volume, events)
    # Move the directory away so it cannot be watched, then bring it back with new content.
    parked = tmp_path / "parked"
    os.rename(volume.root, parked)
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="authcar.tls"):
        watcher = asyncio.create_task(store.watch(stop, poll_interval=0.2))
        try:
            async with serving(store.context) as listener:

                async def degraded() -> bool:
                    return any("polling every" in r.getMessage() for r in caplog.records)

                await eventually(degraded)
                os.rename(parked, volume.root)
                volume.publish(secret(pki.server_rsa_2, pki.ca))
                client = client_ctx()

                async def rotated() -> bool:
                    return await served_serial(listener, client) == pki.server_rsa_2.serial

                await eventually(rotated)
        finally:
            stop.set()
            await asyncio.wait_for(watcher, IO_TIMEOUT)
    assert store.last_reload_ok
    # A poll may or may not have caught the files missing; either way it ends with the new cert.
    assert events[-1][0] == "tls_reloaded"


# -- 3. broken rotations --------------------------------------------------------------------------


def _garbage(pki: Pki) -> dict[str, bytes]:
    return {**secret(pki.server_rsa_2, pki.ca), "tls.crt": b"-----BEGIN CERTIFICATE-----\nnot base64!\n"}


def _mismatched(pki: Pki) -> dict[str, bytes]:
    return {**secret(pki.server_rsa_2, pki.ca), "tls.key": pki.server_rsa_3.key_pem}


def _truncated(pki: Pki) -> dict[str, bytes]:
    cert = pki.server_rsa_2.cert_pem
    return {**secret(pki.server_rsa_2, pki.ca), "tls.crt": cert[: len(cert) // 2]}


@pytest.mark.parametrize(
    "broken", [_garbage, _mismatched, _truncated], ids=["garbage", "mismatch", "truncated"]
)
async def test_broken_rotation_keeps_serving_old_certificate(
    volume: SecretVolume,
    pki: Pki,
    events: Events,
    client_ctx: ClientFactory,
    broken: Callable[[Pki], dict[str, bytes]],
) -> None:
    store = make_store(volume, events)
    client = client_ctx()

    async with serving(store.context) as listener:
        volume.publish(broken(pki))
        assert store.reload() is False
        assert store.last_reload_ok is False
        assert await served_serial(listener, client) == pki.server_rsa.serial
        assert store.not_after == pki.server_rsa.cert.not_valid_after_utc.timestamp()

        assert [name for name, _ in events] == ["tls_reload_failed"]
        error = str(events[0][1]["error"])
        assert "tls.crt" in error or "tls.key" in error
        assert "BEGIN" not in error  # never echo file content

        # Retrying the same broken content stays quiet (the watcher's poll would otherwise spam).
        assert store.reload() is False
        assert len(events) == 1

        volume.publish(secret(pki.server_rsa_3, pki.ca))
        assert store.reload() is True
        assert store.last_reload_ok is True
        assert await served_serial(listener, client) == pki.server_rsa_3.serial
    assert [name for name, _ in events] == ["tls_reload_failed", "tls_reloaded"]


async def test_failing_event_sink_does_not_break_reload(
    volume: SecretVolume, pki: Pki, client_ctx: ClientFactory
) -> None:
    def sink(name: str, fields: dict[str, object]) -> None:
        raise RuntimeError("log pipeline down")

    store = CertificateStore(volume.path("tls.crt"), volume.path("tls.key"), on_event=sink)
    volume.publish(secret(pki.server_rsa_2, pki.ca))
    assert store.reload() is True
    async with serving(store.context) as listener:
        assert await served_serial(listener, client_ctx()) == pki.server_rsa_2.serial


# -- 3b. renewals outside their validity dates ------------------------------------------------------


class Clock:
    """The store's clock, moved by hand: certificate dates are compared with it, not with the machine's."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def dated_store(volume: SecretVolume, events: Events, clock: Clock) -> CertificateStore:
    return CertificateStore(
        volume.path("tls.crt"),
        volume.path("tls.key"),
        on_event=lambda name, fields: events.append((name, fields)),
        clock=clock,
    )


@pytest.mark.parametrize(
    ("renewal", "reason"),
    [(expired, "expired at"), (not_yet_valid, "is not valid before")],
    ids=["expired", "not-yet-valid"],
)
async def test_renewal_outside_its_dates_keeps_serving_old_certificate(
    volume: SecretVolume,
    pki: Pki,
    events: Events,
    client_ctx: ClientFactory,
    renewal: Callable[[CertAuthority], Issued],
    reason: str,
) -> None:
    store = make_store(volume, events)
    client = client_ctx()
    # Signed by the trusted CA, key matching, well-formed: only its dates are wrong.
    volume.publish(secret(renewal(pki.ca), pki.ca))

    async with serving(store.context) as listener:
        assert store.reload() is False
        assert await served_serial(listener, client) == pki.server_rsa.serial
        assert store.last_reload_ok is False
        assert store.not_after == pki.server_rsa.cert.not_valid_after_utc.timestamp()
        assert [name for name, _ in events] == ["tls_reload_failed"]
        error = str(events[0][1]["error"])
        assert reason in error
        assert "tls.crt" in error
        check = store.readiness()
        assert check["ok"] is True
        assert "last certificate reload failed" in str(check["detail"])
        assert reason in str(check["detail"])  # the operator sees why, not only that

        volume.publish(secret(pki.server_rsa_2, pki.ca))
        assert store.reload() is True
        assert await served_serial(listener, client) == pki.server_rsa_2.serial
    assert store.last_reload_ok is True
    assert "detail" not in store.readiness()


def test_validity_bounds_are_inclusive(volume: SecretVolume, pki: Pki, events: Events) -> None:
    clock = Clock()
    store = dated_store(volume, events, clock)

    volume.publish(secret(pki.server_rsa_2, pki.ca))
    clock.now = pki.server_rsa_2.cert.not_valid_after_utc.timestamp() + 1
    assert store.reload() is False  # one second past notAfter

    volume.publish(secret(pki.server_rsa_3, pki.ca))
    not_before = pki.server_rsa_3.cert.not_valid_before_utc.timestamp()
    clock.now = not_before - 1
    assert store.reload() is False  # one second before notBefore
    clock.now = not_before
    assert store.reload() is True  # notBefore itself is valid

    volume.publish(secret(pki.server_ec, pki.ca))
    clock.now = pki.server_ec.cert.not_valid_after_utc.timestamp()
    assert store.reload() is True  # and so is notAfter
    assert [name for name, _ in events] == [
        "tls_reload_failed",
        "tls_reload_failed",
        "tls_reloaded",
        "tls_reloaded",
    ]


def test_early_renewal_is_served_once_its_time_comes(volume: SecretVolume, pki: Pki, events: Events) -> None:
    clock = Clock()
    store = dated_store(volume, events, clock)
    early = not_yet_valid(pki.ca)
    volume.publish(secret(early, pki.ca))
    assert store.reload() is False
    clock.now += 3600
    assert store.reload() is False  # still early: tried again, quietly
    assert [name for name, _ in events] == ["tls_reload_failed"]

    clock.now = early.cert.not_valid_before_utc.timestamp()
    assert store.reload() is True  # the same files, now valid: no new event needed to notice
    assert store.last_reload_ok is True
    assert store.not_after == early.cert.not_valid_after_utc.timestamp()
    assert [name for name, _ in events] == ["tls_reload_failed", "tls_reloaded"]
    assert events[-1][1]["serial"] == f"{early.serial:x}"


def test_expired_renewal_is_not_retried(volume: SecretVolume, pki: Pki, events: Events) -> None:
    clock = Clock()
    store = dated_store(volume, events, clock)
    volume.publish(secret(expired(pki.ca), pki.ca))
    for _ in range(3):
        assert store.reload() is False
        clock.now += 86400
    assert [name for name, _ in events] == ["tls_reload_failed"]


@pytest.mark.parametrize(
    ("material", "reason"),
    [(expired, "expired at"), (not_yet_valid, "is not valid before")],
    ids=["expired", "not-yet-valid"],
)
def test_startup_refuses_a_certificate_outside_its_dates(
    tmp_path: Path, pki: Pki, material: Callable[[CertAuthority], Issued], reason: str
) -> None:
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(secret(material(pki.ca), pki.ca))
    with pytest.raises(TLSConfigError, match=rf"certificate in .*tls\.crt {reason}"):
        CertificateStore(volume.path("tls.crt"), volume.path("tls.key"))


def test_served_certificate_close_to_expiry_is_reported_once(
    volume: SecretVolume, pki: Pki, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = dated_store(volume, events, clock)
    not_after = pki.server_rsa.cert.not_valid_after_utc.timestamp()
    assert "detail" not in store.readiness()

    clock.now = not_after - 86400  # a day left of a week: a sixth of its life, renewal overdue
    with caplog.at_level(logging.WARNING, logger="authcar.tls"):
        for _ in range(3):  # the watcher's poll calls reload() every 30 s
            assert store.reload() is False
    warnings_logged = [r for r in caplog.records if r.getMessage() == "tls_certificate_expiring"]
    assert len(warnings_logged) == 1
    assert warnings_logged[0].__dict__["serial"] == f"{pki.server_rsa.serial:x}"
    assert warnings_logged[0].__dict__["expires_in_s"] == 86400
    assert "expires soon" in str(store.readiness()["detail"])
    assert store.readiness()["expires_in_s"] == 86400

    clock.now = not_after + 1  # nothing renewed it
    assert "has expired" in str(store.readiness()["detail"])
    assert events == []  # no reload happened, so no reload outcome to count


def test_short_lived_certificates_are_not_reported_as_expiring(
    tmp_path: Path, pki: Pki, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    # A 24-hour certificate (SPIFFE, cert-manager for internal names) always has under 7 days left.
    now = dt.datetime.now(dt.UTC)
    daily = pki.ca.issue_server(
        not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(hours=23)
    )
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(secret(daily, pki.ca))
    clock = Clock()
    with caplog.at_level(logging.WARNING, logger="authcar.tls"):
        store = dated_store(volume, events, clock)
        assert "detail" not in store.readiness()
        clock.now = daily.cert.not_valid_after_utc.timestamp() - 3600  # a sixth of its life left: overdue
        store.reload()
        assert "expires soon" in str(store.readiness()["detail"])
    assert [r.getMessage() for r in caplog.records] == ["tls_certificate_expiring"]


async def test_watching_starts_with_a_word_about_an_overdue_renewal(
    volume: SecretVolume, pki: Pki, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    with caplog.at_level(logging.WARNING, logger="authcar.tls"):
        store = dated_store(volume, events, clock)  # building one (check-config does) says nothing
        assert caplog.records == []
        clock.now = pki.server_rsa.cert.not_valid_after_utc.timestamp() - 3600
        stop = asyncio.Event()
        watcher = asyncio.create_task(store.watch(stop, poll_interval=60))

        async def warned() -> bool:
            return any(r.getMessage() == "tls_certificate_expiring" for r in caplog.records)

        try:
            await eventually(warned)
        finally:
            stop.set()
            await asyncio.wait_for(watcher, IO_TIMEOUT)


# -- 4. no SNI ------------------------------------------------------------------------------------


async def test_rotation_applies_to_clients_without_sni(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory
) -> None:
    store = make_store(volume, events)
    # Record what the SNI callback is called with, still delegating to the store's own callback.
    seen_names: list[str | None] = []
    select = store.context.sni_callback
    assert select is not None

    def recording(ssl_object: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> int | None:
        seen_names.append(name)
        # typeshed says server_name is str; without SNI it is None, which is what this test is about.
        return select(ssl_object, name, ctx)  # type: ignore[arg-type]

    store.context.sni_callback = recording
    no_sni_client = client_ctx(check_hostname=False)

    volume.publish(secret(pki.server_rsa_2, pki.ca))
    assert store.reload() is True
    async with serving(store.context) as listener:
        # server_hostname="" makes asyncio send no server_name extension at all.
        assert await served_serial(listener, no_sni_client, server_hostname="") == pki.server_rsa_2.serial
        assert await served_serial(listener, client_ctx()) == pki.server_rsa_2.serial
    assert seen_names == [None, "localhost"]


# -- 5. mTLS --------------------------------------------------------------------------------------


async def test_mtls_verifies_clients_and_exposes_identity(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory
) -> None:
    store = make_store(volume, events, mtls=True)
    assert store.context.verify_mode == ssl.CERT_REQUIRED

    async with serving(store.context) as listener:
        await assert_refused(listener, client_ctx())
        await assert_refused(listener, client_ctx(pki.client_of_other_ca))
        assert await served_serial(listener, client_ctx(pki.client)) == pki.server_rsa.serial

    assert len(listener.peers) == 1
    peer = listener.peers[0]
    assert peer is not None
    assert peer.subject == "O=authcar-tests,CN=client"
    assert peer.common_name == "client"
    assert peer.sans == ("client.default.svc", SPIFFE_ID, "client@example.com")
    assert peer.issuer == "O=authcar-tests,CN=authcar test CA"
    assert peer.serial == f"{pki.client.serial:x}"
    assert peer.not_after == pki.client.cert.not_valid_after_utc.timestamp()
    assert peer.fingerprint_sha256 == pki.client.cert.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
async def test_mtls_still_enforced_after_rotation(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory, version: ssl.TLSVersion
) -> None:
    store = make_store(volume, events, mtls=True)
    volume.publish(secret(pki.server_rsa_2, pki.ca))
    assert store.reload() is True

    async with serving(store.context) as listener:
        # The rotated context is what these handshakes run on (the served serial proves it) ...
        assert (
            await served_serial(listener, client_ctx(pki.client, version=version)) == pki.server_rsa_2.serial
        )
        # ... and it neither dropped the requirement nor lost the trusted CA.
        await assert_refused(listener, client_ctx(version=version))
        await assert_refused(listener, client_ctx(pki.client_of_other_ca, version=version))
    assert [peer.common_name if peer else None for peer in listener.peers] == ["client"]


async def test_client_ca_rotation_takes_effect(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory
) -> None:
    store = make_store(volume, events, mtls=True)
    # The Secret now trusts only the other CA for clients (same server certificate).
    volume.publish({**secret(pki.server_rsa, pki.ca), "ca.crt": pki.other_ca.cert_pem})
    assert store.reload() is True

    async with serving(store.context) as listener:
        await assert_refused(listener, client_ctx(pki.client))
        assert await served_serial(listener, client_ctx(pki.client_of_other_ca)) == pki.server_rsa.serial


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(
            ssl.TLSVersion.TLSv1_2,
            marks=pytest.mark.xfail(
                strict=True, reason="Python exposes no switch for OpenSSL's server session-ID cache"
            ),
        ),
        ssl.TLSVersion.TLSv1_3,
    ],
    ids=["tls12", "tls13"],
)
async def test_mtls_sessions_are_never_resumed(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory, version: ssl.TLSVersion
) -> None:
    # A resumed session is not re-verified, so it would survive a client-CA rotation.
    store = make_store(volume, events, mtls=True)
    client = client_ctx(pki.client, version=version)

    async with serving(store.context) as listener:

        def connect_twice() -> bool:
            first = blocking_connect(listener.port, client)
            assert first is not None
            return blocking_connect(listener.port, client, session=first) is None

        # Sync sockets: asyncio cannot offer a saved session. A thread keeps the server loop running.
        assert await asyncio.to_thread(connect_twice) is False
    assert len(listener.peers) == 2


def blocking_connect(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLSession | None:
    """Connect, read the reply; return the session to resume next time, or None if this one was resumed."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        assert tls.recv(16) == b"ok"  # reading also processes TLS 1.3 session tickets
        return None if tls.session_reused else tls.session


async def test_no_client_identity_without_mtls(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory
) -> None:
    store = make_store(volume, events)
    async with serving(store.context) as listener:
        # The client offers a certificate, but nobody asked for or verified it.
        await served_serial(listener, client_ctx(pki.client))
    assert listener.peers == [None]
    assert client_certificate(None) is None


# -- 6. initial load errors -----------------------------------------------------------------------


def test_missing_certificate_file(tmp_path: Path, volume: SecretVolume) -> None:
    missing = tmp_path / "nowhere" / "tls.crt"
    with pytest.raises(TLSConfigError, match=r"nowhere/tls\.crt"):
        CertificateStore(missing, volume.path("tls.key"))


def test_missing_key_file(tmp_path: Path, volume: SecretVolume) -> None:
    with pytest.raises(TLSConfigError, match=r"missing\.key"):
        CertificateStore(volume.path("tls.crt"), tmp_path / "missing.key")


def test_missing_client_ca_file(tmp_path: Path, volume: SecretVolume) -> None:
    with pytest.raises(TLSConfigError, match=r"client CA.*absent-ca\.crt"):
        CertificateStore(
            volume.path("tls.crt"), volume.path("tls.key"), client_ca_file=tmp_path / "absent-ca.crt"
        )


def test_mismatched_key(tmp_path: Path, pki: Pki) -> None:
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(_mismatched(pki))
    with pytest.raises(TLSConfigError, match=r"tls\.key does not match the certificate in .*tls\.crt"):
        CertificateStore(volume.path("tls.crt"), volume.path("tls.key"))


def test_garbage_certificate(tmp_path: Path, pki: Pki) -> None:
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(_garbage(pki))
    with pytest.raises(TLSConfigError, match=r"tls\.crt"):
        CertificateStore(volume.path("tls.crt"), volume.path("tls.key"))


def test_encrypted_key_is_rejected_without_prompting(tmp_path: Path, pki: Pki) -> None:
    encrypted = pki.server_rsa.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hunter2"),
    )
    volume = SecretVolume(tmp_path / "secret")
    volume.publish({**secret(pki.server_rsa, pki.ca), "tls.key": encrypted})
    with pytest.raises(TLSConfigError, match=r"tls\.key is encrypted"):
        CertificateStore(volume.path("tls.crt"), volume.path("tls.key"))


def test_loads_without_memfd(
    tmp_path: Path, volume: SecretVolume, pki: Pki, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Non-Linux hosts have no memfd_create: the key goes through a private temp file, removed after use.
    monkeypatch.delattr(os, "memfd_create")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    store = make_store(volume, events, mtls=True)
    volume.publish(secret(pki.server_ec, pki.ca))
    assert store.reload() is True
    assert list(scratch.iterdir()) == []


# -- the production event loop ----------------------------------------------------------------------


def test_rotation_and_mtls_under_uvloop(
    volume: SecretVolume, pki: Pki, events: Events, client_ctx: ClientFactory
) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        store = make_store(volume, events, mtls=True)
        async with serving(store.context) as listener:
            good = client_ctx(pki.client)
            assert await served_serial(listener, good) == pki.server_rsa.serial
            volume.publish(secret(pki.server_rsa_2, pki.ca))
            assert store.reload() is True
            no_sni = client_ctx(pki.client, check_hostname=False)
            assert await served_serial(listener, no_sni, server_hostname="") == pki.server_rsa_2.serial
            await assert_refused(listener, client_ctx())
        peer = listener.peers[-1]
        assert peer is not None
        assert SPIFFE_ID in peer.sans

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
