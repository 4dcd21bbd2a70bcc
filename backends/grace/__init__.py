"""`grace`: a codebook of keys with deferral radii at one layer (GRACE, ALGORITHMS.md §5.1).

The settings import without torch; the backend class lives in `.backend`.
"""
from .config import GraceConfig, MemorySettings

__all__ = ["GraceConfig", "MemorySettings"]
