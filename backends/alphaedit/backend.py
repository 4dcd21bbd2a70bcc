"""The `alphaedit` backend: MEMIT's targets, null-space-projected updates, made for `--on`.

The artifact carries, besides the deltas, the running sum of every earlier batch's keys per
layer (`alphaedit_state.safetensors`), so the next `--on` batch also keeps those in place.
"""
from __future__ import annotations

from safetensors.torch import load_file, save_file

from editspec.locate.backend import LocateBackend

from .alphaedit import AlphaEditState, alphaedit_deltas
from .config import AlphaEditConfig

STATE = "alphaedit_state.safetensors"


class AlphaEditBackend(LocateBackend):
    """Sequential batches whose updates leave the preserved keys' outputs unchanged."""

    name = "alphaedit"
    config_class = AlphaEditConfig

    def stats_layers(self, config: AlphaEditConfig, model) -> list[int]:
        return list(config.layers)

    def edit(self, job, requests):
        loaded = job.model
        result, state = alphaedit_deltas(loaded.model, loaded.tokenizer, requests, job.config,
                                         stats=job.prepared["stats"], state=self._state(job),
                                         templates=job.prepared["templates"])
        tensors = {f"preserved.{layer}": gram.contiguous() for layer, gram in sorted(state.preserved.items())}
        save_file(tensors, str(job.workdir / STATE), metadata={"edits": str(state.edits)})
        return result

    def extra_files(self, job) -> list[str]:
        return [STATE]

    @staticmethod
    def _state(job) -> AlphaEditState | None:
        if job.previous is None:
            return None
        from safetensors import safe_open

        path = job.previous.file(STATE)
        with safe_open(str(path), framework="pt") as handle:
            edits = int((handle.metadata() or {}).get("edits", 0))
        preserved = {int(name.split(".")[1]): gram for name, gram in load_file(str(path)).items()}
        return AlphaEditState(preserved=preserved, edits=edits)
