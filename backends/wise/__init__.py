"""`wise`: side memories at one MLP value projection, routed by an activation margin (docs/methods/wise.md).

The settings import without torch; the backend class lives in `.backend`, the memory in `.memory`.
"""
from .config import WiseConfig

__all__ = ["WiseConfig"]
