"""`ft`: fine-tuning on the spec's objectives with KL to the unedited model (LoRA by default).

The settings import without torch; the backend class lives in `.backend`.
"""
from .config import FtConfig, TrainingSettings

__all__ = ["FtConfig", "TrainingSettings"]
