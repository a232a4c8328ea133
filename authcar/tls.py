"""TLS termination for the public listener, with certificate hot reload and optional mTLS.

The server is handed one `ssl.SSLContext` (``CertificateStore.context``) for its whole life.
Rotation works by building a complete, validated replacement context off to the side and
switching each new connection onto it from the SNI callback, which OpenSSL runs for every
ClientHello -- including ones without a server_name extension.

Two OpenSSL details shape the design:

* ``SSL_set_SSL_CTX`` (what ``ssl_object.context = ...`` does) swaps the certificate/key and the
  trust store, but the verify mode, options, protocol range and cipher list stay those of the
  context the connection started on. So every context built here gets identical settings and
  the same client-CA bundle; otherwise a rotation could silently turn mTLS off or reject every
  client.
* ``load_cert_chain`` only accepts file paths. We read the files once, validate those exact bytes
  with ``cryptography`` and feed the same bytes to OpenSSL through an anonymous in-memory file,
  so a rotation that lands mid-reload cannot mix an old certificate with a new key.

A replacement is used only if it is complete and valid now: it parses, the key matches the leaf, and
the leaf's notBefore <= now <= notAfter. A renewal that is not yet valid (a clock ahead of ours) is
tried again once its notBefore has passed; an expired one never becomes valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from authcar.background import watch_directories

__all__ = ["CertificateStore", "ClientCertificate", "EventSink", "TLSConfigError", "client_certificate"]

EventSink = Callable[[str, dict[str, object]], None]
Clock = Callable[[], float]  # unix time

# TLS 1.2 suites: forward secrecy + AEAD only. TLS 1.3 suites are all AEAD and configured separately.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN_PROTOCOLS = ("http/1.1",)
# SAN types that carry an identity expressible as a plain string.
_STRING_SAN_TYPES = (x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name, x509.IPAddress)
# The served certificate is reported as overdue for renewal (logged once, and in /readyz) this long
# before it expires, or when a sixth of its lifetime is left if that is shorter: cert-manager renews at
# two thirds of the lifetime and SPIRE at half, so either point means a renewal was missed, without
# warning all the time about certificates that live for hours.
EXPIRY_WARNING_SECONDS = 7 * 86400
EXPIRY_WARNING_FRACTION = 1 / 6

_log = logging.getLogger(__name__)


class TLSConfigError(Exception):
    """The certificate, key or client-CA files cannot be used; the message names the file."""


class CertificateNotYetValid(TLSConfigError):
    """The certificate's notBefore lies ahead: it becomes usable at `valid_from` (unix time)."""

    def __init__(self, message: str, valid_from: float) -> None:
        super().__init__(message)
        self.valid_from = valid_from


@dataclass(frozen=True)
class ClientCertificate:
    subject: str  # RFC 4514, e.g. "CN=svc-a,O=acme"
    common_name: str | None
    sans: tuple[str, ...]  # DNS names, URIs, emails and IPs, in certificate order
    uris: tuple[str, ...]  # the URI names alone (a SPIFFE ID is one), in certificate order
    issuer: str  # RFC 4514
    serial: str  # hex
    not_after: float  # unix time
    fingerprint_sha256: str  # hex
    der: bytes = field(default=b"", repr=False)  # the certificate itself, for AUTHCAR_TLS_FORWARD_CLIENT_CERT


@dataclass(frozen=True)
class _Material:
    """A validated server context plus what we report about its certificate."""

    context: ssl.SSLContext
    subject: str
    serial: str
    not_before: float
    not_after: float
    fingerprint_sha256: str

    def renewal_overdue(self, now: float) -> bool:
        lifetime = self.not_after - self.not_before
        return self.not_after - now < min(EXPIRY_WARNING_SECONDS, lifetime * EXPIRY_WARNING_FRACTION)


