"""Real `redis-server` processes for the tests: one server, a Sentinel set and a three-master Cluster.

Each runs on free ports in its own temporary directory, without persistence, and is waited for by
polling (PING, replication link, Sentinel's view, cluster state), never by a fixed sleep. The
session-scoped fixtures start a topology once, on first use; tests flush it (`flush()`) rather than
restart it. Tests that stop, kill or fail over servers start their own with the context managers.

Without `redis-server` on PATH the tests are skipped with that reason on a developer's machine and
fail in CI (CI=true), where .ci/run installs it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from tests.support import system

T = TypeVar("T")

HOST = "127.0.0.1"
MASTER_NAME = "authcar-master"
# Generous upper bounds for the machine's speed, not expected durations.
START_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 60.0
CLUSTER_SLOTS = 16384


def redis_server_binary() -> str:
    """The path of redis-server, or skip (fail in CI) with the reason."""
    found = shutil.which("redis-server")
    if found is None:
        system.unavailable("redis-server", "apt-get install redis-server")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, so at most 55535."""
    while True:
        port = free_port()
        if port <= 65535 - 10000:
            with socket.socket() as bus:
                try:
                    bus.bind((HOST, port + 10000))
                except OSError:
                    continue
            return port


def wait_for(check: Callable[[], T | None], what: str, timeout: float = START_TIMEOUT) -> T:
    """Poll `check` until it returns something other than None/False; its exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (redis.RedisError, OSError) as error:
            last_error = error
        else:
            if result is not None and result is not False:
                return result
        time.sleep(0.02)
    raise AssertionError(f"{what} within {timeout:g}s (last error: {last_error!r})")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def server_args(self) -> list[str]:
        files = ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)]
        return [*files, "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]


@dataclass
class RedisProcess:
    """One redis-server (or Sentinel) process on a fixed port, which it keeps across restarts."""

    workdir: Path
    args: list[str]
    port: int = 0
    password: str | None = None
    tls: TlsFiles | None = None  # serve TLS only, on `port`
    pick_port: Callable[[], int] = free_port
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self) -> None:
        """Start on `port` (a free one the first time), retrying on another port if it was taken."""
        binary = redis_server_binary()
        for _attempt in range(5):
            if not self.port:
                self.port = self.pick_port()
            fixed = ["--port", str(self.port), "--bind", HOST, "--dir", str(self.workdir)]
            if self.tls is not None:
                fixed[:2] = ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
            quiet = ["--save", "", "--appendonly", "no", "--logfile", str(self.log_path)]
            self.process = subprocess.Popen(
                [binary, *self.args, *fixed, *quiet],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for(self.answers, f"redis-server on port {self.port} to answer PING")
                return
            except AssertionError:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                self.kill()
                if "Address already in use" not in log:
                    raise AssertionError(f"redis-server did not start; its log:\n{log[-2000:]}") from None
                self.port = 0
        raise AssertionError("redis-server found no free port in 5 attempts")

    def answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} has exited")
        with self.client() as client:
            return bool(client.ping())

    def client(self) -> redis.Redis:
        tls = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        return redis.Redis(
            HOST, self.port, password=self.password, socket_timeout=5, socket_connect_timeout=5, **tls
        )

    def stop(self) -> None:
        """SIGTERM and wait (without persistence it exits at once), SIGKILL if it does not."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Standalone:
    server: RedisProcess

    @property
    def url(self) -> str:
        auth = f":{self.server.password}@" if self.server.password else ""
        scheme = "rediss" if self.server.tls else "redis"
        return f"{scheme}://{auth}{HOST}:{self.server.port}/0"

    def flush(self) -> None:
        with self.server.client() as client:
            client.flushall()

    def stop(self) -> None:
        self.server.stop()


@contextlib.contextmanager
def standalone(
    workdir: Path, password: str | None = None, tls: TlsFiles | None = None
) -> Iterator[Standalone]:
    args = ["--requirepass", password] if password else []
    server = RedisProcess(workdir, args, password=password, tls=tls)
    try:
        server.start()
        yield Standalone(server)
    finally:
        server.stop()


