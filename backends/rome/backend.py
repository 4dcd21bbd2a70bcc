"""The `rome` backend: ROME (R-ROME form by default), one rank-one update per edit."""
from __future__ import annotations

from editspec.families.locate.backend import LocateBackend

from .config import CAPABILITIES, RomeConfig
from .rome import rome_deltas


class RomeBackend(LocateBackend):
    """Edits one fact at a time at one MLP layer (`layer auto` picks it per fact)."""

    name = "rome"
    config_class = RomeConfig
    capabilities = CAPABILITIES

    def stats_layers(self, config: RomeConfig, model) -> list[int]:
        return list(config.auto_layers) if config.layer == "auto" else [config.layer]

    def edit(self, job, requests):
        loaded = job.model
        return rome_deltas(loaded.model, loaded.tokenizer, requests, job.config,
                           stats=job.prepared["stats"], templates=job.prepared["templates"], **self.held_keep(job))