@dataclass(frozen=True)
class _Files:
    """The raw bytes of one read of the configured files."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    def digest(self) -> str:
        # Length-prefixed so that moving bytes between files changes the digest.
        h = hashlib.sha256()
        for blob in (self.cert, self.key, self.client_ca):
            h.update(b"-" if blob is None else len(blob).to_bytes(8, "big") + blob)
        return h.hexdigest()


@dataclass(frozen=True)
class _Sources:
    """Where the certificate, key and optional client-CA bundle live."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None

    def read(self) -> _Files:
        ca = self.client_ca_file
        return _Files(
            cert=_read_file(self.cert_file, "certificate"),
            key=_read_file(self.key_file, "private key"),
            client_ca=_read_file(ca, "client CA") if ca is not None else None,
        )

    def watch_dirs(self) -> list[str]:
        # abspath, not resolve(): resolving would follow ..data into a directory that gets deleted.
        files = [self.cert_file, self.key_file, self.client_ca_file]
        return sorted({os.path.dirname(os.path.abspath(f)) for f in files if f is not None})


class CertificateStore:
    """Owns the server TLS context and keeps it in step with the certificate files on disk."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None = None,
        on_event: EventSink | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        """Raises TLSConfigError when the files cannot be used, the certificate's dates included."""
        ca_file = Path(client_ca_file) if client_ca_file is not None else None
        self._sources = _Sources(Path(cert_file), Path(key_file), ca_file)
        self._on_event = on_event or _log_event
        self._clock = clock
        files = self._sources.read()
        self._current = _build_material(self._sources, files, clock())
        self._attempted = files.digest()
        # When the last attempt was refused only for being early: the time to try the same bytes again.
        self._retry_at: float | None = None
        self._last_error: str | None = None
        self._expiry_warned: str | None = None  # fingerprint of the certificate we last warned about
        # The first context is the one the server keeps; it only routes handshakes to the newest.
        self._base = self._current.context
        self._base.sni_callback = self._select_context

    @property
    def context(self) -> ssl.SSLContext:
        return self._base

    @property
    def last_reload_ok(self) -> bool:
        return self._last_error is None

    @property
    def not_after(self) -> float:
        return self._current.not_after

    def readiness(self) -> dict[str, object]:
        """The /readyz check: always ok (a refused renewal leaves the last good certificate serving,
        and a Secret reaches every replica at once), with what an operator should know in `detail`."""
        now = self._clock()
        check: dict[str, object] = {"ok": True, "expires_in_s": int(self._current.not_after - now)}
        notes = []
        if self._last_error is not None:
            notes.append(
                f"the last certificate reload failed ({self._last_error}); serving the previous certificate"
            )
        if now > self._current.not_after:
            notes.append("the served certificate has expired")
        elif self._current.renewal_overdue(now):
            notes.append("the served certificate expires soon and has not been renewed")
        if notes:
            check["detail"] = "; ".join(notes)
        return check

    def reload(self) -> bool:
        """Re-read the files and switch new handshakes to them if they are valid.

        Returns True only when a new context was swapped in. Content identical to the last attempt
        (good or bad) is a no-op without an event, so polling cannot flood the log -- except content
        refused as not yet valid, which is tried again once its notBefore has passed.
        """
        now = self._clock()
        self._warn_if_expiring()
        try:
            files = self._sources.read()
        except TLSConfigError as exc:
            return self._reload_failed(str(exc), attempt=f"read-error:{exc}")
        attempt = files.digest()
        if attempt == self._attempted and (self._retry_at is None or now < self._retry_at):
            return False
        try:
            material = _build_material(self._sources, files, now)
        except CertificateNotYetValid as exc:
            return self._reload_failed(str(exc), attempt=attempt, retry_at=exc.valid_from)
        except Exception as exc:  # whatever goes wrong, the old certificate must keep serving
            message = str(exc) if isinstance(exc, TLSConfigError) else f"{type(exc).__name__}: {exc}"
            return self._reload_failed(message, attempt=attempt)
        self._attempted = attempt
        self._retry_at = None
        self._current = material
        self._last_error = None
        self._emit(
            "tls_reloaded",
            {
                "cert_file": str(self._sources.cert_file),
                "subject": material.subject,
                "serial": material.serial,
                "not_before": material.not_before,
                "not_after": material.not_after,
                "fingerprint_sha256": material.fingerprint_sha256,
            },
        )
        self._warn_if_expiring()
        return True

    async def watch(
        self,
        stop_event: asyncio.Event | None = None,
        *,
        poll_interval: float = 30.0,
        settle_ms: int = 200,
    ) -> None:
        """Reload whenever the directories holding the files change, until stop_event is set.

        The parent directories are watched, not the files: a Kubernetes Secret update swaps the
        ``..data`` symlink, which replaces directory entries and never writes to the old files.
        Every ``poll_interval`` seconds without events we reload anyway (a no-op when nothing
        changed) to cover layouts inotify cannot follow; if watching fails we only poll.
        """

        self._warn_if_expiring()  # here, not in __init__: check-config builds a store but logs nothing

        async def reload() -> None:
            self.reload()

        def watch_failed(exc: Exception) -> None:
            # Logged rather than emitted: on_event carries reload outcomes only (metrics count them).
            _log.warning("cannot watch TLS files (%s); polling every %ss instead", exc, poll_interval)

        await watch_directories(
            self._sources.watch_dirs(),
            reload,
            watch_failed,
            stop=stop_event if stop_event is not None else asyncio.Event(),
            poll_interval=poll_interval,
            settle_ms=settle_ms,
        )

    # -- internals ------------------------------------------------------------------------

    def _select_context(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _base: ssl.SSLContext
    ) -> None:
        # OpenSSL calls this for every ClientHello, with server_name None when the client sent no SNI,
        # so it is the one place every handshake passes before the certificate is chosen.
        current = self._current.context
        if ssl_object.context is not current:
            ssl_object.context = current

    def _reload_failed(self, error: str, attempt: str, retry_at: float | None = None) -> bool:
        self._last_error = error
        self._retry_at = retry_at
        if attempt != self._attempted:
            self._attempted = attempt
            self._emit("tls_reload_failed", {"cert_file": str(self._sources.cert_file), "error": error})
        return False

    def _warn_if_expiring(self) -> None:
        # Once per served certificate; logged rather than emitted (on_event carries reload outcomes,
        # and metrics count those); the expiry itself is the authcar_tls_certificate_expiry gauge.
        current, now = self._current, self._clock()
        if not current.renewal_overdue(now) or self._expiry_warned == current.fingerprint_sha256:
            return
        self._expiry_warned = current.fingerprint_sha256
        fields = {
            "cert_file": str(self._sources.cert_file),
            "serial": current.serial,
            "not_after": current.not_after,
            "expires_in_s": int(current.not_after - now),
        }
        _log.warning("tls_certificate_expiring", extra=fields)

    def _emit(self, event: str, fields: dict[str, object]) -> None:
        # A broken sink must not break reloading (or kill the watcher).
        try:
            self._on_event(event, fields)
        except Exception:
            _log.exception("TLS event sink failed for %s", event)


