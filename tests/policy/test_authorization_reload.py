"""Policy reloads in the running sidecar, seen from the requests it decides.

The policy directory is a ConfigMap volume, updated with the kubelet's exact sequence
(tests/support/tls_material.py `SecretVolume`). The two versions differ in both files: the new one swaps
the `obj` and `act` columns of the model and of every rule, so a model read with the other
version's rules would deny even `GET /books`, which both versions allow. A response that is
neither the old nor the new answer would show a half-loaded policy.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from authcar.policy import MODEL_FILE, POLICY_FILE
from authcar.policy.reload import policy_version
from tests.idp import IdP, run_idp
from tests.policy.test_authorization import BOOK_POLICY, Guarded, book_sidecar
from tests.support.tls_material import SecretVolume
from tests.support.upstream_app import RunningUpstream

OLD_MODEL = (BOOK_POLICY / MODEL_FILE).read_bytes()
OLD_POLICY = (BOOK_POLICY / POLICY_FILE).read_bytes()
OLD_COLUMNS = b"p = sub, obj, act, eft, owner"
NEW_COLUMNS = b"p = sub, act, obj, eft, owner"
# The one thing the new version lets through that the old one refuses.
READERS_CREATE_BOOKS = b"p, role:reader, ^POST$, /books, allow, *\n"


def swap_rule_columns(policy: bytes) -> bytes:
    """Every `p` line with its obj and act fields exchanged (for NEW_COLUMNS)."""
    lines = []
    for line in policy.decode().splitlines():
        if line.startswith("p,"):
            fields = [field.strip() for field in line.split(",")]
            fields[2], fields[3] = fields[3], fields[2]
            line = ", ".join(fields)
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True)
class Version:
    model: bytes
    policy: bytes

    @property
    def files(self) -> dict[str, bytes]:
        return {MODEL_FILE: self.model, POLICY_FILE: self.policy}

    @property
    def version(self) -> str:
        return policy_version(self.model, self.policy)


assert OLD_COLUMNS in OLD_MODEL  # the book model's columns, which NEW swaps
OLD = Version(OLD_MODEL, OLD_POLICY)
NEW = Version(
    OLD_MODEL.replace(OLD_COLUMNS, NEW_COLUMNS), swap_rule_columns(OLD_POLICY) + READERS_CREATE_BOOKS
)
# The rule that lets a reader list books, as each version writes it.
LIST_RULE = {
    OLD.version: ["role:reader", "/books", "^(GET|HEAD)$", "allow", "*"],
    NEW.version: ["role:reader", "^(GET|HEAD)$", "/books", "allow", "*"],
}
CREATE_RULE = ["role:reader", "^POST$", "/books", "allow", "*"]


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    mounted = SecretVolume(tmp_path / "policy")
    mounted.publish(OLD.files)
    return mounted


@pytest.fixture
async def guarded(upstream: RunningUpstream, idp: IdP, volume: SecretVolume) -> AsyncIterator[Guarded]:
    async with book_sidecar(upstream, idp, policy_dir=volume.root) as sidecar:
        assert sidecar.policy_version == OLD.version
        yield sidecar


async def until(condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def readiness(guarded: Guarded) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as admin:
        response = await admin.get(guarded.sidecar.admin_url + "/readyz")
    return response.status_code, response.json()


# --- reload under load -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    request_id: str
    method: str
    status: int
    sent_at: float


async def hammer(
    guarded: Guarded, token: str, worker: int, stop: asyncio.Event, outcomes: list[Outcome]
) -> None:
    """List and create books on one keep-alive connection until stopped; any transport error fails."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=guarded.sidecar.url, headers=headers, timeout=10) as client:
        sent = 0
        while not stop.is_set():
            method = "POST" if sent % 2 else "GET"
            request_id = f"w{worker}-{sent}"
            sent_at = time.monotonic()
            response = await client.request(
                method,
                "/books",
                headers={"X-Request-Id": request_id},
                content=b"{}" if method == "POST" else None,
            )
            outcomes.append(Outcome(request_id, method, response.status_code, sent_at))
            sent += 1


PER_VERSION = 30  # answers each version gives, once settled, before the next swap


