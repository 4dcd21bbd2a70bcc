"""ROME: one rank-one update per fact at one MLP value projection (ALGORITHMS.md §1).

The settings import without torch (for `editspec check`); the update math loads on first use.
"""
from .config import RomeConfig

_MATH = {"rank_one_update", "rome_deltas"}


def __getattr__(name):
    if name in _MATH:
        from . import rome

        return getattr(rome, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RomeConfig", *sorted(_MATH)]
