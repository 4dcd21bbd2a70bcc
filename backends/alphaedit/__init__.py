"""AlphaEdit: MEMIT's targets with a null-space-projected update, for sequential editing (§4).

The settings import without torch (for `editspec check`); the update math loads on first use.
"""
from .config import AlphaEditConfig

_MATH = {"AlphaEditState", "alphaedit_deltas", "alphaedit_update", "nullspace_projector"}


def __getattr__(name):
    if name in _MATH:
        from . import alphaedit

        return getattr(alphaedit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AlphaEditConfig", *sorted(_MATH)]
