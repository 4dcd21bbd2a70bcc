"""The `memit` backend: every edit in one batch, spread over several layers."""
from __future__ import annotations

from editspec.model.layout import layout_for
from editspec.families.locate.backend import LocateBackend

from .config import CAPABILITIES, MemitConfig, default_layers
from .memit import memit_deltas


class MemitBackend(LocateBackend):
    """Many facts at once: one update of rank ≤ n per edited layer."""

    name = "memit"
    config_class = MemitConfig
    capabilities = CAPABILITIES

    def stats_layers(self, config: MemitConfig, model) -> list[int]:
        return list(config.layers or default_layers(layout_for(model).num_layers(model)))

    def edit(self, job, requests):
        loaded = job.model
        config = job.config
        if config.layers is None:
            config = config.model_copy(update={"layers": tuple(self.stats_layers(config, loaded.model))})
        return memit_deltas(loaded.model, loaded.tokenizer, requests, config,
                            stats=job.prepared["stats"], templates=job.prepared["templates"], **self.held_keep(job))
