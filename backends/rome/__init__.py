"""ROME: one rank-one update per fact at one MLP value projection (ALGORITHMS.md §1)."""
from .rome import RomeConfig, rank_one_update, rome_deltas

__all__ = ["RomeConfig", "rank_one_update", "rome_deltas"]
