"""Throwaway PKI and a Kubernetes-style Secret volume for the TLS tests.

Everything is generated in memory with `cryptography`; nothing here touches the network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key, PEM-encoded the way cert-manager writes them."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, org: str = "authcar-tests") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )


class CertAuthority:
    """A self-signed CA that issues server and client leaf certificates."""

    def __init__(self, name: str) -> None:
        self.key = new_key("ec")
        now = dt.datetime.now(dt.UTC)
        subject = _name(name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue_server(
        self,
        key_type: KeyType = "rsa",
        hostname: str = "localhost",
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """A server certificate; valid from five minutes ago for seven days unless dates are given
        (an expired or a not-yet-valid one is what a broken renewal can hand over)."""
        sans: list[x509.GeneralName] = [
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        dates = _validity(not_before, not_after)
        return self._issue(hostname, sans, ExtendedKeyUsageOID.SERVER_AUTH, key_type, dates)

    def issue_client(
        self, common_name: str, sans: list[x509.GeneralName], key_type: KeyType = "ec"
    ) -> Issued:
        return self._issue(
            common_name, sans, ExtendedKeyUsageOID.CLIENT_AUTH, key_type, _validity(None, None)
        )

    def _issue(
        self,
        common_name: str,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        key_type: KeyType,
        dates: tuple[dt.datetime, dt.datetime],
    ) -> Issued:
        key = new_key(key_type)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dates[0])
            .not_valid_after(dates[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert=cert, key=key)


def _validity(
    not_before: dt.datetime | None, not_after: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return (
        not_before if not_before is not None else now - dt.timedelta(minutes=5),
        not_after if not_after is not None else now + dt.timedelta(days=7),
    )


def expired(ca: CertAuthority, key_type: KeyType = "rsa") -> Issued:
    """A server certificate whose validity ended an hour ago (it was valid for a day)."""
    now = dt.datetime.now(dt.UTC)
    return ca.issue_server(
        key_type, not_before=now - dt.timedelta(days=1), not_after=now - dt.timedelta(hours=1)
    )


def not_yet_valid(ca: CertAuthority, key_type: KeyType = "rsa") -> Issued:
    """A server certificate that becomes valid tomorrow (an issuer whose clock runs ahead)."""
    now = dt.datetime.now(dt.UTC)
    return ca.issue_server(
        key_type, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=8)
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


class SecretVolume:
    """Reproduces the kubelet AtomicWriter layout of a Secret volume.

    root/
      ..2026_11_22_12_00_00.1/tls.crt   <- real files live in a timestamped directory
      ..data -> ..2026_11_22_12_00_00.1
      tls.crt -> ..data/tls.crt          <- user-visible names are symlinks through ..data

    `publish` writes a new timestamped directory, points `..data_tmp` at it, renames that over
    `..data` (the atomic step) and deletes the previous directory, exactly like kubelet.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._generation = itertools.count(1)

    def path(self, name: str) -> Path:
        return self.root / name

    def publish(self, files: dict[str, bytes]) -> None:
        data_link = self.root / "..data"
        old_dir = self.root / os.readlink(data_link) if data_link.is_symlink() else None
        new_name = f"..2026_11_22_12_00_00.{next(self._generation)}"
        new_dir = self.root / new_name
        new_dir.mkdir()
        for name, content in files.items():
            (new_dir / name).write_bytes(content)
        tmp_link = self.root / "..data_tmp"
        os.symlink(new_name, tmp_link)
        os.rename(tmp_link, data_link)
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                os.symlink(f"..data/{name}", visible)
        if old_dir is not None:
            shutil.rmtree(old_dir)
