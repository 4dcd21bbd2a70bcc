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
        keep = None
        if config.preserve_keep:
            from editspec.families.locate.backend import keep_texts
            from editspec.model.chat import chat_enabled

            keep = keep_texts(job.edits, job.spec.relations, loaded.tokenizer,
                              chat=chat_enabled(loaded.tokenizer, config.chat))
            job.progress(f"memit: {len(keep)} keep text(s) held in place")
        return memit_deltas(loaded.model, loaded.tokenizer, requests, config,
                            stats=job.prepared["stats"], templates=job.prepared["templates"], keep=keep)
