"""Attributes a package imports only when first used (PEP 562), so light imports stay light.

The one lazy-import mechanism of editspec: `editspec` itself, `editspec.blackbox`, the locate
family and the backend packages expose torch-heavy names this way, so that `editspec check`
validates a spec and its settings without importing torch.

    >>> __getattr__ = lazy_attributes(__name__, ".rome", {"rome_deltas", "rank_one_update"})  # doctest: +SKIP
    >>> __getattr__ = lazy_names(__name__, {"compile_spec": "editspec.build.compiler"})        # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterable, Mapping


def lazy_names(package: str, modules: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` that imports `modules[name]` (relative to `package`) for `name`."""
    table = dict(modules)

    def __getattr__(name: str) -> object:
        if name in table:
            return getattr(importlib.import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_attributes(package: str, module: str, names: Iterable[str]) -> Callable[[str], object]:
    """A module-level `__getattr__` that imports `module` (relative to `package`) for `names`."""
    return lazy_names(package, {name: module for name in names})
