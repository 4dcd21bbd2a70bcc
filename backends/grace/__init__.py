"""`grace`: a codebook of keys with deferral radii at one layer (GRACE, docs/methods/grace.md).

The settings import without torch; the backend class lives in `.backend`.
"""
from .config import GraceConfig, MemorySettings

__all__ = ["GraceConfig", "MemorySettings"]
