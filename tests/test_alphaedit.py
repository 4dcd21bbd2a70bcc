"""AlphaEdit's properties (docs/methods/alphaedit.md#what-the-tests-check) on tiny float64 models."""
import pytest
import torch

from editspec.backends.alphaedit import AlphaEditConfig, alphaedit_deltas, alphaedit_update, nullspace_projector
from editspec.model.deltas import apply_deltas
from editspec.errors import EditspecError
from editspec.families.locate import EditRequest
from editspec.model.tokens import context_templates
from tiny import INTERMEDIATE, tiny_model, tiny_tokenizer

D = INTERMEDIATE


def _low_rank_keys(rank=40, n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, D, generator=g, dtype=torch.float64)
    return torch.randn(n, rank, generator=g, dtype=torch.float64) @ basis  # [n, D], rank 40


def test_projector_is_symmetric_idempotent_and_kills_preserved_keys():
    k0 = _low_rank_keys()
    cov = k0.T @ k0 / len(k0)
    p = nullspace_projector(cov, 1e-8)
    assert torch.allclose(p, p.T, atol=1e-12) and torch.allclose(p @ p, p, atol=1e-10)
    assert round(float(torch.trace(p))) == D - 40
    assert (p @ k0.T).norm() / k0.norm() < 1e-8
    assert torch.allclose(nullspace_projector(cov * 1e6, 1e-14, "relative"), p, atol=1e-8)


def test_update_lies_in_null_space_so_preserved_outputs_stay():
    g = torch.Generator().manual_seed(1)
    k0 = _low_rank_keys()
    p = nullspace_projector(k0.T @ k0 / len(k0), 1e-8)
    keys = torch.randn(4, D, generator=g, dtype=torch.float64)
    rsd = torch.randn(4, 32, generator=g, dtype=torch.float64)
    previous = torch.randn(3, D, generator=g, dtype=torch.float64)
    left, right = alphaedit_update(keys, rsd, p, previous.T @ previous, 10.0)
    delta = left @ right
    assert torch.allclose(delta, delta @ p, atol=1e-10)
    assert (delta @ k0.T).norm() < 1e-8 * delta.norm() * k0.norm()


def test_identity_projector_and_empty_cache_is_ridge_solution():
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(5, D, generator=g, dtype=torch.float64)
    rsd = torch.randn(5, 32, generator=g, dtype=torch.float64)
    left, right = alphaedit_update(keys, rsd, torch.eye(D, dtype=torch.float64), None, 3.0)
    ridge = rsd.T @ keys @ torch.linalg.inv(keys.T @ keys + 3.0 * torch.eye(D, dtype=torch.float64))
    assert torch.allclose(left @ right, ridge, atol=1e-10)


