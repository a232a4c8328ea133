"""TLS on the public listener of the running sidecar: rotation on disk, mTLS, and SIGHUP-free reload."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.process import ALLOW_ALL_POLICY
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.tls_material import CertAuthority, Issued, SecretVolume, expired, not_yet_valid
from tests.support.upstream_app import RunningUpstream


def publish(volume: SecretVolume, server: Issued, ca: CertAuthority | None = None) -> None:
    files = {"tls.crt": server.cert_pem, "tls.key": server.key_pem}
    if ca is not None:
        files["ca.crt"] = ca.cert_pem
    volume.publish(files)


def tls_sidecar(
    upstream: RunningUpstream, volume: SecretVolume, **overrides: Any
) -> AbstractAsyncContextManager[RunningSidecar]:
    """The sidecar serving HTTPS with the volume's tls.crt and tls.key."""
    files = {"tls_cert_file": volume.path("tls.crt"), "tls_key_file": volume.path("tls.key")}
    return start_sidecar(upstream.url, **files, **overrides)


def served_certificate(port: int, ca: CertAuthority) -> x509.Certificate:
    """The certificate a verifying client is handed (the handshake itself proves it is valid now)."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def served_serial(port: int, ca: CertAuthority) -> int:
    return served_certificate(port, ca).serial_number


def client_context(
    ca: CertAuthority, client: Issued | None = None, tmp: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if client is not None and tmp is not None:
        cert, key = tmp / "client.crt", tmp / "client.key"
        cert.write_bytes(client.cert_pem)
        key.write_bytes(client.key_pem)
        context.load_cert_chain(cert, key)
    return context


async def test_https_is_served_and_a_rotated_certificate_is_picked_up(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    ca = CertAuthority("test-ca")
    volume = SecretVolume(tmp_path / "tls")
    first = ca.issue_server("rsa")
    publish(volume, first)
    async with tls_sidecar(upstream, volume) as sidecar:
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            response = await client.get(f"https://localhost:{sidecar.port}/secure")
        assert response.status_code == 200
        assert ["x-forwarded-proto", "https"] in response.json()["headers"]
        assert await asyncio.to_thread(served_serial, sidecar.port, ca) == first.serial

        # cert-manager renews: kubelet swaps the ..data symlink; no signal, no restart.
        second = ca.issue_server("ec")
        publish(volume, second)
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(served_serial, sidecar.port, ca) != second.serial:
            assert time.monotonic() < deadline, "the rotated certificate was not picked up"
            await asyncio.sleep(0.1)

        # A broken renewal keeps the last good certificate, and says so.
        volume.publish({"tls.crt": b"-----BEGIN CERTIFICATE-----\nbroken\n", "tls.key": second.key_pem})
        await asyncio.sleep(1.5)
        assert await asyncio.to_thread(served_serial, sidecar.port, ca) == second.serial
        async with httpx.AsyncClient() as admin:
            metrics = (await admin.get(sidecar.admin_url + "/metrics")).text
            ready = (await admin.get(sidecar.admin_url + "/readyz")).json()
        assert 'authcar_tls_reloads_total{result="failure"} 1.0' in metrics
        assert 'authcar_tls_reloads_total{result="success"} 1.0' in metrics
        assert "last certificate reload failed" in ready["checks"]["tls"]["detail"]
        assert ready["checks"]["tls"]["ok"] is True  # still serving: no reason to drop the pod


async def test_plain_http_and_old_tls_are_refused_on_a_tls_listener(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    ca = CertAuthority("test-ca")
    volume = SecretVolume(tmp_path / "tls")
    publish(volume, ca.issue_server())
    async with tls_sidecar(upstream, volume) as sidecar:
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{sidecar.port}/")
        old = client_context(ca)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point: an outdated client
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.minimum_version = ssl.TLSVersion.TLSv1
        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.open_connection("127.0.0.1", sidecar.port, ssl=old, server_hostname="localhost")
    assert upstream.seen == []


async def test_mutual_tls_requires_a_client_certificate_and_logs_its_subject(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    ca = CertAuthority("test-ca")
    other_ca = CertAuthority("other-ca")
    volume = SecretVolume(tmp_path / "tls")
    publish(volume, ca.issue_server(), ca)
    client_cert = ca.issue_client(
        "billing", [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/billing")]
    )
    stranger = other_ca.issue_client("stranger", [x509.DNSName("stranger.example")])
    stream = io.StringIO()
    async with tls_sidecar(
        upstream, volume, tls_client_ca_file=volume.path("ca.crt"), access_log=True
    ) as sidecar:
        sidecar.service.sidecar.access_log.stream = stream
        url = f"https://localhost:{sidecar.port}/mtls"
        async with httpx.AsyncClient(verify=client_context(ca)) as anonymous:
            with pytest.raises(httpx.HTTPError):
                await anonymous.get(url)
        async with httpx.AsyncClient(verify=client_context(ca, stranger, tmp_path)) as wrong:
            with pytest.raises(httpx.HTTPError):
                await wrong.get(url)
        assert upstream.seen == []
        async with httpx.AsyncClient(verify=client_context(ca, client_cert, tmp_path)) as known:
            response = await known.get(url)
        assert response.status_code == 200
        sidecar.service.sidecar.access_log.flush()
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["client_cert"] == "O=authcar-tests,CN=billing"  # RFC 4514 lists the last RDN first
    assert [s.raw_path for s in upstream.seen] == ["/mtls"]


async def tls_state(sidecar: RunningSidecar) -> tuple[dict[str, float], dict[str, Any]]:
    """(authcar_tls_reloads_total by result, the /readyz tls check) as the admin listener reports them."""
    async with httpx.AsyncClient() as admin:
        metrics = (await admin.get(sidecar.admin_url + "/metrics")).text
        ready = await admin.get(sidecar.admin_url + "/readyz")
    assert ready.status_code == 200, ready.text
    reloads = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^authcar_tls_reloads_total\{result="(\w+)"\} (\S+)$', metrics, re.MULTILINE)
    }
    return reloads, ready.json()["checks"]["tls"]


async def test_a_renewal_outside_its_dates_never_replaces_the_served_certificate(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    ca = CertAuthority("test-ca")
    volume = SecretVolume(tmp_path / "tls")
    good = ca.issue_server("rsa")
    publish(volume, good)
    async with tls_sidecar(upstream, volume) as sidecar:
        renewals = ((expired(ca), "expired at"), (not_yet_valid(ca), "is not valid before"))
        for refused, (renewal, reason) in enumerate(renewals, start=1):
            # Well-formed, signed by the trusted CA, key matching: only the dates are wrong.
            publish(volume, renewal)
            deadline = time.monotonic() + 20
            while (await tls_state(sidecar))[0].get("failure", 0) < refused:
                assert time.monotonic() < deadline, "the renewal was neither refused nor counted"
                await asyncio.sleep(0.1)

            served = await asyncio.to_thread(served_certificate, sidecar.port, ca)
            assert served.serial_number == good.serial
            assert served.not_valid_before_utc <= dt.datetime.now(dt.UTC) <= served.not_valid_after_utc
            async with httpx.AsyncClient(verify=client_context(ca)) as client:
                assert (await client.get(f"https://localhost:{sidecar.port}/still")).status_code == 200
            reloads, check = await tls_state(sidecar)
            assert reloads == {"failure": refused}  # and no success
            assert check["ok"] is True  # serving the good certificate: no reason to drop the pod
            assert "last certificate reload failed" in check["detail"]
            assert reason in check["detail"]
            assert check["expires_in_s"] > 6 * 86400  # the good one's expiry, not the renewal's

        # A good renewal recovers without a restart.
        renewed = ca.issue_server("ec")
        publish(volume, renewed)
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(served_certificate, sidecar.port, ca)).serial_number != renewed.serial:
            assert time.monotonic() < deadline, "the good renewal was not picked up"
            await asyncio.sleep(0.1)
        reloads, check = await tls_state(sidecar)
        assert reloads == {"failure": 2, "success": 1}
        assert check == {"ok": True, "expires_in_s": check["expires_in_s"]}  # no detail left
    assert [s.raw_path for s in upstream.seen] == ["/still", "/still"]


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(
    ("material", "reason"),
    [(expired, "expired at"), (not_yet_valid, "is not valid before")],
    ids=["expired", "not-yet-valid"],
)
def test_starting_with_a_certificate_outside_its_dates_is_a_config_problem(
    tmp_path: Path, command: str, material: Callable[[CertAuthority], Issued], reason: str
) -> None:
    ca = CertAuthority("test-ca")
    volume = SecretVolume(tmp_path / "tls")
    publish(volume, material(ca))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AUTHCAR_HOST": "127.0.0.1",
        "AUTHCAR_PORT": "0",
        "AUTHCAR_ADMIN_PORT": "0",
        "AUTHCAR_POLICY_DIR": str(ALLOW_ALL_POLICY),
        "AUTHCAR_TLS_CERT_FILE": str(volume.path("tls.crt")),
        "AUTHCAR_TLS_KEY_FILE": str(volume.path("tls.key")),
    }
    result = subprocess.run(
        [sys.executable, "-m", "authcar", command],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "1 problem(s)" in result.stderr
    assert re.search(rf"TLS: certificate in \S*tls\.crt {reason}", result.stderr), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "listening" not in result.stderr


@pytest.mark.parametrize("forward", [False, True])
async def test_only_the_verified_client_certificate_reaches_the_application(
    upstream: RunningUpstream, tmp_path: Path, forward: bool
) -> None:
    """A client's own certificate headers are removed; with forwarding on, the sidecar sets Client-Cert."""
    ca = CertAuthority("test-ca")
    volume = SecretVolume(tmp_path / "tls")
    publish(volume, ca.issue_server(), ca)
    client_cert = ca.issue_client("billing", [x509.DNSName("billing.example")])
    forged = {"Client-Cert": ":Zm9yZ2Vk:", "X-SSL-Client-S-DN": "CN=admin", "X-Forwarded-Client-Cert": "x"}
    async with start_sidecar(
        upstream.url,
        tls_cert_file=volume.path("tls.crt"),
        tls_key_file=volume.path("tls.key"),
        tls_client_ca_file=volume.path("ca.crt"),
        tls_forward_client_cert=forward,
    ) as sidecar:
        context = client_context(ca, client_cert, tmp_path)
        async with httpx.AsyncClient(verify=context) as known:
            response = await known.get(f"https://localhost:{sidecar.port}/cert", headers=forged)
    assert response.status_code == 200
    (seen,) = upstream.seen
    assert seen.all("x-ssl-client-s-dn") == []
    assert seen.all("x-forwarded-client-cert") == []
    der = x509.load_pem_x509_certificate(client_cert.cert_pem).public_bytes(serialization.Encoding.DER)
    expected = [":" + base64.b64encode(der).decode() + ":"] if forward else []
    assert seen.all("client-cert") == expected
