"""The shared store: Redis (one server, a Sentinel-managed master, or a Cluster) through redis-py's
asyncio client.

Keys: a plain key is `<prefix>v<SCHEMA>:<key>` (default `authcar:v1:<key>`), so authcar's keys are
recognisable on a shared server and a future change of value formats can move to `v2:` without
reading old values. Values are stored as they are given (bytes) and always with an expiry (PX).
The structures live under `<prefix>v1/`: `rate:<key>` (a GCRA timestamp, µs of server time),
`members:{<key>}` (a sorted set scored by each member's expiry) with `members:{<key>}:version`
(both in one hash tag, so one Cluster node holds them), and `sliding:<key>` (a hash: value, idle
time, absolute end). Each expires on its own: the rate state when the bucket is full again, the
member set with its last member, the version after MAX_TTL without a change.

Failures: every call runs under one deadline (`timeout`, AUTHCAR_REDIS_TIMEOUT) covering connecting,
finding the Sentinel master, cluster redirections and the reply; the client itself does not retry
(a retried INCR or SET NX whose first attempt did reach the server would count twice or refuse its
own marker). Whatever goes wrong on the way, timeout, refused connection, failover in progress,
READONLY, CLUSTERDOWN, out of memory, becomes `StoreUnavailable`; the next call connects afresh, so
recovery needs no restart. Errors name the server with its password redacted.

Atomic steps that one command cannot do are Lua scripts sent by SHA (EVALSHA), with the source sent
once per server when it answers NOSCRIPT. Each script touches only the keys it is given, so in a
Cluster it runs on the node that owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from authcar.redis_url import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_TIMEOUT,
    RedisTarget,
    check_key_prefix,
    check_timeout,
    parse_redis_url,
)
from authcar.store.base import (
    MAX_MEMBERS,
    MAX_TTL,
    Members,
    RateDecision,
    StoreFull,
    StoreUnavailable,
    check_amount,
    check_key,
    check_member,
    check_rate,
    check_sliding,
    check_ttl,
    check_value,
    ttl_millis,
)
from authcar.store.redis_scripts import (
    ADD_MEMBER,
    GET_SLIDING,
    INCR,
    MEMBERS,
    RATE_LIMIT,
    REMOVE_MEMBER,
    SET_SLIDING,
    TAKE,
    Script,
)

SCHEMA = 1
# Commands in flight at once per store (per worker); more wait for a turn within their deadline
# rather than failing at once as redis-py's pools do when full (or opening connections without end).
MAX_CONNECTIONS = 64
# What INCRBY says about a value that is not a 64-bit decimal, or a result outside 64 bits.
_NOT_A_COUNTER = ("not an integer", "overflow", "WRONGTYPE")

T = TypeVar("T")
OnCall = Callable[[str, str, float], None]


@dataclass(frozen=True)
class RedisOptions:
    """How to reach Redis: the URL and the settings that refine it (AUTHCAR_REDIS_*)."""

    url: str = field(repr=False)
    password: str | None = field(default=None, repr=False)  # overrides the URL's
    ca_file: Path | None = None  # for rediss://; None: the system's CAs
    key_prefix: str = DEFAULT_KEY_PREFIX
    timeout: float = DEFAULT_TIMEOUT
    max_members: int = MAX_MEMBERS  # per member set

    def __post_init__(self) -> None:
        # Raises ValueError with a redacted message; `target` is derived, never given.
        target = parse_redis_url(self.url)
        for name, check, value in (
            ("key prefix", check_key_prefix, self.key_prefix),
            ("timeout", check_timeout, self.timeout),
        ):
            try:
                check(value)  # type: ignore[operator]
            except ValueError as error:
                raise ValueError(f"the Redis {name} {error}") from None
        if (
            isinstance(self.max_members, bool)
            or not isinstance(self.max_members, int)
            or self.max_members < 1
        ):
            raise ValueError(f"max_members must be a positive int, not {self.max_members!r}")
        if self.ca_file is not None and not target.tls:
            raise ValueError(f"a Redis CA file needs a rediss:// URL, not {target}")

    @property
    def target(self) -> RedisTarget:
        return parse_redis_url(self.url)


class RedisStore:
    name = "redis"

    def __init__(self, options: RedisOptions, on_call: OnCall | None = None) -> None:
        """`on_call(operation, result, seconds)` hears of every call (metrics): `operation` is the
        method's name, `result` "ok", "unavailable" or "refused"."""
        self.options = options
        self._on_call = on_call
        self.target = options.target
        self.timeout = options.timeout
        # Plain keys under `v1:`, the structures under `v1/<kind>:`: no plain key can name one.
        self._prefix = f"{options.key_prefix}v{SCHEMA}:"
        self._structures = f"{options.key_prefix}v{SCHEMA}/"
        self._password = options.password if options.password is not None else self.target.password
        self._sentinel: Sentinel | None = None
        self._client: Redis | RedisCluster = self._connect()
        self._has_getdel = True  # until a server says GETDEL is an unknown command
        self._turns = asyncio.Semaphore(MAX_CONNECTIONS)
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStore({self.target}, prefix={self._prefix!r})"

    def _connect(self) -> Redis | RedisCluster:
        """The client for the topology. Nothing connects yet: connections open on first use."""
        target, timeout = self.target, self.timeout
        common: dict[str, Any] = {
            "username": target.username,
            "password": self._password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": MAX_CONNECTIONS,
        }
        if target.topology == "cluster":
            nodes = [ClusterNode(host, port) for host, port in target.nodes]
            return RedisCluster(startup_nodes=nodes, **common)
        if target.topology == "sentinel":
            assert target.master is not None
            sentinel_kwargs = {
                key: common[key] for key in ("socket_timeout", "socket_connect_timeout", "retry")
            }
            self._sentinel = Sentinel(
                list(target.nodes), sentinel_kwargs=sentinel_kwargs, db=target.db, **common
            )
            return self._sentinel.master_for(target.master)
        host, port = target.nodes[0]
        tls: dict[str, Any] = {}
        if target.tls:
            ca_file = self.options.ca_file
            tls = {
                "ssl": True,
                "ssl_cert_reqs": "required",
                "ssl_check_hostname": True,
                "ssl_ca_certs": None if ca_file is None else str(ca_file),
            }
        return Redis(host=host, port=port, db=target.db, **common, **tls)

    def key(self, key: str) -> str:
        """The Redis key for a store key (checked by the caller)."""
        return self._prefix + key

    # --- the Store interface ----------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        check_key(key)
        return await self._run("get", lambda client: client.get(self.key(key)))

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        check_key(key)
        check_value(value)
        check_ttl(ttl)
        await self._run("set", lambda client: client.set(self.key(key), value, px=ttl_millis(ttl)))

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        check_key(key)
        check_value(value)
        check_ttl(ttl)
        stored = await self._run(
            "set_if_absent", lambda client: client.set(self.key(key), value, px=ttl_millis(ttl), nx=True)
        )
        return bool(stored)

    async def delete(self, key: str) -> None:
        check_key(key)
        await self._run("delete", lambda client: client.delete(self.key(key)))

    async def take(self, key: str) -> bytes | None:
        check_key(key)
        redis_key = self.key(key)
        if self._has_getdel:
            try:
                return await self._run("take", lambda client: client.getdel(redis_key))
            except StoreUnavailable as error:
                if not isinstance(error.__cause__, ResponseError) or "unknown command" not in str(error):
                    raise
                self._has_getdel = False
        return await self._script("take", TAKE, [redis_key], [])

    async def incr(self, key: str, amount: int = 1, *, ttl: float) -> int:
        check_key(key)
        check_amount(amount)
        check_ttl(ttl)
        args = [str(amount), ttl_millis(ttl)]
        result = await self._script("incr", INCR, [self.key(key)], args)
        return int(result)

    async def ttl(self, key: str) -> float | None:
        check_key(key)
        millis = await self._run("ttl", lambda client: client.pttl(self.key(key)))
        if millis == -2:
            return None
        return math.inf if millis == -1 else millis / 1000  # -1: written without expiry, not by authcar

    async def rate_limit(self, key: str, *, rate: float, burst: int) -> RateDecision:
        check_key(key)
        check_rate(rate, burst)
        keys, args = [self._structures + "rate:" + key], [repr(1_000_000 / rate), burst]
        reply = await self._script("rate_limit", RATE_LIMIT, keys, args)
        allowed, retry_after, remaining, reset = reply
        return RateDecision(bool(allowed), float(retry_after) / 1e6, int(remaining), float(reset) / 1e6)

    def _member_keys(self, key: str) -> list[str]:
        # One hash tag for both keys, so a Cluster keeps them on one node for the scripts.
        members = f"{self._structures}members:{{{key}}}"
        return [members, members + ":version"]

    async def add_member(self, key: str, member: str, ttl: float) -> int:
        check_key(key)
        check_member(member)
        check_ttl(ttl)
        args = [member, ttl_millis(ttl), self.options.max_members, ttl_millis(MAX_TTL)]
        keys = self._member_keys(key)
        return int(await self._script("add_member", ADD_MEMBER, keys, args))

    async def remove_member(self, key: str, member: str) -> int:
        check_key(key)
        check_member(member)
        keys, args = self._member_keys(key), [member, ttl_millis(MAX_TTL)]
        return int(await self._script("remove_member", REMOVE_MEMBER, keys, args))

    async def members(self, key: str) -> Members:
        check_key(key)
        keys = self._member_keys(key)
        version, now_ms, flat = await self._script("members", MEMBERS, keys, [])
        now = int(now_ms)
        found = {flat[i].decode(): (int(float(flat[i + 1])) - now) / 1000 for i in range(0, len(flat), 2)}
        return Members(int(version), found)

    async def members_version(self, key: str) -> int:
        version_key = self._member_keys(key)[1]
        check_key(key)
        version = await self._run("members_version", lambda client: client.get(version_key))
        return 0 if version is None else int(version)

    async def set_sliding(self, key: str, value: bytes, *, idle: float, max_age: float) -> None:
        check_key(key)
        check_value(value)
        check_sliding(idle, max_age)
        keys, args = [self._structures + "sliding:" + key], [value, ttl_millis(idle), ttl_millis(max_age)]
        await self._script("set_sliding", SET_SLIDING, keys, args)

    async def get_sliding(self, key: str) -> bytes | None:
        check_key(key)
        keys = [self._structures + "sliding:" + key]
        return await self._script("get_sliding", GET_SLIDING, keys, [])

    async def delete_sliding(self, key: str) -> None:
        check_key(key)
        sliding_key = self._structures + "sliding:" + key
        await self._run("delete_sliding", lambda client: client.delete(sliding_key))

    async def ping(self) -> None:
        if isinstance(self._client, RedisCluster):
            await self._run("ping", lambda client: client.ping(target_nodes=RedisCluster.PRIMARIES))
        else:
            await self._run("ping", lambda client: client.ping())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()

    # --- running a command ------------------------------------------------------------------------

    async def _script(self, what: str, script: Script, keys: list[str], args: list[Any]) -> Any:
        return await self._run(what, lambda client: self._eval(client, script, keys, args))

    async def _eval(
        self, client: Redis | RedisCluster, script: Script, keys: list[str], args: list[Any]
    ) -> Any:
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or restarted server: sending the source also caches it
            return await client.eval(script.source, len(keys), *keys, *args)

    async def _run(self, what: str, command: Callable[[Any], Awaitable[T]]) -> T:
        """`_attempt`, reported to `on_call` (operation, result, seconds) when there is one."""
        if self._on_call is None:
            return await self._attempt(what, command)
        started, result = time.perf_counter(), "unavailable"
        try:
            value = await self._attempt(what, command)
            result = "ok"
            return value
        except ValueError:  # the call was refused (StoreFull, not a counter): Redis answered
            result = "refused"
            raise
        finally:
            self._on_call(what, result, time.perf_counter() - started)

    async def _attempt(self, what: str, command: Callable[[Any], Awaitable[T]]) -> T:
        """Run one command under the deadline, turning every failure to reach Redis into
        StoreUnavailable and a refused counter into ValueError."""
        if self._closed:
            raise StoreUnavailable("redis store is closed")
        client = self._client
        try:
            async with asyncio.timeout(self.timeout), self._turns:
                return await command(client)
        except TimeoutError:
            raise StoreUnavailable(f"redis {self.target}: {what} took more than {self.timeout:g}s") from None
        except ResponseError as error:
            if "AUTHCAR_FULL" in str(error):
                raise StoreFull(f"the member set holds {self.options.max_members} members") from None
            if what == "incr" and any(sign in str(error) for sign in _NOT_A_COUNTER):
                raise ValueError(
                    f"the value is not a 64-bit decimal integer, or {what} would overflow it"
                ) from None
            raise self._unavailable(what, error) from error
        except RedisClusterException as error:
            await self._replace_cluster_client(client)
            raise self._unavailable(what, error) from error
        except (RedisError, OSError) as error:
            if isinstance(error, RedisConnectionError | OSError):
                await self._forget_idle_connections()
            raise self._unavailable(what, error) from error
        except Exception as error:
            # redis-py's own code failing mid-call (its Cluster client rebuilding its slot table while
            # a node is down raised something other than RedisError once, at the 5.0.1 floor in CI):
            # still no answer from Redis, so the caller's documented unavailability path, not a 500.
            raise self._unavailable(what, error) from error

    async def _replace_cluster_client(self, failed: Redis | RedisCluster) -> None:
        """A Cluster client that found no node reachable, or a slot uncovered, can stay stuck in
        that state (redis-py 5 drops the nodes it failed to reach from its startup list): start
        again from the configured nodes. Only once for the calls that failed together."""
        if self._client is not failed or self._closed:
            return
        self._client = self._connect()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                await failed.aclose()

    async def _forget_idle_connections(self) -> None:
        """After a lost connection, close the pool's idle ones too: they went to the same server and
        most likely died with it (older redis-py hands out a connection closed by the server without
        noticing). The next calls then connect afresh instead of each failing once. A Cluster client
        replaces its node connections itself."""
        if isinstance(self._client, RedisCluster):
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                await self._client.connection_pool.disconnect(inuse_connections=False)

    def _unavailable(self, what: str, error: BaseException) -> StoreUnavailable:
        message = f"{type(error).__name__}: {error}"
        if self._password:  # a server or library message must never carry the password on
            message = message.replace(self._password, "***")
        return StoreUnavailable(f"redis {self.target}: {what} failed: {message}")