async def test_reloads_under_load_answer_every_request_by_one_whole_version(
    guarded: Guarded, volume: SecretVolume
) -> None:
    token = guarded.token("alice")
    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    workers = [asyncio.create_task(hammer(guarded, token, n, stop, outcomes)) for n in range(6)]

    async def served_after(moment: float) -> None:
        """Until PER_VERSION answers to requests sent after `moment` are in (however slow the machine)."""
        await until(lambda: sum(o.sent_at > moment for o in outcomes) >= PER_VERSION, within=60)

    try:
        await served_after(time.monotonic())
        for version in (NEW, OLD, NEW, OLD, NEW):
            # Each swap is let settle, so every version serves under load: swaps closer together
            # than the watcher's latency (about 0.4 s) are merged, and only the last one is served.
            volume.publish(version.files)
            await until(lambda: guarded.policy_version == version.version)  # noqa: B023
            settled_at = time.monotonic()
            await served_after(settled_at)
    finally:
        stop.set()
        await asyncio.gather(*workers)  # a worker's transport error fails the test here

    # Every answer is the old one or the new one, never an error.
    assert {(o.method, o.status) for o in outcomes} == {("GET", 200), ("POST", 403), ("POST", 200)}
    # Once the swap has settled, the new answer holds.
    after = [o for o in outcomes if o.sent_at > settled_at]
    assert after
    assert {(o.method, o.status) for o in after} == {("GET", 200), ("POST", 200)}

    # Each decision was made by one whole version: the rule and the verdict are that version's.
    lines = await guarded.lines_for(o.request_id for o in outcomes)
    for outcome in outcomes:
        line = lines[outcome.request_id]
        assert line["policy"] in (OLD.version, NEW.version), line
        assert line["status"] == outcome.status
        if outcome.method == "GET":
            expected = ("allow", LIST_RULE[line["policy"]], None, 200)
        elif line["policy"] == NEW.version:
            expected = ("allow", CREATE_RULE, None, 200)
        else:
            expected = ("deny", None, "no_matching_rule", 403)
        assert (line["decision"], line.get("rule"), line.get("reason"), outcome.status) == expected, line
    # The load really spanned swaps: the serving version changed several times under it.
    served = [lines[o.request_id]["policy"] for o in sorted(outcomes, key=lambda o: o.sent_at)]
    changes = sum(1 for before, now in itertools.pairwise(served) if before != now)
    assert changes >= 5
    assert len(outcomes) >= 6 * PER_VERSION
    metrics = await guarded.metrics()
    assert metrics[("authcar_policy_info", (("version", NEW.version),))] == 1
    assert ("authcar_policy_info", (("version", OLD.version),)) not in metrics


# --- a broken version swapped in ---------------------------------------------------------------

# Each broken version, and what the refusal says about it.
BROKEN: dict[str, tuple[dict[str, bytes], str]] = {
    "no rules, only role links": (
        {MODEL_FILE: OLD_MODEL, POLICY_FILE: b"g, role:editor, role:reader\n"},
        "no `p` rules",
    ),
    "a method regex that does not compile": (
        {MODEL_FILE: OLD_MODEL, POLICY_FILE: OLD_POLICY + b"p, role:reader, /books, ^*POST$, allow, *\n"},
        "not a valid regular expression",
    ),
    "a regex that could backtrack without bound": (
        {
            MODEL_FILE: OLD_MODEL,
            POLICY_FILE: OLD_POLICY + b"p, role:reader, /books, ^(?=P)(P|PO|POS|POST)+$, allow, *\n",
        },
        "could backtrack without bound",
    ),
    "a model without matchers": (
        {MODEL_FILE: OLD_MODEL.split(b"[matchers]")[0], POLICY_FILE: OLD_POLICY},
        "[matchers] must define m",
    ),
    "policy.csv missing": ({MODEL_FILE: OLD_MODEL}, "policy.csv is missing"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
async def test_a_broken_version_leaves_the_last_good_one_deciding(
    guarded: Guarded, volume: SecretVolume, broken: str
) -> None:
    files, problem = BROKEN[broken]
    volume.publish(files)

    async def reload_failed() -> bool:
        return "last reload failed" in (await readiness(guarded))[1]["checks"]["policy"]["detail"]

    await until(reload_failed)
    status, ready = await readiness(guarded)
    assert (status, ready["ready"]) == (200, True)  # still serving: one bad ConfigMap is not an outage
    detail = ready["checks"]["policy"]["detail"]
    assert problem in detail
    assert detail.endswith(f"serving version {OLD.version}")

    # Decided exactly as before, by the last good version.
    listed = await guarded.send("GET", "/books", as_user="alice")
    created = await guarded.send("POST", "/books", as_user="alice", body=b"{}")
    assert (listed.status, created.status) == (200, 403)
    assert guarded.upstream.paths() == ["/books"]
    assert [line["policy"] for line in await guarded.log_lines()] == [OLD.version, OLD.version]
    metrics = await guarded.metrics()
    assert metrics[("authcar_policy_last_reload_success", ())] == 0
    assert metrics[("authcar_policy_reloads_total", (("result", "failure"),))] >= 1
    assert metrics[("authcar_policy_info", (("version", OLD.version),))] == 1

    # A good version after the broken one is taken, and the failure is over.
    volume.publish(NEW.files)
    await until(lambda: guarded.policy_version == NEW.version)
    assert (await guarded.send("POST", "/books", as_user="alice", body=b"{}")).status == 200
    assert not await reload_failed()
