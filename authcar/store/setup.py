"""The store the settings ask for, and what readiness says about it.

Readiness reports the store but never fails because of it: every replica shares one Redis, so a
failing check would take every pod out of the Service at once, while each use of the store already
has its own answer for an outage (docs/decisions.md, "The shared store"). The same reasoning keeps
a failed policy reload green (decision 12).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authcar.config import Settings
from authcar.store.base import Store, StoreUnavailable
from authcar.store.memory import MemoryStore

if TYPE_CHECKING:
    from authcar.store.redis import OnCall


def store_from_settings(settings: Settings, on_call: OnCall | None = None) -> Store:
    """Redis when AUTHCAR_REDIS_URL is set, else this process's memory. Connects on first use.
    `on_call` hears of every Redis call (the memory store's calls take microseconds: not timed)."""
    if settings.redis_url is None:
        return MemoryStore()
    # Imported here: redis-py costs a worker ~8 MiB of memory, which one without Redis need not pay.
    from authcar.store.redis import RedisOptions, RedisStore

    options = RedisOptions(
        settings.redis_url,
        password=settings.redis_password,
        ca_file=settings.redis_ca_file,
        key_prefix=settings.redis_key_prefix,
        timeout=settings.redis_timeout,
    )
    return RedisStore(options, on_call)


async def store_readiness(store: Store) -> dict[str, Any]:
    """The `store` entry of /readyz: which backend, and whether it answers right now."""
    target = getattr(store, "target", None)  # a RedisStore's host(s), for the operator
    where = "this process's memory" if target is None else str(target)
    try:
        await store.ping()
    except StoreUnavailable as error:
        return {"ok": True, "backend": store.name, "reachable": False, "detail": str(error)}
    return {"ok": True, "backend": store.name, "reachable": True, "detail": where}
