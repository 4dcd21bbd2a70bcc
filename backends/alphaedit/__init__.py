"""AlphaEdit: MEMIT's targets with a null-space-projected update, for sequential editing (§4)."""
from .alphaedit import AlphaEditConfig, AlphaEditState, alphaedit_deltas, alphaedit_update, nullspace_projector

__all__ = ["AlphaEditConfig", "AlphaEditState", "alphaedit_deltas", "alphaedit_update", "nullspace_projector"]
