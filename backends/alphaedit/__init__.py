"""AlphaEdit: MEMIT's targets with a null-space-projected update, for sequential editing
(docs/methods/alphaedit.md).

The settings import without torch (for `editspec check`); the update math loads on first use.
"""
from editspec.lazy import lazy_attributes

from .config import AlphaEditConfig

_MATH = {"AlphaEditState", "alphaedit_deltas", "alphaedit_update", "nullspace_projector"}

__getattr__ = lazy_attributes(__name__, ".alphaedit", _MATH)

__all__ = ["AlphaEditConfig", *sorted(_MATH)]
