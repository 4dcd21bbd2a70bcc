"""ROME: one rank-one update per fact at one MLP value projection (docs/methods/rome.md).

The settings import without torch (for `editspec check`); the update math loads on first use.
"""
from editspec.lazy import lazy_attributes

from .config import RomeConfig

_MATH = {"rank_one_update", "rome_deltas"}

__getattr__ = lazy_attributes(__name__, ".rome", _MATH)

__all__ = ["RomeConfig", *sorted(_MATH)]