def client_certificate(ssl_object: ssl.SSLObject | None) -> ClientCertificate | None:
    """Describe the verified client certificate of a connection, or None if there is none.

    Returns None on contexts that do not verify clients: an unverified certificate proves nothing.
    Raises ValueError if a verified certificate cannot be parsed (fail closed rather than anonymous).
    """
    if ssl_object is None or ssl_object.context.verify_mode == ssl.CERT_NONE:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return ClientCertificate(
        subject=cert.subject.rfc4514_string(),
        common_name=_common_name(cert),
        sans=_string_sans(cert),
        uris=_uri_sans(cert),
        issuer=cert.issuer.rfc4514_string(),
        serial=_serial_hex(cert),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        der=der,
    )


# -- building and validating a context ---------------------------------------------------------


def _build_material(sources: _Sources, files: _Files, now: float) -> _Material:
    chain = _parse_certificates(sources.cert_file, files.cert, "certificate")
    leaf = chain[0]
    _check_key_matches(sources.key_file, files.key, sources.cert_file, leaf)
    _check_valid_at(sources.cert_file, leaf, now)
    ca_certs = None
    if sources.client_ca_file is not None and files.client_ca is not None:
        ca_certs = _parse_certificates(sources.client_ca_file, files.client_ca, "client CA")
    return _Material(
        context=_new_server_context(sources, files, ca_certs),
        subject=leaf.subject.rfc4514_string(),
        serial=_serial_hex(leaf),
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
    )