@dataclass
class SentinelSet:
    master: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def sentinel_client(self) -> redis.Redis:
        return self.sentinels[0].client()

    def master_port(self) -> int:
        with self.sentinel_client() as client:
            address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(address[1])

    def current_master(self) -> RedisProcess:
        port = self.master_port()
        return next(server for server in (self.master, self.replica) if server.port == port)

    def flush(self) -> None:
        with self.current_master().client() as client:
            client.flushall()
            client.wait(1, 5000)  # the replica has it too

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.master]:
            process.stop()


@contextlib.contextmanager
def sentinel_set(workdir: Path, sentinels: int = 2, down_after_ms: int = 5000) -> Iterator[SentinelSet]:
    """A master, its replica and `sentinels` Sentinels (quorum 1). Failover starts `down_after_ms`
    after the master stops answering; tests that fail over pass a short one."""
    master = RedisProcess(workdir, [])
    replica = RedisProcess(workdir, [])
    watchers: list[RedisProcess] = []
    group = SentinelSet(master, replica, watchers)
    try:
        master.start()
        replica.args = ["--replicaof", HOST, str(master.port)]
        replica.start()
        wait_for(lambda: replication_up(replica), "the replica to sync with the master")
        for index in range(sentinels):
            conf = workdir / f"sentinel-{index}.conf"  # Sentinel rewrites it: a file of its own
            conf.write_text(
                f"sentinel monitor {MASTER_NAME} {HOST} {master.port} 1\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} {max(2 * down_after_ms, 2000)}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            sentinel = RedisProcess(workdir, [str(conf), "--sentinel"])
            sentinel.start()
            watchers.append(sentinel)
        for sentinel in watchers:
            wait_for(lambda s=sentinel: sentinel_sees_all(s, sentinels - 1), "each Sentinel to see the set")
        yield group
    finally:
        group.stop()


def replication_up(replica: RedisProcess) -> bool:
    with replica.client() as client:
        info = client.info("replication")
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


def sentinel_sees_all(sentinel: RedisProcess, other_sentinels: int) -> bool:
    with sentinel.client() as client:
        state = client.sentinel_master(MASTER_NAME)
        replicas = client.sentinel_slaves(MASTER_NAME)
    healthy = [r for r in replicas if not {"s_down", "disconnected"} & set(str(r.get("flags")).split(","))]
    return (
        bool(healthy)
        and int(state.get("num-other-sentinels", 0)) >= other_sentinels
        and "s_down" not in str(state.get("flags"))
    )


@dataclass
class Cluster:
    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def cluster(workdir: Path, masters: int = 3) -> Iterator[Cluster]:
    """`masters` cluster-enabled servers joined into one Cluster, the slots split evenly, no replicas
    (what `redis-cli --cluster create --cluster-replicas 0` does, through redis-py)."""
    nodes = [RedisProcess(workdir, [], pick_port=free_cluster_port) for _ in range(masters)]
    group = Cluster(nodes)
    try:
        for node in nodes:
            node.port = free_cluster_port()
            node.args = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{node.port}.conf"]
            node.args += ["--cluster-node-timeout", "5000"]
            node.start()
        bounds = [CLUSTER_SLOTS * i // masters for i in range(masters + 1)]
        for index, node in enumerate(nodes):
            with node.client() as client:
                # Distinct epochs, as redis-cli sets them, so no epoch collision has to be resolved.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                client.execute_command("CLUSTER", "ADDSLOTS", *range(bounds[index], bounds[index + 1]))
        with nodes[0].client() as client:
            for node in nodes[1:]:
                client.execute_command("CLUSTER", "MEET", HOST, node.port)
        for node in nodes:
            wait_for(lambda n=node: cluster_ready(n, masters), f"cluster node {node.port} to see the cluster")
        yield group
    finally:
        group.stop()


def cluster_ready(node: RedisProcess, masters: int) -> bool:
    with node.client() as client:
        info = client.execute_command("CLUSTER", "INFO").decode()
    fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
    return (
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
        and fields.get("cluster_known_nodes") == str(masters)
    )


# --- fixtures (registered in tests/conftest.py) ------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """One redis-server for the whole session; flush it before use."""
    with standalone(tmp_path_factory.mktemp("redis-standalone")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A master, a replica and two Sentinels for the whole session; flush before use."""
    with sentinel_set(tmp_path_factory.mktemp("redis-sentinel")) as group:
        yield group


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A three-master Cluster for the whole session; flush before use."""
    with cluster(tmp_path_factory.mktemp("redis-cluster")) as group:
        yield group
