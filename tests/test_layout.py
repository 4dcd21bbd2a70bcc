"""Module locations per model type, and weights in math order."""
import pytest
import torch
from torch import nn

from editspec.errors import EditspecError
from editspec.model.layout import (
    Conv1D, SUPPORTED_MODEL_TYPES, UnsupportedModelError, add_to_value_weight, layout_for,
    module_at, output_head, projection_dims, value_weight,
)
from tiny import HIDDEN, INTERMEDIATE, LAYERS, TYPES, tiny_config, tiny_model


@pytest.mark.parametrize("model_type", TYPES)
def test_every_path_resolves(model_type):
    model = tiny_model(model_type)
    layout = layout_for(model)
    assert layout_for(model.config) is layout
    assert layout.num_layers(model) == LAYERS
    for layer in range(LAYERS):
        for path in (layout.block_at(layer), layout.mlp_at(layer), layout.mlp_out_at(layer)):
            module_at(model, path)
    for path in (layout.embed, layout.final_norm, layout.lm_head):
        module_at(model, path)
    proj = module_at(model, layout.mlp_out_at(0))
    assert projection_dims(proj) == (HIDDEN, INTERMEDIATE)
    weight, _ = output_head(model)
    assert weight.shape[1] == HIDDEN


def test_supported_types_include_the_required_ones():
    assert {"llama", "gemma3_text", "gpt2", "gpt_neox", "qwen2", "mistral"} <= set(SUPPORTED_MODEL_TYPES)


def test_unsupported_type_lists_supported():
    from transformers import AutoConfig
    with pytest.raises(UnsupportedModelError) as err:
        layout_for(AutoConfig.for_model("bert"))
    assert "llama" in str(err.value) and "gpt2" in str(err.value)
    assert isinstance(err.value, EditspecError)


def test_misspelt_module_path_suggests():
    model = tiny_model("llama")
    with pytest.raises(EditspecError) as err:
        module_at(model, "model.layers.0.mlp.down_prj")
    assert "down_proj" in str(err.value)


def test_conv1d_branch_is_by_type_not_shape():
    # A square Conv1D: a shape test could not tell the orientation; the type can.
    torch.manual_seed(0)
    conv = Conv1D(8, 8).double()
    lin = nn.Linear(8, 8).double()
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.allclose(conv(x), lin(x))
    delta = torch.randn(8, 8, dtype=torch.float64)
    before_c, before_l = conv(x), lin(x)
    add_to_value_weight(conv, delta)
    add_to_value_weight(lin, delta)
    assert torch.allclose(conv(x) - before_c, x @ delta.T)
    assert torch.allclose(lin(x) - before_l, x @ delta.T)
    assert torch.equal(value_weight(conv), value_weight(lin))
