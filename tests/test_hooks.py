"""Hooks record, add and stop, and always remove themselves."""
import pytest
import torch

from editspec.model.hooks import add_to_output, gather_positions, record_inputs, record_outputs, run_until
from editspec.model.layout import layout_for, module_at
from tiny import TYPES, tiny_model


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("model_type", TYPES)
def test_add_to_block_output_changes_only_later_positions(model_type):
    model = tiny_model(model_type)
    layout = layout_for(model)
    ids = torch.tensor([[5, 9, 13, 17, 21, 25]])
    base = model(ids).logits
    vec = torch.randn(1, 32, dtype=torch.float64)
    with add_to_output(model, layout.block_at(1), vec, torch.tensor([3])):
        bumped = model(ids).logits
    assert torch.equal(bumped[:, :3], base[:, :3])
    assert not torch.allclose(bumped[:, 3:], base[:, 3:])
    assert torch.equal(model(ids).logits, base) and _no_hooks(model)


def test_add_to_output_value_is_exact_and_trainable():
    model = tiny_model("llama")
    path = layout_for(model).mlp_out_at(0)
    ids = torch.tensor([[5, 9, 13], [7, 8, 9]])
    with record_outputs(model, [path]) as seen:
        model(ids)
    before = seen[path].clone()
    vec = torch.zeros(2, 32, dtype=torch.float64, requires_grad=True)
    with add_to_output(model, path, vec + 1.0, torch.tensor([1, -1])), record_outputs(model, [path]) as seen:
        out = model(ids).logits.sum()
    out.backward()
    assert torch.equal(seen[path][0, 1], before[0, 1] + 1.0)
    assert torch.equal(seen[path][1], before[1])  # position -1: row untouched
    assert vec.grad is not None and vec.grad[0].abs().sum() > 0 and vec.grad[1].abs().sum() == 0


def test_hooks_removed_after_exception():
    model = tiny_model("gpt2")
    path = layout_for(model).mlp_out_at(0)
    with pytest.raises(RuntimeError):
        with record_inputs(model, [path]), record_outputs(model, [path]):
            raise RuntimeError("boom")
    assert _no_hooks(model)


def test_run_until_stops_and_records_keys():
    model = tiny_model("gpt2")
    layout = layout_for(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    with record_inputs(model, [layout.mlp_out_at(0), layout.mlp_out_at(2)]) as seen:
        run_until(model, layout.mlp_out_at(0), input_ids=ids)
    assert layout.mlp_out_at(0) in seen and layout.mlp_out_at(2) not in seen
    assert seen[layout.mlp_out_at(0)].shape == (1, 4, 64) and _no_hooks(model)
    keys = gather_positions(seen[layout.mlp_out_at(0)], torch.tensor([2]))
    assert torch.equal(keys[0], seen[layout.mlp_out_at(0)][0, 2])
