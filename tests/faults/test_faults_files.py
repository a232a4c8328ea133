"""Mounted files replaced by broken ones under a running sidecar process: policies and certificates.

Both are updated the kubelet's way (tests/tls_material.SecretVolume: a new timestamped directory
swapped in through `..data`). A broken version must never replace the good one: the last good policy
keeps deciding and the last good certificate keeps being served, the failure is counted and shown
in /readyz (which stays 200: the pod still serves correctly), and a good version published next is
taken up by the same process.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from authcar.policy import MODEL_FILE, POLICY_FILE
from tests.e2e.test_tls_listener import served_serial
from tests.faults.misbehaving import MisbehavingUpstream, misbehaving_upstream
from tests.faults.support import metric, metrics, readiness, send, tracebacks, until
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.tls_material import CertAuthority, Issued, SecretVolume, expired

ROOT = Path(__file__).resolve().parents[2]
MODEL = (ROOT / "policies" / MODEL_FILE).read_bytes()
OPEN = b"p, authcar:anonymous, /open, ^GET$, allow, *\n"
LATER = b"p, authcar:anonymous, /later, ^GET$, allow, *\n"


def policy(model: bytes = MODEL, rules: bytes = OPEN) -> dict[str, bytes]:
    return {MODEL_FILE: model, POLICY_FILE: rules}


BROKEN_POLICIES: dict[str, dict[str, bytes]] = {
    "unparsable_model": policy(model=b"\x00\xff[request_definition\nr = = =\n"),
    "model_without_matchers": policy(model=MODEL.split(b"[matchers]")[0]),
    "unknown_effect": policy(rules=OPEN + b"p, authcar:anonymous, /x, ^GET$, maybe, *\n"),
    "bad_method_regex": policy(rules=OPEN + b"p, authcar:anonymous, /x, ^(GET$, allow, *\n"),
    "binary_rules": policy(rules=bytes(range(256)) * 64),
    "policy_file_missing": {MODEL_FILE: MODEL},
    "emptied": policy(rules=b""),
}


@dataclass
class PolicyStack:
    volume: SecretVolume
    sidecar: SidecarProcess
    upstream: MisbehavingUpstream


@pytest.fixture(scope="module")
def policy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyStack]:
    directory = tmp_path_factory.mktemp("policy-faults")
    volume = SecretVolume(directory / "policy")
    volume.publish(policy())
    with misbehaving_upstream() as upstream:
        env = {
            "AUTHCAR_UPSTREAM": upstream.url,
            "AUTHCAR_ALLOW_ANONYMOUS": "true",
            "AUTHCAR_POLICY_DIR": str(volume.root),
        }
        sidecar = start_sidecar_process(directory, env)
        try:
            yield PolicyStack(volume, sidecar, upstream)
        finally:
            sidecar.stop()


async def _status(sidecar: SidecarProcess, path: str) -> int:
    return (await send(sidecar.port, "GET", path)).status


@pytest.mark.parametrize("broken", list(BROKEN_POLICIES))
async def test_a_broken_policy_never_replaces_the_serving_one(policy_stack: PolicyStack, broken: str) -> None:
    volume, sidecar, upstream = policy_stack.volume, policy_stack.sidecar, policy_stack.upstream
    volume.publish(policy())
    await until(lambda: _equals(_status(sidecar, "/later"), 401))  # the previous test's policy is gone
    await until(lambda: _policy_ok(sidecar))
    failures_before = metric(await metrics(sidecar), 'authcar_policy_reloads_total{result="failure"}')
    events_before = len(sidecar.events())

    volume.publish(BROKEN_POLICIES[broken])

    async def refused_and_counted() -> bool:
        text = await metrics(sidecar)
        return metric(text, 'authcar_policy_reloads_total{result="failure"}') > failures_before

    await until(refused_and_counted)
    status, body = await readiness(sidecar)
    assert status == 200  # the last good policy still decides correctly
    assert body["checks"]["policy"]["ok"] is True  # type: ignore[index]
    assert "last reload failed" in str(body["checks"]["policy"]["detail"])  # type: ignore[index]
    assert metric(await metrics(sidecar), "authcar_policy_last_reload_success") == 0
    upstream.requests.clear()
    assert await _status(sidecar, "/open") == 200
    assert await _status(sidecar, "/later") in (401, 403)  # still refused: nothing new was let in
    assert [r.target for r in upstream.requests] == ["/open"]

    volume.publish(policy(rules=OPEN + LATER))  # a good version: taken up without a restart
    await until(lambda: _equals(_status(sidecar, "/later"), 200))
    await until(lambda: _policy_ok(sidecar))
    assert metric(await metrics(sidecar), "authcar_policy_last_reload_success") == 1
    assert failed_events(sidecar, events_before) == ["policy_reload_failed"]
    assert tracebacks(sidecar, since=events_before) == []


def failed_events(sidecar: SidecarProcess, since: int) -> list[str]:
    return [str(e["event"]) for e in sidecar.events()[since:] if "failed" in str(e["event"])]


async def _policy_ok(sidecar: SidecarProcess) -> bool:
    status, body = await readiness(sidecar)
    return status == 200 and "failed" not in str(body["checks"]["policy"])  # type: ignore[index]


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


# -- certificates


def tls_files(server: Issued) -> dict[str, bytes]:
    return {"tls.crt": server.cert_pem, "tls.key": server.key_pem}


def garbage(ca: CertAuthority) -> dict[str, bytes]:
    return {"tls.crt": b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n", "tls.key": b"\x00" * 64}


def mismatched(ca: CertAuthority) -> dict[str, bytes]:
    return {"tls.crt": ca.issue_server("rsa").cert_pem, "tls.key": ca.issue_server("rsa").key_pem}


def truncated(ca: CertAuthority) -> dict[str, bytes]:
    files = tls_files(ca.issue_server("ec"))
    return {**files, "tls.crt": files["tls.crt"][: len(files["tls.crt"]) // 2]}


def key_missing(ca: CertAuthority) -> dict[str, bytes]:
    return {"tls.crt": ca.issue_server("ec").cert_pem}


def expired_renewal(ca: CertAuthority) -> dict[str, bytes]:
    return tls_files(expired(ca))


BROKEN_CERTIFICATES: dict[str, Callable[[CertAuthority], dict[str, bytes]]] = {
    "garbage": garbage,
    "mismatched_key": mismatched,
    "truncated": truncated,
    "key_missing": key_missing,
    "expired": expired_renewal,
}


@dataclass
class TlsStack:
    ca: CertAuthority
    volume: SecretVolume
    sidecar: SidecarProcess
    upstream: MisbehavingUpstream


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    directory = tmp_path_factory.mktemp("tls-faults")
    ca = CertAuthority("fault-ca")
    volume = SecretVolume(directory / "tls")
    volume.publish(tls_files(ca.issue_server("rsa")))
    with misbehaving_upstream() as upstream:
        env = {
            "AUTHCAR_UPSTREAM": upstream.url,
            "AUTHCAR_ALLOW_ANONYMOUS": "true",
            "AUTHCAR_TLS_CERT_FILE": str(volume.path("tls.crt")),
            "AUTHCAR_TLS_KEY_FILE": str(volume.path("tls.key")),
        }
        sidecar = start_sidecar_process(directory, env)
        try:
            yield TlsStack(ca, volume, sidecar, upstream)
        finally:
            sidecar.stop()


@pytest.mark.parametrize("broken", list(BROKEN_CERTIFICATES))
async def test_a_broken_certificate_renewal_never_replaces_the_served_one(
    tls_stack: TlsStack, broken: str
) -> None:
    ca, volume, sidecar = tls_stack.ca, tls_stack.volume, tls_stack.sidecar
    good = ca.issue_server("rsa")
    volume.publish(tls_files(good))
    await until(lambda: _serves(sidecar, ca, good.serial))
    failures_before = metric(await metrics(sidecar), 'authcar_tls_reloads_total{result="failure"}')
    events_before = len(sidecar.events())

    volume.publish(BROKEN_CERTIFICATES[broken](ca))

    async def refused_and_counted() -> bool:
        return metric(await metrics(sidecar), 'authcar_tls_reloads_total{result="failure"}') > failures_before

    await until(refused_and_counted)
    assert await asyncio.to_thread(served_serial, sidecar.port, ca) == good.serial
    status, body = await readiness(sidecar)
    assert status == 200
    assert "last certificate reload failed" in str(body["checks"]["tls"])  # type: ignore[index]
    async with httpx.AsyncClient(verify=ssl.create_default_context(cadata=ca.cert_pem.decode())) as http:
        assert (await http.get(f"https://localhost:{sidecar.port}/still")).status_code == 200

    renewed = ca.issue_server("ec")  # a good renewal: taken up by the same process
    volume.publish(tls_files(renewed))
    await until(lambda: _serves(sidecar, ca, renewed.serial))
    status, body = await readiness(sidecar)
    assert status == 200
    assert "failed" not in str(body["checks"]["tls"])  # type: ignore[index]
    assert failed_events(sidecar, events_before) == ["tls_reload_failed"]
    assert tracebacks(sidecar, since=events_before) == []


async def _serves(sidecar: SidecarProcess, ca: CertAuthority, serial: int) -> bool:
    return await asyncio.to_thread(served_serial, sidecar.port, ca) == serial
