"""Shared state for all replicas: an async key-value store with TTLs (in memory, or Redis)."""

from authcar.store.base import MAX_KEY_BYTES, MAX_TTL, MAX_VALUE_BYTES, Store, StoreUnavailable
from authcar.store.memory import MemoryStore

__all__ = ["MAX_KEY_BYTES", "MAX_TTL", "MAX_VALUE_BYTES", "MemoryStore", "Store", "StoreUnavailable"]
