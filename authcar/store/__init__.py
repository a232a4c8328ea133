"""State behind one interface: an async key-value store with TTLs, rate limits, member sets and
sliding records.

Two backends: memory (one per process, so not shared between workers or replicas) and Redis (one
server, Sentinel or Cluster), which every replica shares; authcar.store.setup picks one from the
settings.
"""

from authcar.store.base import (
    MAX_KEY_BYTES,
    MAX_MEMBERS,
    MAX_TTL,
    MAX_VALUE_BYTES,
    Members,
    RateDecision,
    Store,
    StoreFull,
    StoreUnavailable,
)
from authcar.store.memory import MemoryStore

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_MEMBERS",
    "MAX_TTL",
    "MAX_VALUE_BYTES",
    "Members",
    "MemoryStore",
    "RateDecision",
    "Store",
    "StoreFull",
    "StoreUnavailable",
]
