"""The `sense` backend: sense fine-tuning (Hewitt et al. 2024, docs/methods/sense.md).

Backpack models: additive change vectors on the top-k senses of each target (by the
contextualization weight they receive, minus λ × their weight on background text), trained
with KL to the unedited model.  Payload `senses.safetensors` (word id, sense, change); it is
consulted at run time (`apply` refuses it: senses are computed by a network, not stored).

Ordinary transformers: the same idea on the top-k MLP value vectors per target (by
activation × gradient); only those columns of the value projections change.  Payload
`delta.safetensors` (``Δ @ onehot`` per module, exact), so `apply` merges it.
"""
from __future__ import annotations

import json

import torch

from editspec.build.artifact import DELTAS, Artifact
from editspec.build.backend import CompileJob, CompileResult
from editspec.errors import EditspecError
from editspec.model.layout import layout_for, module_at
from editspec.families.memory.backend import HookAttachment
from editspec.families.training.backend import TrainingBackend

from .config import CAPABILITIES, SenseConfig

SENSES = "senses.safetensors"


def install_senses(model, words: torch.Tensor, senses: torch.Tensor, changes) -> list:
    """Hooks adding ``changes[i]`` to sense ``senses[i]`` of every occurrence of word ``words[i]``."""
    from editspec.model.backpack import BackpackLM

    cell: dict = {}

    def note_ids(module, args, kwargs):
        cell["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def add(module, args, output):
        ids = cell.get("ids")
        if ids is None or tuple(ids.shape) != (output.shape[0], output.shape[2]):
            return output
        table = changes() if callable(changes) else changes
        match = ids[..., None] == words.to(ids.device)  # [b, s, n]
        if not bool(match.any()):
            return output  # no chosen word in the input: the unedited senses
        bump = torch.zeros_like(output)
        for i in match.any(dim=(0, 1)).nonzero()[:, 0].tolist():
            bump[:, int(senses[i])] += match[..., i, None].to(output.dtype) * table[i].to(output.dtype)
        return output + bump

    if not isinstance(model, BackpackLM):
        raise EditspecError("sense artifacts of a Backpack model attach only to a Backpack model")
    return [model.register_forward_pre_hook(note_ids, with_kwargs=True),
            model.backpack.sense_network.register_forward_hook(add)]


def install_values(model, chosen: dict[str, list[int]], changes: dict) -> list:
    """Hooks adding ``input[..., neurons] @ changes[path]`` to each value projection's output."""
    def make(path, neurons):
        index = torch.tensor(neurons)

        def add(module, args, output):
            table = changes[path]() if callable(changes[path]) else changes[path]
            picked = args[0][..., index.to(args[0].device)]
            return output + (picked.to(table.dtype) @ table).to(output.dtype)
        return add

    return [module_at(model, path).register_forward_hook(make(path, neurons)) for path, neurons in chosen.items()]


class SenseBackend(TrainingBackend):
    """Trains a handful of vectors per target: Backpack senses, or MLP value vectors."""

    name = "sense"
    config_class = SenseConfig
    capabilities = CAPABILITIES

    def default_lr(self, config) -> float:
        return 1e-2

    def compile(self, job: CompileJob) -> CompileResult:
        from editspec.model.backpack import is_backpack

        model = job.model.model
        if is_backpack(model):
            log, files, details = self._backpack(job)
        else:
            log, files, details = self._values(job)
        return CompileResult(files=files, edits=self.edit_logs(job, log), details={**self.details(job, log), **details})

    def _encoded(self, job: CompileJob):
        from editspec.families.training.tuning import encode_targets

        return encode_targets(job.model.tokenizer, job.prepared["objectives"].targets)

    def _backpack(self, job: CompileJob):
        from .select import backpack_senses

        config: SenseConfig = job.config
        model = job.model.model
        chosen = backpack_senses(model, self._encoded(job), job.prepared["anchors"], k=config.senses,
                                 background_weight=config.background_weight)
        words = torch.tensor([w for w, _ in chosen])
        senses = torch.tensor([s for _, s in chosen])
        change = torch.nn.Parameter(torch.zeros(len(chosen), model.config.n_embd))
        handles = install_senses(model, words, senses, lambda: change)
        try:
            log = self.run_training(job, model, [change])
        finally:
            for handle in handles:
                handle.remove()
        new = (words, senses, change.detach())
        if job.previous is not None:  # attached while training; the artifact holds both, earlier first
            earlier = _load_senses(job.previous.file(SENSES))
            new = tuple(torch.cat([old, now]) for old, now in zip(earlier, new))
        _save_senses(job.workdir / SENSES, *new)
        return log, [SENSES], {"senses": [[int(w), int(s)] for w, s in chosen]}

    def _values(self, job: CompileJob):
        from editspec.model.deltas import load_deltas, save_deltas

        from .select import value_vectors

        config: SenseConfig = job.config
        model = job.model.model
        layout = layout_for(model)
        count = layout.num_layers(model)
        layers = (range(int(round(0.1 * count)), max(int(round(0.9 * count)), 1)) if config.layers == "auto"
                  else config.layers)
        paths = [layout.mlp_out_at(layer) for layer in layers if layer < count]
        chosen = value_vectors(model, self._encoded(job), paths, k=config.senses)
        params = {}
        for path, neurons in chosen.items():
            d_out = _out_features(module_at(model, path))
            params[path] = torch.nn.Parameter(torch.zeros(len(neurons), d_out))
        handles = install_values(model, chosen, {p: (lambda t=t: t) for p, t in params.items()})
        try:
            log = self.run_training(job, model, list(params.values()))
        finally:
            for handle in handles:
                handle.remove()
        deltas = [_value_delta(path, chosen[path], params[path].detach(), module_at(model, path)) for path in chosen]
        earlier = load_deltas(job.previous.file(DELTAS))[0] if job.previous is not None else []
        save_deltas([*earlier, *deltas], job.workdir / DELTAS, metadata={"backend": "sense"})
        return log, [DELTAS], {"value_vectors": {p: n for p, n in chosen.items()}}

    def attach(self, model, artifact: Artifact):
        if (artifact.path / SENSES).is_file():
            words, senses, changes = _load_senses(artifact.file(SENSES))
            return HookAttachment(model, install_senses(model, words, senses, changes))
        from editspec.model.deltas import apply_deltas, load_deltas

        return apply_deltas(model, load_deltas(artifact.file(DELTAS))[0])

    def merged(self, model, artifact: Artifact):
        if (artifact.path / SENSES).is_file():
            raise EditspecError("Backpack sense changes are applied at run time; they cannot be merged into weights",
                                hint="use the artifact with `editspec.load_edited(model, ARTIFACT)`")
        return self.attach(model, artifact).model


def _out_features(module) -> int:
    return module.weight.shape[1] if type(module).__name__ == "Conv1D" else module.weight.shape[0]


def _value_delta(path: str, neurons: list[int], change: torch.Tensor, module):
    """``change`` [k, d_out] on columns `neurons` as a `Delta`: left ``changeᵀ``, right one-hot rows."""
    from editspec.model.deltas import Delta

    d_in = module.weight.shape[0] if type(module).__name__ == "Conv1D" else module.weight.shape[1]
    right = torch.zeros(len(neurons), d_in, dtype=torch.float64)
    right[torch.arange(len(neurons)), torch.tensor(neurons)] = 1.0
    return Delta(path, change.T.to(torch.float64).contiguous(), right)


def _save_senses(path, words, senses, changes) -> None:
    from safetensors.torch import save

    meta = {"format": "editspec.senses", "format_version": "1"}
    tensors = {"words": words.contiguous(), "senses": senses.contiguous(), "changes": changes.float().contiguous()}
    path.write_bytes(save(dict(sorted(tensors.items())), metadata={"editspec": json.dumps(meta, sort_keys=True)}))


def _load_senses(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if json.loads((f.metadata() or {}).get("editspec", "{}")).get("format") != "editspec.senses":
            raise EditspecError(f"{path} is not an editspec sense file")
        return f.get_tensor("words"), f.get_tensor("senses"), f.get_tensor("changes")
