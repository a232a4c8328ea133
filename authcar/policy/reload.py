"""The running policy: read from a directory, checked in full, swapped in whole, watched for changes.

`PolicySource.current` is the one attribute a decision reads; it always holds a complete
`CompiledPolicy`, replaced by a single assignment, so every decision is made against one version.
A new version replaces it only after it was read consistently, compiled and probed; anything less
keeps the last good version serving and reports the failure in logs, metrics and readiness.

A Kubernetes ConfigMap volume looks like this, and changes by an atomic rename of `..data`:

    dir/..2026_11_22_10_00_00.123/{model.conf,policy.csv}
    dir/..data -> ..2026_11_22_10_00_00.123
    dir/model.conf -> ..data/model.conf

Both files must come from the same generation, or a decision could pair a new model with an old
policy. `read_policy_files` therefore fingerprints the directory (the `..data` target and the
identity of each file) before and after reading, and reads again if anything moved in between.

The files are mounted input, bounded before the engine sees them: at most 16 MiB, 200,000 lines and
16 KiB per line each, and a refusal names at most 20 problems (a policy of 200,000 broken lines is
one readable log line, not 200,000).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from authcar.background import watch_directories
from authcar.identity import ANONYMOUS, Identity
from authcar.policy import MODEL_FILE, POLICY_FILE, PolicyError, policy_request
from authcar.policy.diagnostics import BareRoleDenials
from authcar.policy.engine import CompiledPolicy, compile_policy

if TYPE_CHECKING:
    from authcar.observe import Metrics

log = logging.getLogger("authcar.policy")

DATA_LINK = "..data"
# A ConfigMap holds at most 1 MiB; anything far larger is a wrong mount, not a policy.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_LINES = 200_000  # per file: twenty times the 10,000 rules the engine is measured at
MAX_LINE_LENGTH = 16 * 1024  # characters: a rule or a matcher, never a whole file on one line
MAX_REPORTED_PROBLEMS = 20
# Reads that saw the directory change underneath them are retried this many times.
READ_ATTEMPTS = 5
VERSION_HEX_DIGITS = 12


@dataclass(frozen=True, slots=True)
class PolicyFiles:
    """The text of one consistent read of the policy directory."""

    model: str
    policy: str
    version: str  # short hash of both files' bytes: logs and metrics name the policy that decided


def policy_version(model: bytes, policy: bytes) -> str:
    # Length-prefixed, so moving a line from one file to the other changes the version.
    digest = hashlib.sha256()
    for blob in (model, policy):
        digest.update(len(blob).to_bytes(8, "big") + blob)
    return digest.hexdigest()[:VERSION_HEX_DIGITS]


def directory_fingerprint(directory: Path) -> tuple[object, ...]:
    """What changes whenever either file or the `..data` generation changes (stat follows symlinks)."""
    try:
        generation: str | None = os.readlink(directory / DATA_LINK)
    except OSError:
        generation = None  # a plain directory, not a ConfigMap volume
    parts: list[object] = [generation]
    for name in (MODEL_FILE, POLICY_FILE):
        try:
            st = os.stat(directory / name)
        except OSError as exc:
            parts.append(exc.errno)
        else:
            parts.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(parts)


def read_file(path: Path) -> bytes:
    """One policy file's bytes; PolicyError (one problem) when it cannot be a policy file."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError([f"{path.name} is missing from {path.parent}"]) from None
    except OSError as exc:
        raise PolicyError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError([f"{path} is larger than {MAX_FILE_BYTES} bytes"])
    if not data.strip():
        raise PolicyError([f"{path} is empty"])
    return data


