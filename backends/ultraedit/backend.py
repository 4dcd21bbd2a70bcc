"""The `ultraedit` backend: lifelong edits in closed form, one forward-backward per `--on` turn.

The payload is the deltas of every turn (`delta.safetensors`, low-rank factors: rank = the
turn's answer tokens) and the lifelong normalisation's running statistics
(`ultraedit_norm.safetensors`, two vectors per edited layer), which the next `--on` turn
continues.  Nothing else grows: a turn costs the same at edit 100 and edit 10,000.
"""
from __future__ import annotations

import json

from editspec.build.artifact import Artifact
from editspec.build.backend import CompileJob, CompileResult
from editspec.families.locate.backend import DeltaBackend

from .config import CAPABILITIES, UltraEditConfig

NORM = "ultraedit_norm.safetensors"


class UltraEditBackend(DeltaBackend):
    """Training-free: keys and value gradients from one pass, a ridge solve per layer."""

    name = "ultraedit"
    config_class = UltraEditConfig
    capabilities = CAPABILITIES

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
                                              read_norm(job.previous) if job.previous is not None else None)
        self.save_stage(job, deltas)
        write_norm(job.workdir / NORM, norm)
        edits = [{"id": edit.id} for edit in job.edits]
        return CompileResult(files=["delta.safetensors", NORM], edits=edits, details={"layers": logs})


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
