"""UltraEdit: lifelong edits from one forward-backward and a closed-form ridge solve (docs/methods/ultraedit.md).

The settings import without torch (for `editspec check`); the update math loads on first use.
"""
from editspec.lazy import lazy_attributes

from .config import UltraEditConfig

_MATH = {"LifelongNorm", "edit_features", "ultraedit_deltas", "ultraedit_update"}

__getattr__ = lazy_attributes(__name__, ".ultraedit", _MATH)

__all__ = ["UltraEditConfig", *sorted(_MATH)]
