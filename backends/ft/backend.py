"""The `ft` backend: fine-tuning with KL to the unedited model, LoRA through peft by default.

`method lora`: a peft LoRA adapter on the MLP projections of `layers`; the artifact's
`adapter/` loads with plain ``PeftModel.from_pretrained(base, "ARTIFACT/adapter")``.
`method full`: the same MLP weights are trained directly; the artifact holds their dense
updates in `delta.safetensors` (each stored exactly, as ``I @ Δ``, in float64).
`--on PREVIOUS` continues training the previous adapter (or adds to its deltas).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from editspec.build.artifact import ADAPTER_DIR, DELTAS, Artifact
from editspec.build.backend import Attachment, CompileJob, CompileResult
from editspec.errors import EditspecError
from editspec.model.layout import layout_for, module_at
from editspec.families.training.backend import TrainingBackend

from .config import CAPABILITIES, FtConfig

class PeftAttachment(Attachment):
    """A peft adapter on a base model; `revert()` unloads it (the base weights were never touched)."""

    def __init__(self, base: nn.Module, peft_model):
        self.base, self.model, self.reverted = base, peft_model, False

    def revert(self) -> None:
        if self.reverted:
            return
        self.model.unload()
        _clear_peft_marks(self.base)
        self.reverted = True


def _has_peft_marks(base: nn.Module) -> bool:
    # What peft leaves on a model it injected into (and `_clear_peft_marks` removes on revert).
    return any(name in base.__dict__ for name in ("peft_config", "_hf_peft_config_loaded"))


def _clear_peft_marks(base: nn.Module) -> None:
    # peft records its config on the model it injected into; a reverted base carries none of it.
    for name in ("peft_config", "_hf_peft_config_loaded"):
        if name in base.__dict__:
            delattr(base, name)


def mlp_module_paths(model: nn.Module, layers, modules: str) -> list[str]:
    """Dotted paths of the linear projections to train (`modules`: "mlp" or "mlp_out").

    >>> mlp_module_paths(model, (1,), "mlp_out")               # doctest: +SKIP
    ['model.layers.1.mlp.down_proj']
    """
    layout = layout_for(model)
    count = layout.num_layers(model)
    if layers == "auto":
        layers = range(int(round(0.1 * count)), max(int(round(0.9 * count)), int(round(0.1 * count)) + 1))
    paths = []
    for layer in layers:
        if layer >= count:
            raise EditspecError(f"layer {layer} does not exist: the model has {count} layers (0..{count - 1})")
        if modules == "mlp_out":
            paths.append(layout.mlp_out_at(layer))
            continue
        root = layout.mlp_at(layer)
        for name, child in module_at(model, root).named_modules():
            if name and _is_projection(child):
                paths.append(f"{root}.{name}")
    return paths


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


class FtBackend(TrainingBackend):
    """Fine-tunes on edits, canonical examples and forget blocks; KL keeps the rest in place."""

    name = "ft"
    config_class = FtConfig
    capabilities = CAPABILITIES

    def default_lr(self, config: FtConfig) -> float:
        # LoRA tolerates (and needs) larger steps than training the weights themselves.
        return 2e-3 if config.method == "lora" else 5e-5

    def compile(self, job: CompileJob) -> CompileResult:
        config: FtConfig = job.config
        if config.method == "full":
            log, files = self._full(job)
        else:
            log, files = self._lora(job)
        return CompileResult(files=files, edits=self.edit_logs(job, log), details=self.details(job, log))

    # -- LoRA ------------------------------------------------------------------------------
    def _lora(self, job: CompileJob) -> tuple[dict, list[str]]:
        from peft import LoraConfig, get_peft_model

        config: FtConfig = job.config
        base = job.model.model
        if job.previous is not None:
            # `--on`: train the previous adapter further; the compiler attached it and reverts it.
            if not isinstance(job.attachment, PeftAttachment):
                raise EditspecError(f"the adapter of {job.previous.path} is not attached to the model")
            peft_model, owned = job.attachment.model, False
        else:
            paths = mlp_module_paths(base, config.layers, config.modules)
            lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                              target_modules=paths, bias="none")
            with _quiet_peft():
                peft_model, owned = get_peft_model(base, lora), True
            _clear_base_model_path(peft_model)
        try:
            params = [p for name, p in peft_model.named_parameters() if "lora_" in name]
            log = self.run_training(job, peft_model, params)
            peft_model.save_pretrained(job.workdir / ADAPTER_DIR)
        finally:
            if owned:
                peft_model.unload()
                _clear_peft_marks(base)
        return log, [ADAPTER_DIR]

    # -- full fine-tuning ------------------------------------------------------------------
    def _full(self, job: CompileJob) -> tuple[dict, list[str]]:
        from editspec.model.deltas import load_deltas, save_deltas

        config: FtConfig = job.config
        base = job.model.model
        paths = mlp_module_paths(base, config.layers, config.modules)
        weights = {path: module_at(base, path).weight for path in paths}
        originals = {path: w.detach().clone() for path, w in weights.items()}
        try:
            log = self.run_training(job, base, list(weights.values()))
            deltas = [_exact_delta(path, originals[path], weights[path].detach(), module_at(base, path))
                      for path in paths]
        finally:
            with torch.no_grad():
                for path, w in weights.items():
                    w.copy_(originals[path])
        earlier = load_deltas(job.previous.file(DELTAS))[0] if job.previous is not None else []
        save_deltas([*earlier, *[d for d in deltas if d is not None]], job.workdir / DELTAS, metadata={"backend": "ft"})
        return log, [DELTAS]

    # -- using artifacts -------------------------------------------------------------------
    def attach(self, model: nn.Module, artifact: Artifact) -> Attachment:
        if artifact.config.get("method") == "full":
            from editspec.model.deltas import apply_deltas, load_deltas

            return apply_deltas(model, load_deltas(artifact.file(DELTAS))[0])
        return attach_adapter(model, artifact.file(ADAPTER_DIR))

    def merged(self, model: nn.Module, artifact: Artifact) -> nn.Module:
        attachment = self.attach(model, artifact)
        if isinstance(attachment, PeftAttachment):
            merged = attachment.model.merge_and_unload()
            _clear_peft_marks(merged)
            return merged
        return attachment.model


def attach_adapter(model: nn.Module, adapter_dir, *, trainable: bool = False) -> PeftAttachment:
    """Load the peft adapter in `adapter_dir` onto `model`; `.revert()` unloads it again."""
    from peft import PeftModel

    if _has_peft_marks(model):
        raise EditspecError("this model already has an adapter artifact attached; revert that one first")
    with _quiet_peft():
        loaded = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    return PeftAttachment(model, loaded)


@contextlib.contextmanager
def _quiet_peft():
    # peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a
    # FutureWarning on every adapter: noise in every `ft` compile and verify, not the user's to act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _clear_base_model_path(peft_model) -> None:
    # The adapter config records the base model's path; the artifact's manifest names the model,
    # and leaving the path out keeps the payload bytes the same wherever the model lies.
    for lora in peft_model.peft_config.values():
        lora.base_model_name_or_path = None


def _exact_delta(path: str, before: torch.Tensor, after: torch.Tensor, module: nn.Module):
    """`after - before` in float64, math order, as a `Delta` whose identity factor is the smaller side.

    None when the weight did not change.  Float32/bf16 values are exact in float64, so applying
    the delta (added in float64, rounded once) gives back `after` bit for bit.
    """
    from editspec.model.deltas import Delta

    diff = after.to(torch.float64) - before.to(torch.float64)
    if type(module).__name__ == "Conv1D":  # stored [d_k, d_v]
        diff = diff.T
    if not bool(diff.any()):
        return None
    rows, cols = diff.shape
    if rows <= cols:
        return Delta(path, torch.eye(rows, dtype=torch.float64), diff.contiguous())
    return Delta(path, diff.contiguous(), torch.eye(cols, dtype=torch.float64))
