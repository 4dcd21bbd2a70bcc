"""Where things live inside a model, by `config.model_type` (never by model name).

A `ModelLayout` is data: path templates such as ``"model.layers.{}.mlp.down_proj"`` that
`module_at` resolves.  The value projection ("mlp_out") is the weight the locate-then-edit
methods change; its input at a token is the key ``k`` and its output the value.

Weights are always handled in math order ``[d_v, d_k]`` (out × in).  HF's GPT-2 `Conv1D`
stores the transpose, so the helpers here branch on the module's *type*: a shape test would
pass silently on the wrong orientation for square weights.

Example::

    layout = layout_for(model)
    proj = module_at(model, layout.mlp_out_at(5))
    W = value_weight(proj)            # [d_v, d_k]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editspec.errors import EditspecError, did_you_mean, suggest

try:  # Conv1D moved between transformers releases; both spellings are the same class.
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old transformers
    from transformers.modeling_utils import Conv1D  # type: ignore[no-redef]


class UnsupportedModelError(EditspecError):
    """The model's `config.model_type` has no known layout."""


@dataclass(frozen=True)
class ModelLayout:
    """Module path templates for one model family; ``{}`` stands for the layer index."""

    model_type: str
    block: str  # decoder layer; its output is the residual stream h^l
    mlp: str  # the whole MLP; ROME adds its trainable vector to this module's output
    mlp_out: str  # value projection: key k (its input) -> value (its output)
    embed: str  # token embedding
    final_norm: str  # norm applied before the output head
    lm_head: str  # output head (may share its weight with `embed`)
    num_layers_attr: str = "num_hidden_layers"

    def block_at(self, layer: int) -> str:
        """The path of decoder layer `layer`."""
        return self.block.format(layer)

    def mlp_at(self, layer: int) -> str:
        """The path of the MLP of layer `layer`."""
        return self.mlp.format(layer)

    def mlp_out_at(self, layer: int) -> str:
        """The path of the value projection of layer `layer`."""
        return self.mlp_out.format(layer)

    def num_layers(self, config_or_model) -> int:
        """The number of decoder layers, read from the config."""
        config = getattr(config_or_model, "config", config_or_model)
        config = _text_config(config)
        return int(getattr(config, self.num_layers_attr))


def _llama_like(model_type: str) -> ModelLayout:
    return ModelLayout(
        model_type=model_type,
        block="model.layers.{}",
        mlp="model.layers.{}.mlp",
        mlp_out="model.layers.{}.mlp.down_proj",
        embed="model.embed_tokens",
        final_norm="model.norm",
        lm_head="lm_head",
    )


LAYOUTS: dict[str, ModelLayout] = {
    **{t: _llama_like(t) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")},
    "gpt2": ModelLayout(
        model_type="gpt2",
        block="transformer.h.{}",
        mlp="transformer.h.{}.mlp",
        mlp_out="transformer.h.{}.mlp.c_proj",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
    ),
    "gpt_neox": ModelLayout(
        model_type="gpt_neox",
        block="gpt_neox.layers.{}",
        mlp="gpt_neox.layers.{}.mlp",
        mlp_out="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="lm_head",  # `embed_out` before transformers 5; `output_head` finds either
    ),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(LAYOUTS))


def _text_config(config):
    # Multimodal wrappers keep the language model's settings in a sub-config.
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def layout_for(config_or_model) -> ModelLayout:
    """The layout for a model or a config, chosen by `config.model_type`.

    Raises `UnsupportedModelError` listing the supported types.

    >>> layout_for(model).mlp_out_at(3)
    'model.layers.3.mlp.down_proj'
    """
    config = getattr(config_or_model, "config", config_or_model)
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        text_type = getattr(_text_config(config), "model_type", None)
        if text_type in LAYOUTS and isinstance(config_or_model, nn.Module):
            return LAYOUTS[text_type]
        close = suggest(str(model_type), SUPPORTED_MODEL_TYPES)
        hint = f"did you mean `{close}`?" if close else None
        raise UnsupportedModelError(
            f"model type `{model_type}` is not supported for weight editing; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
            hint=hint,
        )
    return LAYOUTS[model_type]


def module_at(model: nn.Module, path: str) -> nn.Module:
    """The submodule of `model` at dotted `path`; a clear `EditspecError` when absent.

    >>> module_at(model, "model.layers.0.mlp.down_proj")
    Linear(in_features=1536, out_features=576, bias=False)
    """
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        raise EditspecError(
            f"module `{path}` not found in {type(model).__name__}",
            hint=did_you_mean(path, names),
        ) from None


def _check_projection(module: nn.Module) -> None:
    if not isinstance(module, (nn.Linear, Conv1D)):
        raise EditspecError(
            f"cannot edit a {type(module).__name__}: value projections must be nn.Linear or Conv1D"
        )


def value_weight(module: nn.Module) -> torch.Tensor:
    """The projection's weight in math order ``[d_v, d_k]`` (a view, not a copy)."""
    _check_projection(module)
    weight = module.weight
    return weight.T if isinstance(module, Conv1D) else weight


def value_bias(module: nn.Module) -> torch.Tensor | None:
    """The projection's bias ``[d_v]``, or None."""
    _check_projection(module)
    return module.bias


def projection_dims(module: nn.Module) -> tuple[int, int]:
    """``(d_v, d_k)`` of a value projection."""
    d_v, d_k = value_weight(module).shape
    return int(d_v), int(d_k)


@torch.no_grad()
def add_to_value_weight(module: nn.Module, delta: torch.Tensor) -> None:
    """Add `delta` (math order ``[d_v, d_k]``) to the projection's stored weight in place."""
    weight = value_weight(module)
    if tuple(delta.shape) != tuple(weight.shape):
        raise EditspecError(
            f"delta of shape {tuple(delta.shape)} does not fit weight of shape {tuple(weight.shape)} "
            f"(math order [d_v, d_k])"
        )
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


@torch.no_grad()
def set_value_weight(module: nn.Module, new: torch.Tensor) -> None:
    """Overwrite the projection's weight with `new` (math order ``[d_v, d_k]``)."""
    weight = value_weight(module)
    if tuple(new.shape) != tuple(weight.shape):
        raise EditspecError(f"weight of shape {tuple(new.shape)} does not fit {tuple(weight.shape)}")
    weight.copy_(new.to(device=weight.device, dtype=weight.dtype))


def output_head(model: nn.Module, layout: ModelLayout | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output head's ``(weight [vocab, d_model], bias or None)``; tied heads included."""
    layout = layout or layout_for(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = module_at(model, layout.lm_head)
    return head.weight, getattr(head, "bias", None)
