"""Low-rank deltas: exact apply/revert, Conv1D equivalence, NaN refusal, deterministic files."""
import hashlib

import pytest
import torch

from editspec.model.deltas import Delta, apply_deltas, load_deltas, save_deltas
from editspec.errors import EditspecError
from editspec.model.hooks import record_inputs, record_outputs
from editspec.model.layout import layout_for
from tiny import TYPES, tiny_model


def _delta(model, layer=1, rank=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    path = layout_for(model).mlp_out_at(layer)
    return Delta(path, torch.randn(32, rank, generator=g, dtype=dtype), torch.randn(rank, 64, generator=g, dtype=dtype))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_then_revert_is_bit_identical(model_type, dtype):
    model = tiny_model(model_type, dtype=dtype)
    before = _state(model)
    deltas = [_delta(model, 0, 1, 1), _delta(model, 2, 3, 2), _delta(model, 0, 2, 3)]
    handle = apply_deltas(model, deltas)
    changed = _state(model)
    assert any(not torch.equal(before[k], changed[k]) for k in before)
    handle.revert()
    handle.revert()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_functional_change_is_delta_times_key(model_type):
    # Conv1D (stored transposed) and Linear see the same abstract update: y_new - y_old = Δ k.
    model = tiny_model(model_type)
    d = _delta(model)
    ids = torch.tensor([[3, 4, 5, 6]])
    with record_inputs(model, [d.module]) as keys, record_outputs(model, [d.module]) as vals:
        model(ids)
    k, v0 = keys[d.module].clone(), vals[d.module].clone()
    with apply_deltas(model, [d]), record_inputs(model, [d.module]) as keys2, record_outputs(model, [d.module]) as vals2:
        model(ids)
    # Layer 1's keys depend only on layers below it, which are untouched.
    assert torch.equal(keys2[d.module], k)
    assert torch.allclose(vals2[d.module] - v0, k @ d.dense().T, atol=1e-10)


def test_nan_delta_is_refused_and_nothing_changes(tmp_path):
    model = tiny_model("llama")
    before = _state(model)
    good, bad = _delta(model), _delta(model, 2)
    bad.left[0, 0] = float("nan")
    with pytest.raises(EditspecError):
        apply_deltas(model, [good, bad])
    with pytest.raises(EditspecError):
        save_deltas([bad], tmp_path / "d.safetensors")
    assert not (tmp_path / "d.safetensors").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_shape_is_refused_and_reverted():
    model = tiny_model("llama")
    before = _state(model)
    wrong = Delta(layout_for(model).mlp_out_at(1), torch.ones(64, 1, dtype=torch.float64), torch.ones(1, 32, dtype=torch.float64))
    with pytest.raises(EditspecError):
        apply_deltas(model, [_delta(model), wrong])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_save_load_roundtrip_and_deterministic_bytes(tmp_path):
    model = tiny_model("gpt2", dtype=torch.float32)
    deltas = [_delta(model, 2, 1, 5, torch.float32), _delta(model, 0, 4, 6, torch.float32), _delta(model, 2, 2, 7, torch.float32)]
    save_deltas(deltas, tmp_path / "a.safetensors", {"backend": "rome"})
    save_deltas(deltas, tmp_path / "b.safetensors", {"backend": "rome"})
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(tmp_path / "a.safetensors") == digest(tmp_path / "b.safetensors")
    loaded, meta = load_deltas(tmp_path / "a.safetensors")
    assert meta["backend"] == "rome" and [d.module for d in loaded] == [d.module for d in deltas]
    for a, b in zip(deltas, loaded):
        assert torch.equal(a.left, b.left) and torch.equal(a.right, b.right)


def test_mismatched_factors_are_an_error():
    with pytest.raises(EditspecError):
        Delta("x", torch.ones(3, 2), torch.ones(1, 4))
