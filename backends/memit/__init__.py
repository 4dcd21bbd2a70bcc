"""MEMIT: many facts at once, the update spread over several layers (ALGORITHMS.md §2).

The settings import without torch (for `editspec check`); the update math loads on first use.
"""
from .config import MemitConfig, default_layers

_MATH = {"memit_deltas", "memit_update"}


def __getattr__(name):
    if name in _MATH:
        from . import memit

        return getattr(memit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MemitConfig", "default_layers", *sorted(_MATH)]