def decode(path: Path, data: bytes) -> str:
    """The file's text, if it is UTF-8 within the line limits; PolicyError otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([f"{path} is not UTF-8 text (byte {exc.start})"]) from None
    lines = text.split("\n")
    if len(lines) > MAX_LINES:
        raise PolicyError([f"{path} has {len(lines)} lines, more than {MAX_LINES}"])
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_LENGTH:
            raise PolicyError([f"{path} line {number} is longer than {MAX_LINE_LENGTH} characters"])
    return text


def reported(problems: list[str]) -> list[str]:
    """The first problems, and how many more there were."""
    if len(problems) <= MAX_REPORTED_PROBLEMS:
        return problems
    more = len(problems) - MAX_REPORTED_PROBLEMS
    return [*problems[:MAX_REPORTED_PROBLEMS], f"... and {more} more problems"]


def read_policy_files(directory: Path) -> PolicyFiles:
    """Both files from one generation of the directory; PolicyError listing every problem otherwise."""
    if not directory.is_dir():
        # A relative directory (the default `policies`) is looked for where authcar was started.
        where = "" if directory.is_absolute() else f" (looked for at {directory.absolute()})"
        raise PolicyError([f"the policy directory {directory}{where} does not exist or is not a directory"])
    for _ in range(READ_ATTEMPTS):
        before = directory_fingerprint(directory)
        problems: list[str] = []
        contents: list[bytes] = []
        for name in (MODEL_FILE, POLICY_FILE):
            try:
                contents.append(read_file(directory / name))
            except PolicyError as error:
                problems.extend(error.problems)
        if directory_fingerprint(directory) != before:
            continue  # a swap (or an edit) landed while reading: the two files may not belong together
        if problems:
            raise PolicyError(problems)
        model, policy = contents
        texts: list[str] = []
        for name, data in ((MODEL_FILE, model), (POLICY_FILE, policy)):
            try:
                texts.append(decode(directory / name, data))
            except PolicyError as error:
                problems.extend(error.problems)
        if problems:
            raise PolicyError(problems)
        return PolicyFiles(model=texts[0], policy=texts[1], version=policy_version(model, policy))
    raise PolicyError([f"{directory} kept changing while it was read; try again"])


# Requests every compiled policy must be able to decide without an error: a matcher that fails at
# decision time (a claim it cannot read, a function it cannot call) would otherwise fail every request.
PROBE_IDENTITIES = (
    ANONYMOUS,
    Identity(
        subject="authcar-probe",
        roles=frozenset({"authcar-probe"}),
        claims=MappingProxyType({"sub": "authcar-probe"}),
        source="jwt",
    ),
)


def probe(compiled: CompiledPolicy, role_prefix: str) -> list[str]:
    for identity in PROBE_IDENTITIES:
        for path in ("/", "/authcar-probe/1"):
            who = identity.subject or "an anonymous caller"
            try:
                decision = compiled.decide(policy_request(identity, "GET", path, role_prefix))
            except Exception as exc:
                return [f"deciding GET {path} for {who} failed: {type(exc).__name__}: {exc}"]
            if decision.reason == "error":  # the engine denies on an internal error rather than raise
                return [f"deciding GET {path} for {who} failed inside the policy engine"]
    return []


def load_policy(directory: Path, role_prefix: str = "role:") -> CompiledPolicy:
    """Read, compile and check a policy directory in full; PolicyError with every problem otherwise.

    Refused: either file missing, unreadable, empty or not UTF-8; a model or policy the engine
    refuses; a policy without a single `p` line (it would deny everything, which is what a truncated
    or wrongly mounted file looks like); a policy that cannot decide a simple request.
    """
    files = read_policy_files(directory)
    try:
        compiled = compile_policy(files.model, files.policy, version=files.version)
    except PolicyError as error:
        raise PolicyError(reported(error.problems)) from None
    except Exception as exc:  # an engine bug must refuse the policy, not kill the reload
        raise PolicyError([f"compiling failed: {type(exc).__name__}: {exc}"]) from None
    problems: list[str] = []
    if compiled.rule_count == 0:  # the engine refuses this too; a safety net costs one comparison
        problems.append(f"{POLICY_FILE} has no `p` rules: it would deny every request")
    problems.extend(probe(compiled, role_prefix))
    if problems:
        raise PolicyError(problems)
    return compiled


# Above this many rules, a policy whose matcher the engine cannot index is worth a warning.
UNINDEXED_WARNING_RULES = 200


class PolicySource:
    """Holds the running policy version and replaces it only with a version that passed every check."""

    def __init__(
        self, directory: Path, metrics: Metrics | None = None, *, role_prefix: str = "role:"
    ) -> None:
        self.directory = Path(directory)
        # abspath, not resolve(): resolving would follow ..data into a directory that gets deleted.
        self.watched = os.path.abspath(self.directory)
        self.metrics = metrics
        self.role_prefix = role_prefix
        self._current: CompiledPolicy | None = None
        self.last_error: list[str] = []  # the problems of the last failed reload; empty after success
        # The watcher reloads in a thread while SIGHUP reloads on the loop: one reload at a time.
        self._lock = threading.Lock()
        self._last_attempt: tuple[object, ...] | None = None
        self._bare_roles = BareRoleDenials(role_prefix)

    def explain_denial(self, identity: Identity) -> None:
        """Log, once per rule, a denied caller's role that a rule names without its prefix."""
        for role, rule in self._bare_roles.unreported(self.current, identity.roles):
            log.warning(
                "policy_rule_names_bare_role",
                extra={
                    "rule": ", ".join(rule),
                    "role": role,
                    "hint": f"the rule compares {role!r} with the caller's subject; for the token's role"
                    f" {role!r} write {self.role_prefix}{role}",
                },
            )

    @property
    def current(self) -> CompiledPolicy:
        """The running version. Read it once per decision: it may be replaced between two reads."""
        policy = self._current
        if policy is None:
            raise RuntimeError("no policy loaded: call load_initial() first")
        return policy

    @property
    def version(self) -> str:
        return self._current.version if self._current is not None else ""

    def load_initial(self) -> None:
        """Load the first version; raises PolicyError, because authcar must not start without one."""
        with self._lock:
            self._last_attempt = directory_fingerprint(self.directory)
            try:
                compiled = load_policy(self.directory, self.role_prefix)
            except PolicyError as error:
                self._count("failure")
                self._set_success(False)
                log.error(
                    "policy_load_failed",
                    extra={"policy_dir": str(self.directory), "problems": error.problems},
                )
                raise
            self._swap(compiled, previous="")

    def reload(self) -> bool:
        """Read, compile and check the directory; True only if a new version replaced the running one.

        Identical content is a no-op (and clears an earlier failure: the files are good again). On
        failure the last good version keeps serving; the problems go to the log, the metrics and
        readiness.
        """
        with self._lock:
            self._last_attempt = directory_fingerprint(self.directory)
            return self._reload_locked()

    def reload_if_changed(self) -> bool:
        """reload(), unless the directory looks exactly as it did at the last attempt (polling)."""
        with self._lock:
            fingerprint = directory_fingerprint(self.directory)
            if fingerprint == self._last_attempt:
                return False
            self._last_attempt = fingerprint
            return self._reload_locked()

    async def watch(
        self,
        stop_event: asyncio.Event | None = None,
        *,
        poll_interval: float = 30.0,
        settle_ms: int = 300,
    ) -> None:
        """Reload when the directory changes, until cancelled or stop_event is set.

        The directory itself is watched, not the files: a ConfigMap update renames `..data` and never
        writes to the old files. Events within `settle_ms` of each other are one change (an editor
        saving both files, the several steps of a swap). Every `poll_interval` seconds without events
        the fingerprint is checked anyway, for filesystems inotify cannot follow; if watching fails
        altogether, only polling remains.
        """

        async def reload() -> None:
            # Compiling a large policy takes a while; the event loop keeps serving meanwhile.
            await asyncio.to_thread(self.reload_if_changed)

        def watch_failed(exc: Exception) -> None:
            log.warning(
                "policy_watch_failed",
                extra={"policy_dir": str(self.directory), "error": str(exc), "poll_interval": poll_interval},
            )

        await watch_directories(
            [self.watched],
            reload,
            watch_failed,
            stop=stop_event if stop_event is not None else asyncio.Event(),
            poll_interval=poll_interval,
            settle_ms=settle_ms,
        )

    def readiness(self) -> tuple[bool, str]:
        """Ready while a good policy serves, even after a failed reload: the body says it failed.

        A bad ConfigMap reaches every pod at once. Failing readiness would take every pod out of the
        Service together and turn a rejected update into an outage, while the last good policy still
        decides correctly; so the failure is reported (here, in the metrics, in the log) but the pod
        stays ready, as Envoy keeps serving with the last accepted configuration.
        """
        policy = self._current
        if policy is None:
            return False, "policy: not loaded"
        if self.last_error:
            problems = "; ".join(self.last_error)
            return True, f"policy: last reload failed: {problems}; serving version {policy.version}"
        return True, f"policy: version {policy.version}, {policy.rule_count} rules"

    # -- internals ------------------------------------------------------------------------------

    def _reload_locked(self) -> bool:
        try:
            compiled = load_policy(self.directory, self.role_prefix)
        except PolicyError as error:
            self.last_error = list(error.problems)
            self._count("failure")
            self._set_success(False)
            log.error(
                "policy_reload_failed",
                extra={
                    "policy_dir": str(self.directory),
                    "problems": error.problems,
                    "serving_version": self.version,
                },
            )
            return False
        previous = self.version
        if compiled.version == previous:
            if self.last_error:
                log.info("policy_restored", extra={"policy_dir": str(self.directory), "version": previous})
                self.last_error = []
                self._set_success(True)
            return False
        self._swap(compiled, previous)
        return True

    def _swap(self, compiled: CompiledPolicy, previous: str) -> None:
        self._current = compiled  # the one assignment every later decision sees
        self.last_error = []
        self._count("success")
        self._set_success(True)
        if self.metrics is not None:
            self.metrics.set_policy(compiled.version, compiled.rule_count, previous)
        log.info(
            "policy_loaded",
            extra={
                "policy_dir": str(self.directory),
                "version": compiled.version,
                "previous_version": previous,
                "rules": compiled.rule_count,
                "indexed_by": list(compiled.indexed_by),
            },
        )
        if not compiled.indexed_by and compiled.rule_count > UNINDEXED_WARNING_RULES:
            # e.g. a top-level `||` in the matcher: every decision checks every rule.
            log.warning(
                "policy_not_indexed",
                extra={"version": compiled.version, "rules": compiled.rule_count},
            )

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_reloads.labels(result=result).inc()

    def _set_success(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.policy_last_reload_success.set(1 if ok else 0)