def _check_valid_at(cert_file: Path, leaf: x509.Certificate, now: float) -> None:
    """The leaf's own dates only: clients check those on every handshake. An expired certificate
    further up the chain is left to clients, which may build another path (a cross-signed root)."""
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now > not_after.timestamp():
        raise TLSConfigError(f"certificate in {cert_file} expired at {not_after.isoformat()}")
    if now < not_before.timestamp():
        raise CertificateNotYetValid(
            f"certificate in {cert_file} is not valid before {not_before.isoformat()}",
            valid_from=not_before.timestamp(),
        )


def _new_server_context(
    sources: _Sources, files: _Files, ca_certs: list[x509.Certificate] | None
) -> ssl.SSLContext:
    # Every context gets exactly these settings: connections keep the verify mode, options and
    # protocol range of the base context even after being switched to a newer one.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        with _in_memory_file(files.cert) as cert_path, _in_memory_file(files.key) as key_path:
            ctx.load_cert_chain(cert_path, key_path, password=_refuse_password)
    except ssl.SSLError as exc:
        pair = f"{sources.cert_file} / {sources.key_file}"
        raise TLSConfigError(f"{pair}: OpenSSL rejected the pair: {exc.reason or exc}") from exc
    if ca_certs is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        # Resumed sessions skip client-certificate verification and would outlive a client-CA
        # rotation by up to 2 h, so TLS 1.3 issues no tickets. (TLS 1.2 can still resume from
        # OpenSSL's session cache, which Python gives no way to turn off.)
        ctx.num_tickets = 0
        # DER, not the file's PEM: cadata as str must be pure ASCII, comments included.
        der_bundle = b"".join(c.public_bytes(serialization.Encoding.DER) for c in ca_certs)
        try:
            ctx.load_verify_locations(cadata=der_bundle)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"{sources.client_ca_file}: OpenSSL rejected the client CA bundle: {exc}"
            ) from exc
    return ctx


def _read_file(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise TLSConfigError(f"{what} file {path} is empty")
    return data


def _parse_certificates(path: Path, pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TLSConfigError(f"{what} file {path} does not hold valid PEM certificates: {exc}") from exc
    if not certs:
        raise TLSConfigError(f"{what} file {path} holds no certificate")
    return certs


def _check_key_matches(key_file: Path, key_pem: bytes, cert_file: Path, leaf: x509.Certificate) -> None:
    # Error messages here deliberately never quote the file content or the parser's detail.
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # raised for encrypted keys when no password is given
        raise TLSConfigError(
            f"private key file {key_file} is encrypted; authcar needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"private key file {key_file} does not hold a valid PEM private key") from None
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSConfigError(f"private key file {key_file} does not match the certificate in {cert_file}")


def _spki(public_key: PublicKeyTypes) -> bytes:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return public_key.public_bytes(serialization.Encoding.DER, spki)


def _refuse_password() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TLSConfigError("encrypted private keys are not supported")


@contextlib.contextmanager
def _in_memory_file(data: bytes) -> Iterator[str]:
    """A path whose content is `data`, for APIs that only take paths (key material stays off disk)."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("authcar-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    # Elsewhere (macOS dev machines): a private temporary file, removed right after use.
    fd, path = tempfile.mkstemp(prefix="authcar-tls-")
    try:
        _write_all(fd, data)
        os.close(fd)
        fd = -1
        yield path
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- describing certificates -----------------------------------------------------------------


def _serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _common_name(cert: x509.Certificate) -> str | None:
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attr.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _string_sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(name.value) for name in ext.value if isinstance(name, _STRING_SAN_TYPES))


def _uri_sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def _log_event(event: str, fields: dict[str, object]) -> None:
    level = logging.INFO if event == "tls_reloaded" else logging.WARNING
    _log.log(level, "%s %s", event, fields)
