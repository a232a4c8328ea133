"""State behind one interface: an async key-value store with TTLs.

Only the in-memory backend exists (one per process, so not shared between workers or replicas); a
Redis backend that all replicas share arrives with the shared-state work, behind the same interface.
"""

from authcar.store.base import MAX_KEY_BYTES, MAX_TTL, MAX_VALUE_BYTES, Store, StoreUnavailable
from authcar.store.memory import MemoryStore

__all__ = ["MAX_KEY_BYTES", "MAX_TTL", "MAX_VALUE_BYTES", "MemoryStore", "Store", "StoreUnavailable"]
