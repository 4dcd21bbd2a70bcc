"""The `ultraedit` backend: lifelong edits in closed form, one forward-backward per `--on` turn and pass.

The payload is the deltas of every turn (`delta.safetensors`: low-rank factors, rank = the
turn's rows, until a module's factors outgrow its dense update, which then replaces them) and
the lifelong normalisation's running statistics (`ultraedit_norm.safetensors`, two vectors per
edited layer), which the next `--on` turn continues.  `prepare` reads the unedited model's key
statistics C (cached per model).  Nothing grows past the dense size: a turn costs the same at
edit 100 and edit 10,000 (docs/methods/ultraedit.md).
"""
from __future__ import annotations

import json

from editspec.build.artifact import Artifact
from editspec.build.backend import CompileJob, CompileResult
from editspec.families.locate.backend import DeltaBackend

from .config import CAPABILITIES, UltraEditConfig

NORM = "ultraedit_norm.safetensors"


class UltraEditBackend(DeltaBackend):
    """Training-free: keys and value gradients from one pass, a closed-form solve per layer."""

    name = "ultraedit"
    config_class = UltraEditConfig
    capabilities = CAPABILITIES

    def save_stage(self, job: CompileJob, deltas) -> None:
        """The earlier turns' deltas and this turn's, each module's merged once it is cheaper dense."""
        from editspec.build.artifact import DELTAS
        from editspec.model.deltas import load_deltas, save_deltas

        earlier = load_deltas(job.previous.file(DELTAS))[0] if job.previous is not None else []
        save_deltas(consolidated([*earlier, *deltas]), job.workdir / DELTAS, metadata={"backend": self.name})

    def prepare(self, job: CompileJob) -> dict:
        """The unedited model's key statistics C of every edited layer (when `mom2_weight` > 0)."""
        config: UltraEditConfig = job.config
        if config.mom2_weight <= 0:
            return {}
        from editspec.model.stats import second_moments

        job.progress(f"key statistics for layer(s) {', '.join(map(str, config.layers))}")
        return {"stats": second_moments(job.model, layers=config.layers, samples=config.mom2_samples,
                                        corpus=config.mom2_corpus)}

    def compile(self, job: CompileJob) -> CompileResult:
        from editspec.families.memory.backend import edit_keys, require_edits

        from .ultraedit import ultraedit_deltas

        config: UltraEditConfig = job.config
        require_edits(job, self.name)
        loaded = job.model
        texts = edit_keys(job)
        keep = keep_keys(job)
        job.progress(f"ultraedit: {len(texts)} edit prompt(s), {len(keep)} keep fact(s)")
        deltas, norm, logs = ultraedit_deltas(loaded.model, loaded.tokenizer, texts, keep, config,
                                              read_norm(job.previous) if job.previous is not None else None,
                                              stats=(job.prepared or {}).get("stats"))
        self.save_stage(job, deltas)
        write_norm(job.workdir / NORM, norm)
        edits = [{"id": edit.id} for edit in job.edits]
        return CompileResult(files=["delta.safetensors", NORM], edits=edits, details={"layers": logs})


def consolidated(deltas):
    """`deltas` with every module's deltas merged into one full-rank delta once their summed rank
    passes d_v (then the factors hold more numbers than the dense form): the payload then stops
    growing with the chain.

    The merged delta is ``I [d_v, d_v] @ ΣΔW`` (summed in float64, stored in the factors'
    dtype), so attaching still adds exactly what is stored and reverting stays bit-exact; a
    module whose deltas are still small keeps them as they are, low-rank and in order.
    """
    import torch

    from editspec.model.deltas import Delta

    by_module: dict[str, list] = {}
    for d in deltas:
        by_module.setdefault(d.module, []).append(d)
    merging = {module for module, group in by_module.items() if sum(d.rank for d in group) > group[0].left.shape[0]}
    found = []
    for d in deltas:
        if d.module not in merging:
            found.append(d)
        elif d is by_module[d.module][0]:  # the merged delta takes the module's first place
            group = by_module[d.module]
            total = sum(g.dense(torch.float64) for g in group)
            found.append(Delta(d.module, torch.eye(total.shape[0], dtype=d.left.dtype), total.to(d.left.dtype)))
    return found


def keep_keys(job: CompileJob):
    """Keys the update must leave alone: the new edits' keep facts (teacher-forced, at their answer
    positions) and every position of `preserve_docs` documents of general text."""
    from editspec.families.memory.codebook import KeyedText, teacher_forced
    from editspec.families.training.objectives import Target
    from editspec.families.training.tuning import encode_targets

    config: UltraEditConfig = job.config
    tokenizer = job.model.tokenizer
    targets = [Target(prompt, fact.answer, "good", edit.id) for edit in job.edits for fact in edit.keep
               for prompt in fact.prompts]
    found = teacher_forced(tokenizer, encode_targets(tokenizer, targets)) if targets else []
    if config.preserve_docs:
        from editspec.model.corpus import load_corpus

        for doc in load_corpus(config.preserve_corpus).sample(config.preserve_docs):
            ids = tuple(tokenizer(doc, add_special_tokens=True)["input_ids"][: config.preserve_tokens])
            if ids:
                found.append(KeyedText("general text", ids, tuple(range(len(ids))), ids))
    return found


def write_norm(path, norm) -> None:
    """The running statistics, with deterministic bytes (one metadata entry)."""
    from safetensors.torch import save

    meta = json.dumps({"format": "editspec.ultraedit_norm", "format_version": "1"}, sort_keys=True)
    path.write_bytes(save(dict(sorted(norm.tensors().items())), metadata={"editspec": meta}))


def read_norm(artifact: Artifact):
    from safetensors.torch import load_file

    from .ultraedit import LifelongNorm

    return LifelongNorm.from_tensors(load_file(str(artifact.file(NORM))))
