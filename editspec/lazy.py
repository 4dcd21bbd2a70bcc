"""Attributes a package imports only when first used (PEP 562), so light imports stay light.

Backend packages expose their torch-free settings directly and their torch-heavy math lazily:
`editspec check` validates settings without importing torch.

    >>> __getattr__ = lazy_attributes(__name__, ".rome", {"rome_deltas", "rank_one_update"})  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterable


def lazy_attributes(package: str, module: str, names: Iterable[str]) -> Callable[[str], object]:
    """A module-level `__getattr__` that imports `module` (relative to `package`) for `names`."""
    wanted = frozenset(names)

    def __getattr__(name: str) -> object:
        if name in wanted:
            return getattr(importlib.import_module(module, package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
