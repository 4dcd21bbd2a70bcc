"""MEMIT: many facts at once, the update spread over several layers (ALGORITHMS.md §2)."""
from .memit import MemitConfig, default_layers, memit_deltas, memit_update

__all__ = ["MemitConfig", "default_layers", "memit_deltas", "memit_update"]
