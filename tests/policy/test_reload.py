"""The policy directory: consistent reads, checked swaps, refusal of broken policies, and watching.

Directories are real, and ConfigMap updates are the kubelet's exact sequence (tests/support/tls_material.py
`SecretVolume`): a new timestamped directory, a `..data_tmp` symlink renamed over `..data`, the old
directory deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from authcar.identity import ANONYMOUS, Identity
from authcar.observe import Metrics
from authcar.policy import MODEL_FILE, POLICY_FILE, PolicyError, policy_request
from authcar.policy.reload import (
    MAX_FILE_BYTES,
    MAX_LINE_LENGTH,
    MAX_LINES,
    MAX_REPORTED_PROBLEMS,
    PolicySource,
    load_policy,
    read_policy_files,
)
from tests.support.process import start_sidecar_process
from tests.support.sidecar import start_sidecar
from tests.support.tls_material import SecretVolume
from tests.support.upstream_app import RunningUpstream

ROOT = Path(__file__).resolve().parents[2]
BOOK_POLICY = ROOT / "policies"
MODEL = (BOOK_POLICY / MODEL_FILE).read_bytes()

READER_RULES = b"p, role:reader, /books, ^(GET|HEAD)$, allow, *\n"
EDITOR_RULES = b"p, role:editor, /books, ^POST$, allow, *\ng, role:admin, role:editor\n"

ALICE = Identity(subject="alice", roles=frozenset({"reader"}), claims={"sub": "alice"}, source="jwt")
BOB = Identity(subject="bob", roles=frozenset({"editor"}), claims={"sub": "bob"}, source="jwt")


def allowed(source_or_policy: PolicySource | object, identity: Identity, method: str, path: str) -> bool:
    policy = source_or_policy.current if isinstance(source_or_policy, PolicySource) else source_or_policy
    return policy.decide(policy_request(identity, method, path, "role:")).allowed  # type: ignore[attr-defined]


def write_plain(directory: Path, model: bytes = MODEL, policy: bytes = READER_RULES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(model)
    (directory / POLICY_FILE).write_bytes(policy)
    return directory


def files(model: bytes = MODEL, policy: bytes = READER_RULES) -> dict[str, bytes]:
    return {MODEL_FILE: model, POLICY_FILE: policy}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- loading and refusing -------------------------------------------------------------------------


def test_the_book_policy_loads_and_names_its_version() -> None:
    metrics = Metrics()
    source = PolicySource(BOOK_POLICY, metrics)
    source.load_initial()

    version = source.current.version
    assert len(version) == 12
    assert int(version, 16) >= 0
    assert source.readiness() == (True, f"policy: version {version}, {source.current.rule_count} rules")
    assert sample(metrics, "authcar_policy_info", version=version) == 1
    assert sample(metrics, "authcar_policy_last_reload_success") == 1
    assert sample(metrics, "authcar_policy_reloads_total", result="success") == 1
    assert sample(metrics, "authcar_policy_rules") == source.current.rule_count
    assert allowed(source, ALICE, "GET", "/books")
    assert not allowed(source, ALICE, "POST", "/books")


def test_version_depends_on_both_files_and_on_where_the_bytes_are(tmp_path: Path) -> None:
    a = read_policy_files(write_plain(tmp_path / "a", MODEL, READER_RULES)).version
    b = read_policy_files(write_plain(tmp_path / "b", MODEL, READER_RULES + b"\n")).version
    # The same bytes split differently between the two files are a different policy.
    c = read_policy_files(write_plain(tmp_path / "c", MODEL + b"\n", READER_RULES)).version
    same = read_policy_files(write_plain(tmp_path / "d", MODEL, READER_RULES)).version
    assert len({a, b, c}) == 3
    assert a == same


MATCHER = b"m = g(r.sub, p.sub)"

BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "directory missing": (lambda d: None, "does not exist"),
    "model missing": (lambda d: write_plain(d) and (d / MODEL_FILE).unlink(), "model.conf is missing"),
    "policy missing": (lambda d: write_plain(d) and (d / POLICY_FILE).unlink(), "policy.csv is missing"),
    "policy empty": (lambda d: write_plain(d, policy=b"  \n"), "policy.csv is empty"),
    "model empty": (lambda d: write_plain(d, model=b""), "model.conf is empty"),
    "only role links": (lambda d: write_plain(d, policy=b"g, role:admin, role:editor\n"), "no `p` rules"),
    "policy not utf-8": (lambda d: write_plain(d, policy=READER_RULES + b"# caf\xe9\n"), "not UTF-8"),
    "model without matcher": (lambda d: write_plain(d, model=MODEL.split(b"[matchers]")[0]), ""),
    "matcher calls an unknown function": (
        lambda d: write_plain(d, model=MODEL.replace(MATCHER, b"m = noSuchFunction(r.sub) && " + MATCHER)),
        "",
    ),
    # Mounted input has limits, like every other input: checked before the engine parses anything.
    "policy too large": (
        lambda d: write_plain(d, policy=READER_RULES + b"#" * MAX_FILE_BYTES),
        f"larger than {MAX_FILE_BYTES} bytes",
    ),
    "policy with too many lines": (
        lambda d: write_plain(d, policy=READER_RULES + b"\n" * MAX_LINES),
        f"more than {MAX_LINES}",
    ),
    "policy line too long": (
        lambda d: write_plain(d, policy=READER_RULES + b"p, role:reader, /" + b"a" * MAX_LINE_LENGTH + b"\n"),
        f"policy.csv line 2 is longer than {MAX_LINE_LENGTH} characters",
    ),
    "model line too long": (
        lambda d: write_plain(
            d, model=MODEL.replace(MATCHER, MATCHER + b" && true" * (MAX_LINE_LENGTH // 8))
        ),
        f"model.conf line 14 is longer than {MAX_LINE_LENGTH} characters",
    ),
    "matcher nested beyond the parser": (
        lambda d: write_plain(d, model=MODEL.replace(MATCHER, b"m = " + b"(" * 5000 + b"true" + b")" * 5000)),
        "",
    ),
    "matcher of endless negations": (
        lambda d: write_plain(d, model=MODEL.replace(MATCHER, b"m = " + b"!" * 10_000 + MATCHER[4:])),
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_policies_are_refused_at_start(tmp_path: Path, case: str) -> None:
    make, problem = BROKEN[case]
    directory = tmp_path / "policy"
    make(directory)
    metrics = Metrics()
    source = PolicySource(directory, metrics)

    with pytest.raises(PolicyError) as refused:
        source.load_initial()

    assert refused.value.problems
    assert problem in "; ".join(refused.value.problems)
    assert source.readiness() == (False, "policy: not loaded")
    assert sample(metrics, "authcar_policy_reloads_total", result="failure") == 1
    assert sample(metrics, "authcar_policy_last_reload_success") == 0
    with pytest.raises(RuntimeError):
        _ = source.current


def test_a_policy_of_many_broken_lines_reports_a_bounded_list(tmp_path: Path) -> None:
    broken = READER_RULES + b"p, too, few\n" * 5000
    with pytest.raises(PolicyError) as refused:
        load_policy(write_plain(tmp_path / "policy", policy=broken))
    problems = refused.value.problems
    assert len(problems) == MAX_REPORTED_PROBLEMS + 1
    assert problems[0].startswith("policy line 2: 2 fields")
    assert problems[-1] == f"... and {5000 - MAX_REPORTED_PROBLEMS} more problems"


def test_the_limits_themselves_are_accepted(tmp_path: Path) -> None:
    longest = b"p, role:reader, /" + b"a" * (MAX_LINE_LENGTH - 40)
    longest += b", ^GET$, allow, *"
    longest += b" " * (MAX_LINE_LENGTH - len(longest))
    policy = READER_RULES + longest + b"\n" * (MAX_LINES - 2)
    assert policy.count(b"\n") + 1 == MAX_LINES
    assert load_policy(write_plain(tmp_path / "policy", policy=policy)).rule_count == 2


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "policy"
    directory.mkdir()
    with pytest.raises(PolicyError) as refused:
        load_policy(directory)
    assert len(refused.value.problems) == 2
    assert "model.conf is missing" in refused.value.problems[0]
    assert "policy.csv is missing" in refused.value.problems[1]


# -- reloading ------------------------------------------------------------------------------------


def test_plain_edit_swaps_in_a_new_version_and_old_decisions_stay_whole(tmp_path: Path) -> None:
    directory = write_plain(tmp_path / "policy")
    metrics = Metrics()
    source = PolicySource(directory, metrics)
    source.load_initial()
    before = source.current

    (directory / POLICY_FILE).write_bytes(READER_RULES + EDITOR_RULES)
    assert source.reload() is True

    after = source.current
    assert after is not before
    assert after.version != before.version
    assert allowed(source, BOB, "POST", "/books")
    # A decision that already holds the old version keeps deciding by it, never by a mix.
    assert not allowed(before, BOB, "POST", "/books")
    assert sample(metrics, "authcar_policy_info", version=after.version) == 1
    assert sample(metrics, "authcar_policy_info", version=before.version) is None
    assert sample(metrics, "authcar_policy_reloads_total", result="success") == 2

    # Unchanged content: nothing to swap, nothing counted.
    assert source.reload() is False
    assert source.current is after
    assert sample(metrics, "authcar_policy_reloads_total", result="success") == 2


def test_broken_reload_keeps_the_last_good_policy_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = write_plain(tmp_path / "policy")
    metrics = Metrics()
    source = PolicySource(directory, metrics)
    source.load_initial()
    good = source.current

    (directory / POLICY_FILE).write_bytes(b"# emptied by mistake\n")
    with caplog.at_level(logging.ERROR, logger="authcar.policy"):
        assert source.reload() is False

    assert source.current is good
    assert allowed(source, ALICE, "GET", "/books")
    ready, detail = source.readiness()
    assert ready  # still serving the last good policy: see PolicySource.readiness
    assert detail.startswith("policy: last reload failed: ")
    assert "no `p` rules" in detail
    assert good.version in detail
    assert sample(metrics, "authcar_policy_reloads_total", result="failure") == 1
    assert sample(metrics, "authcar_policy_last_reload_success") == 0
    assert sample(metrics, "authcar_policy_info", version=good.version) == 1
    [record] = [r for r in caplog.records if r.name == "authcar.policy"]
    assert record.getMessage() == "policy_reload_failed"
    assert any("no `p` rules" in p for p in record.problems)  # type: ignore[attr-defined]
    assert record.serving_version == good.version  # type: ignore[attr-defined]

    # Put back exactly what was serving: the failure is over, nothing is swapped.
    (directory / POLICY_FILE).write_bytes(READER_RULES)
    assert source.reload() is False
    assert source.current is good
    assert source.readiness() == (True, f"policy: version {good.version}, {good.rule_count} rules")
    assert sample(metrics, "authcar_policy_last_reload_success") == 1


def test_configmap_swap_is_read_from_one_generation(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "configmap")
    volume.publish(files())
    source = PolicySource(volume.root)
    source.load_initial()
    assert (volume.root / "..data").is_symlink()
    assert (volume.root / MODEL_FILE).is_symlink()

    volume.publish(files(policy=READER_RULES + EDITOR_RULES))
    assert source.reload() is True
    assert allowed(source, BOB, "POST", "/books")
    volume.publish(files(policy=b"not, a, policy\n"))
    assert source.reload() is False
    assert allowed(source, BOB, "POST", "/books")


def test_reads_never_mix_generations_while_the_volume_keeps_swapping(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "configmap")

    def generation(n: int) -> dict[str, bytes]:
        # Files of different sizes per generation, and a marker in each that names it.
        padding = b"#" * (n % 7) + b"\n"
        return files(MODEL + b"# generation %d\n" % n + padding, READER_RULES + b"# generation %d\n" % n)

    volume.publish(generation(0))
    stop = threading.Event()

    def keep_swapping() -> None:
        n = 1
        while not stop.is_set():
            volume.publish(generation(n))
            n += 1

    swapper = threading.Thread(target=keep_swapping)
    swapper.start()
    reads = 0
    refusals: list[str] = []
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                read = read_policy_files(volume.root)
            except PolicyError as error:  # "kept changing": refused, never mixed
                refusals.append("; ".join(error.problems))
                continue
            model_mark = read.model.rsplit("# generation ", 1)[1].split("\n")[0]
            policy_mark = read.policy.rsplit("# generation ", 1)[1].split("\n")[0]
            assert model_mark == policy_mark
            reads += 1
    finally:
        stop.set()
        swapper.join()
    assert reads > 0
    assert all("kept changing" in refusal for refusal in refusals), refusals


# -- watching -------------------------------------------------------------------------------------


async def test_watch_follows_configmap_updates_broken_and_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = SecretVolume(tmp_path / "configmap")
    volume.publish(files())
    metrics = Metrics()
    source = PolicySource(volume.root, metrics)
    source.load_initial()
    first = source.current.version
    stop = asyncio.Event()
    # A long poll interval: only a filesystem event can explain a reload within the test.
    watcher = asyncio.create_task(source.watch(stop, poll_interval=60, settle_ms=50))
    await asyncio.sleep(0.3)  # let the watcher register
    try:
        volume.publish(files(policy=READER_RULES + EDITOR_RULES))
        await eventually(lambda: source.current.version != first)
        assert allowed(source, BOB, "POST", "/books")
        second = source.current.version

        with caplog.at_level(logging.ERROR, logger="authcar.policy"):
            volume.publish(files(model=b"[request_definition]\nr = sub\n"))
            await eventually(lambda: bool(source.last_error))
        assert source.current.version == second
        assert source.readiness()[1].startswith("policy: last reload failed:")
        assert any(r.getMessage() == "policy_reload_failed" for r in caplog.records)

        volume.publish(files(policy=EDITOR_RULES + READER_RULES))
        await eventually(lambda: source.current.version not in (first, second))
        assert not source.last_error
        assert source.readiness()[0]
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)
    assert sample(metrics, "authcar_policy_reloads_total", result="success") == 3
    assert sample(metrics, "authcar_policy_reloads_total", result="failure") == 1
    assert sample(metrics, "authcar_policy_last_reload_success") == 1
    # The old timestamped directories are gone: nothing still reads from them.
    assert len([p for p in os.listdir(volume.root) if p.startswith("..2026")]) == 1


async def test_watch_follows_plain_file_edits(tmp_path: Path) -> None:
    directory = write_plain(tmp_path / "policy")
    source = PolicySource(directory)
    source.load_initial()
    first = source.current.version
    stop = asyncio.Event()
    watcher = asyncio.create_task(source.watch(stop, poll_interval=60, settle_ms=50))
    await asyncio.sleep(0.3)
    try:
        with (directory / POLICY_FILE).open("ab") as policy:
            policy.write(EDITOR_RULES)
        await eventually(lambda: source.current.version != first)
        assert allowed(source, BOB, "POST", "/books")
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)


async def test_polling_notices_changes_without_events(tmp_path: Path) -> None:
    directory = write_plain(tmp_path / "policy")
    source = PolicySource(directory)
    source.load_initial()
    parked = tmp_path / "parked"
    os.rename(directory, parked)  # nothing to watch: the watcher falls back to polling
    stop = asyncio.Event()
    watcher = asyncio.create_task(source.watch(stop, poll_interval=0.1))
    try:
        await eventually(lambda: bool(source.last_error))  # the directory is gone: refused, logged
        assert allowed(source, ALICE, "GET", "/books")
        (parked / POLICY_FILE).write_bytes(READER_RULES + EDITOR_RULES)
        os.rename(parked, directory)
        await eventually(lambda: allowed(source, BOB, "POST", "/books"))
        assert not source.last_error
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)


async def test_watch_stops_promptly_when_cancelled(tmp_path: Path) -> None:
    source = PolicySource(write_plain(tmp_path / "policy"))
    source.load_initial()
    watcher = asyncio.create_task(source.watch())
    await asyncio.sleep(0.3)
    watcher.cancel()
    # Promptly: within wait_for's 5 s, where waiting out the 30 s poll would not be (a bound on the
    # outcome, not a measurement of this machine's speed: late, wait_for raises TimeoutError).
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(watcher, 5)


def test_anonymous_decisions_use_the_built_in_role(tmp_path: Path) -> None:
    directory = write_plain(tmp_path / "policy", policy=b"p, authcar:anonymous, /open, ^GET$, allow, *\n")
    source = PolicySource(directory)
    source.load_initial()
    assert allowed(source, ANONYMOUS, "GET", "/open")
    assert not allowed(source, ALICE, "GET", "/open")


# -- the running sidecar --------------------------------------------------------------------------

OPEN_RULES = b"p, authcar:anonymous, /open, ^GET$, allow, *\n"
LATER_RULES = b"p, authcar:anonymous, /later, ^GET$, allow, *\n"


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def metric_value(text: str, sample_line: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(sample_line + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_running_sidecar_follows_configmap_updates_and_sighup(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    volume = SecretVolume(tmp_path / "policy")
    volume.publish(files(policy=OPEN_RULES))
    env = {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_ALLOW_ANONYMOUS": "true",
        "AUTHCAR_POLICY_DIR": str(volume.root),
        "AUTHCAR_ACCESS_LOG": "false",
    }
    sidecar = await asyncio.to_thread(start_sidecar_process, tmp_path, env)
    failures = 'authcar_policy_reloads_total{result="failure"}'
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def status(path: str) -> int:
                return (await client.get(sidecar.url + path)).status_code

            async def metrics() -> str:
                return (await client.get(sidecar.admin_url + "/metrics")).text

            assert await status("/open") == 200
            assert await status("/later") in (401, 403)  # anonymous and refused by the policy
            assert upstream.paths() == ["/open"]

            volume.publish(files(policy=OPEN_RULES + LATER_RULES))
            await until(lambda: _equals(status("/later"), 200))

            volume.publish(files(policy=b"# emptied by mistake\n"))

            async def failure_reported() -> bool:
                return "last reload failed" in (await client.get(sidecar.admin_url + "/readyz")).text

            await until(failure_reported)
            ready = await client.get(sidecar.admin_url + "/readyz")
            assert ready.status_code == 200  # still serving the last good policy
            assert await status("/later") == 200
            assert metric_value(await metrics(), failures) == 1
            assert metric_value(await metrics(), "authcar_policy_last_reload_success") == 0

            # The files did not change again, so only SIGHUP explains a second attempt.
            sidecar.signal(signal.SIGHUP)
            await until(lambda: _equals(_metric(metrics(), failures), 2))
    finally:
        sidecar.stop()
    events = [e for e in sidecar.events() if str(e.get("event", "")).startswith("policy_")]
    assert [e["event"] for e in events] == [
        "policy_loaded",
        "policy_loaded",
        "policy_reload_failed",
        "policy_reload_failed",
    ]
    assert events[1]["previous_version"] == events[0]["version"]
    assert events[2]["serving_version"] == events[1]["version"]


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def _metric(text: Awaitable[str], sample_line: str) -> float | None:
    return metric_value(await text, sample_line)


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        (OPEN_RULES + LATER_RULES + b"#" + b"x" * MAX_LINE_LENGTH, "line 3 is longer than"),
        (OPEN_RULES + LATER_RULES + b"#\n" * MAX_LINES, "lines, more than"),
        (OPEN_RULES + LATER_RULES + b"p, bad\n" * 1000, "... and 980 more problems"),
    ],
    ids=["long line", "many lines", "many problems"],
)
async def test_running_sidecar_keeps_the_last_good_policy_when_a_file_passes_a_limit(
    tmp_path: Path, upstream: RunningUpstream, policy: bytes, problem: str
) -> None:
    volume = SecretVolume(tmp_path / "policy")
    volume.publish(files(policy=OPEN_RULES))
    async with (
        start_sidecar(upstream.url, policy_dir=volume.root) as sidecar,
        httpx.AsyncClient(timeout=5) as client,
    ):

        async def failure_reported() -> bool:
            return "last reload failed" in (await client.get(sidecar.admin_url + "/readyz")).text

        volume.publish(files(policy=policy))  # would allow /later, if it were accepted
        await until(failure_reported)
        ready = await client.get(sidecar.admin_url + "/readyz")
        assert ready.status_code == 200  # the last good policy serves on
        assert problem in ready.json()["checks"]["policy"]["detail"]
        assert len(ready.text) < 8192
        assert (await client.get(sidecar.url + "/open")).status_code == 200
        assert (await client.get(sidecar.url + "/later")).status_code in (401, 403)
        assert upstream.paths() == ["/open"]
        volume.publish(files(policy=OPEN_RULES + LATER_RULES))  # fixed: taken without a restart
        await until(lambda: _equals(_status(client, sidecar.url + "/later"), 200))


async def _status(client: httpx.AsyncClient, url: str) -> int:
    return (await client.get(url)).status_code
