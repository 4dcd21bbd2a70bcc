"""MEMIT: many facts at once, the update spread over several layers (docs/methods/memit.md).

The settings import without torch (for `editspec check`); the update math loads on first use.
"""
from editspec.lazy import lazy_attributes

from .config import MemitConfig, default_layers

_MATH = {"memit_deltas", "memit_update"}

__getattr__ = lazy_attributes(__name__, ".memit", _MATH)

__all__ = ["MemitConfig", "default_layers", *sorted(_MATH)]
