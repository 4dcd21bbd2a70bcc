"""`melo`: neuron-indexed dynamic LoRA (MELO, docs/methods/melo.md): routed LoRA blocks per edit batch.

The settings import without torch; the backend class lives in `.backend`.
"""
from .config import MeloConfig

__all__ = ["MeloConfig"]
