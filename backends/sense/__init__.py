"""`sense`: sense fine-tuning on Backpack models, or on the most relevant MLP value vectors otherwise.

The settings import without torch; the backend class lives in `.backend`.
"""
from .config import SenseConfig

__all__ = ["SenseConfig"]