def test_sequential_batches_keep_preserved_outputs_and_grow_state():
    model, tok = tiny_model("llama", layers=4), tiny_tokenizer()
    groups = context_templates(model, tok, ((2, 6),), seed=0)
    # Preserved keys span only part of the space, so a real null space exists.
    k0 = _low_rank_keys(rank=30)
    stats = {l: k0.T @ k0 / len(k0) for l in range(4)}
    config = AlphaEditConfig(layers=(1, 2), nullspace_threshold=1e-8, v_num_grad_steps=4, l2=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, state = alphaedit_deltas(model, tok, [EditRequest("The capital of {} is", "France", "Rome")],
                                    config, stats=stats, templates=groups)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert state.edits == 1 and set(state.preserved) == {1, 2}
    with apply_deltas(model, first.deltas):
        second, state2 = alphaedit_deltas(model, tok, [EditRequest("{} plays", "Michael Jordan", "football")],
                                          config, stats=stats, state=state, templates=groups)
    assert state2.edits == 2 and state.edits == 1
    assert not torch.equal(state2.preserved[1], state.preserved[1])
    for d in first.deltas + second.deltas:
        dense = d.dense()
        assert (dense @ k0.T).norm() < 1e-8 * max(dense.norm(), 1e-30) * k0.norm()
    assert [log["nullspace_rank"] for log in first.layers] == [D - 30, D - 30]


def test_a_second_round_is_one_round_on_the_model_the_first_edited_under_the_same_null_space():
    model, tok = tiny_model("llama", layers=4), tiny_tokenizer()
    groups = context_templates(model, tok, ((2, 6),), seed=0)
    k0 = _low_rank_keys(rank=30)
    stats = {l: k0.T @ k0 / len(k0) for l in range(4)}
    config = AlphaEditConfig(layers=(1, 2), nullspace_threshold=1e-8, v_num_grad_steps=4, l2=1.0, passes=2)
    facts = [EditRequest("The capital of {} is", "France", "Rome"), EditRequest("{} plays", "Michael Jordan", "football")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, state = alphaedit_deltas(model, tok, facts, config, stats=stats, templates=groups)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [log["round"] for log in result.layers] == [1, 1, 2, 2] and len(result.deltas) == 4
    # Round 1 is passes=1's; round 2 is passes=1 at the later rate on the model round 1 edited, with the
    # state before the batch (its own keys join the preserved set once, after the last round).
    single, single_state = alphaedit_deltas(model, tok, facts, config.model_copy(update={"passes": 1}), stats=stats,
                                            templates=groups)
    assert all(torch.allclose(a.dense(), b.dense()) for a, b in zip(result.deltas[:2], single.deltas))
    with apply_deltas(model, result.deltas[:2]):
        again, _ = alphaedit_deltas(model, tok, facts, config.model_copy(update={"passes": 1, "v_lr": config.later_v_lr}),
                                    stats=stats, templates=groups)
    assert all(torch.allclose(a.dense(), b.dense()) for a, b in zip(result.deltas[2:], again.deltas))
    assert state.edits == 2 and single_state.edits == 2
    assert state.preserved[1].shape == single_state.preserved[1].shape
    # Every round's update stays in C's null space.
    for d in result.deltas:
        dense = d.dense()
        assert (dense @ k0.T).norm() < 1e-8 * max(dense.norm(), 1e-30) * k0.norm()
    assert all(f["steps"] >= 2 for f in result.facts)


def test_needs_statistics():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(EditspecError):
        alphaedit_deltas(model, tok, [EditRequest("The capital of {} is", "France", "Rome")], templates=[["{}"]])


def test_projector_is_remembered_by_the_content_of_c():
    torch.manual_seed(3)
    k = torch.randn(40, 6, dtype=torch.float64)
    cov = k.T @ k / 40
    first = nullspace_projector(cov, 1e-3, "relative")
    assert nullspace_projector(cov.clone(), 1e-3, "relative") is first           # same content: no new eigh
    other = nullspace_projector(cov + torch.eye(6, dtype=torch.float64), 1e-3, "relative")
    assert other is not first


def test_preserved_sum_is_a_factor_that_grows_with_the_edits_then_folds_at_the_key_width():
    from editspec.families.locate import extend_factor, factor_of_gram

    g = torch.Generator().manual_seed(4)
    batches = [torch.randn(n, 8, generator=g, dtype=torch.float64) for n in (3, 2, 5, 4)]
    factor, gram = None, torch.zeros(8, 8, dtype=torch.float64)
    widths = []
    for rows in batches:
        factor = extend_factor(factor, rows)
        gram = gram + rows.T @ rows
        widths.append(factor.shape[1])
        assert torch.allclose(factor @ factor.T, gram, atol=1e-10)
    assert widths[:2] == [3, 5]               # one column per key while narrower than the key width
    assert max(widths) <= 8                   # folded: never wider than the dense sum
    assert torch.allclose(factor_of_gram(gram) @ factor_of_gram(gram).T, gram, atol=1e-10)


def test_state_of_older_artifacts_with_dense_sums_is_still_read(tmp_path):
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from editspec.backends.alphaedit.backend import STATE, AlphaEditBackend

    g = torch.Generator().manual_seed(5)
    keys = torch.randn(3, 8, generator=g, dtype=torch.float64)
    save_file({"preserved.4": keys.T @ keys}, str(tmp_path / STATE), metadata={"edits": "3"})
    job = SimpleNamespace(previous=SimpleNamespace(file=lambda name: tmp_path / name))
    state = AlphaEditBackend._state(job)
    assert state.edits == 3 and state.preserved[4].shape[0] == 8 and state.preserved[4].shape[1] <= 3
    assert torch.allclose(state.preserved[4] @ state.preserved[4].T, keys.T @ keys, atol=1e-10)
