"""`melo`: neuron-indexed dynamic LoRA (MELO, ALGORITHMS.md §5.2): routed LoRA blocks per edit batch.

The settings import without torch; the backend class lives in `.backend`.
"""
from .config import MeloConfig

__all__ = ["MeloConfig"]
