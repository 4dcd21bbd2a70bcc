"""ROME's properties (docs/methods/rome.md#what-the-tests-check) on tiny float64 models."""
import pytest
import torch

from editspec.backends.rome import RomeConfig, rank_one_update, rome_deltas
from editspec.model.deltas import apply_deltas
from editspec.model.hooks import gather_positions, record_outputs
from editspec.model.layout import layout_for, module_at, value_bias, value_weight
from editspec.families.locate import EditRequest, average_keys, flatten_groups, prepare_requests, request_keys, template_keys
from editspec.model.tokens import context_templates
from tiny import INTERMEDIATE, tiny_model, tiny_tokenizer

LAYER = 1
FACTS = [
    EditRequest("The capital of {} is", "France", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football"),
]


def _cov(seed=0, n=4000, d=INTERMEDIATE):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    return keys.T @ keys / n


def _setup(model_type="llama"):
    model, tok = tiny_model(model_type), tiny_tokenizer()
    groups = context_templates(model, tok, ((2, 4), (2, 6)), seed=0)
    return model, tok, groups


def _config(**kw):
    return RomeConfig(layer=LAYER, v_num_grad_steps=6, mom2_ridge=0.0, **kw)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox", "gemma3_text"])
def test_r_rome_maps_averaged_key_to_target(model_type):
    model, tok, groups = _setup(model_type)
    cov = _cov()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = rome_deltas(model, tok, FACTS[:1], _config(), stats={LAYER: cov}, templates=groups)
    # Purity: computing deltas changes nothing.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    (delta,), fact = result.deltas, result.facts[0]
    assert torch.linalg.matrix_rank(delta.dense()) == 1
    proj = module_at(model, delta.module)
    bias = value_bias(proj)
    bias = 0 if bias is None else bias.detach()
    with apply_deltas(model, [delta]):
        hit = value_weight(proj) @ fact["key"] + bias
    assert torch.allclose(hit, fact["target"], atol=1e-10)
    # The row space is spanned by C⁻¹k*.
    u = torch.linalg.solve(cov, fact["key"])
    assert torch.allclose(delta.right[0] / delta.right[0].norm(), u / u.norm(), atol=1e-10)


def test_original_rome_end_to_end_value_at_clean_prompt():
    model, tok, groups = _setup()
    result = rome_deltas(model, tok, FACTS[:1], _config(variant="original"), stats={LAYER: _cov()}, templates=groups)
    prep = prepare_requests(tok, FACTS[:1], flatten_groups(groups))[0]
    path = layout_for(model).mlp_out_at(LAYER)
    ids = torch.tensor([prep.rows[0][: prep.subject_index[0] + 1]])
    with apply_deltas(model, result.deltas), record_outputs(model, [path]) as seen:
        model(ids)
    value = gather_positions(seen[path], torch.tensor([prep.subject_index[0]]))[0]
    assert torch.allclose(value, result.facts[0]["target"], atol=1e-10)


def test_c_orthogonal_keys_are_unchanged_and_update_is_minimal():
    g = torch.Generator().manual_seed(3)
    cov = _cov(1)
    k = torch.randn(INTERMEDIATE, generator=g, dtype=torch.float64)
    r = torch.randn(32, generator=g, dtype=torch.float64)
    left, right, _ = rank_one_update(r, k, cov)
    delta = left @ right
    assert torch.allclose(delta @ k, r, atol=1e-10)
    cinv_k = torch.linalg.solve(cov, k)
    x = torch.randn(INTERMEDIATE, generator=g, dtype=torch.float64)
    k_orth = x - (x @ cinv_k) / (k @ cinv_k) * k
    assert torch.allclose(delta @ k_orth, torch.zeros(32, dtype=torch.float64), atol=1e-10)
    # Any other Δ' with Δ'k = r costs at least as much in the C metric.
    cost = lambda d: torch.trace(d @ cov @ d.T)
    for _ in range(10):
        e = torch.randn(32, INTERMEDIATE, generator=g, dtype=torch.float64)
        other = delta + e - torch.outer(e @ k, cinv_k) / (cinv_k @ k)
        assert torch.allclose(other @ k, r, atol=1e-9) and cost(other) >= cost(delta)
    # With C = I, ‖Δ‖_F = ‖r‖/‖k‖.
    left, right, _ = rank_one_update(r, k, None)
    assert torch.isclose((left @ right).norm(), r.norm() / k.norm())


def test_conv1d_and_linear_get_the_same_functional_change():
    model, tok, groups = _setup("gpt2")
    result = rome_deltas(model, tok, FACTS[:1], _config(), templates=groups)
    assert isinstance(result.deltas[0].left, torch.Tensor)
    proj = module_at(model, result.deltas[0].module)
    k = result.facts[0]["key"]
    before = proj(k.unsqueeze(0))
    with apply_deltas(model, result.deltas):
        after = proj(k.unsqueeze(0))
    assert torch.allclose(after - before, (result.deltas[0].dense() @ k).unsqueeze(0), atol=1e-10)


def test_clamp_bounds_delta():
    from editspec.families.locate import OptimSettings, optimise_targets
    model, tok, groups = _setup()
    prep = prepare_requests(tok, FACTS, flatten_groups(groups))
    path = layout_for(model).mlp_out_at(LAYER)
    t = optimise_targets(model, [path, path], prep, OptimSettings(lr=5.0, steps=5, clamp_factor=0.3), pad=0)
    assert bool((t.delta.norm(dim=1) <= 0.3 * t.init.norm(dim=1) * (1 + 1e-5)).all())


def test_keys_are_batch_invariant():
    model, tok, groups = _setup()
    layout = layout_for(model)
    prep = prepare_requests(tok, FACTS, flatten_groups(groups))
    together = request_keys(model, layout, prep, LAYER, pad=0)
    alone = torch.cat([request_keys(model, layout, [p], LAYER, pad=0) for p in prep])
    assert torch.allclose(together, alone, atol=1e-10)


def test_several_facts_and_auto_layer():
    model, tok, groups = _setup()
    result = rome_deltas(model, tok, FACTS, RomeConfig(layer="auto", auto_layers=(0, 1, 2), v_num_grad_steps=4),
                         templates=groups)
    assert len(result.deltas) == 2 and all(d.rank == 1 for d in result.deltas)
    assert {f["layer"] for f in result.facts} <= {0, 1, 2}


@pytest.mark.parametrize("variant", ["r-rome", "original"])
def test_delta_is_optimised_as_the_update_delivers_it(variant):
    """At each template's key the update adds exactly scale_t·δ, the multiple δ was optimised with."""
    from editspec.backends.rome.rome import delivered_scales
    from editspec.model.tokens import pad_id

    model, tok, groups = _setup()
    pad = pad_id(tok)
    cov = _cov()
    layout = layout_for(model)
    prepared = prepare_requests(tok, FACTS[:1], flatten_groups(groups))
    keys, _ = template_keys(model, layout, prepared, [LAYER], pad=pad)
    scales = delivered_scales(model, layout, prepared, [LAYER], keys, {LAYER: cov}, variant, pad=pad)[0]
    assert len(scales) == prepared[0].num_rows + 1
    result = rome_deltas(model, tok, FACTS[:1], _config(variant=variant), stats={LAYER: cov}, templates=groups)
    (delta,), fact = result.deltas, result.facts[0]
    proj = module_at(model, delta.module)
    bias = 0 if value_bias(proj) is None else value_bias(proj).detach()
    added = keys[LAYER][0] @ delta.dense().T                      # [templates, d_v]: Δk_t
    moved = fact["target"] - (value_weight(proj).detach() @ fact["key"] + bias)   # what Δ adds at its own key
    expected = torch.tensor(scales[:-1], dtype=torch.float64).unsqueeze(1) * moved
    assert torch.allclose(added, expected.to(added.dtype), atol=1e-8)
    if variant == "r-rome":   # the averaged key gets δ exactly once on average
        assert abs(sum(scales[:-1]) / len(scales[:-1]) - 1.0) < 1e-9
    else:                     # the bare prompt gets exactly δ
        assert abs(scales[0] - 1.0) < 1e-12


def test_keep_texts_join_c_and_are_left_alone():
    """With `keep` texts, each fact still maps its key to its target exactly, while the kept text's
    keys move less the larger `keep_weight`; no keep (or an empty one) is the plain update."""
    from editspec.families.locate import keys_at

    model, tok, groups = _setup()
    layout = layout_for(model)
    cov = _cov()
    kept_ids = list(tok("The capital of Italy is Rome")["input_ids"])
    keep = [(kept_ids, list(range(len(kept_ids))))]
    kept_keys = keys_at(model, layout, keep, LAYER, pad=0)

    plain = rome_deltas(model, tok, FACTS[:1], _config(), stats={LAYER: cov}, templates=groups)
    empty = rome_deltas(model, tok, FACTS[:1], _config(), stats={LAYER: cov}, templates=groups, keep=[])
    assert torch.equal(plain.deltas[0].dense(), empty.deltas[0].dense())
    moved = {}
    for weight in (1.0, 1e6):
        held = rome_deltas(model, tok, FACTS[:1], _config(keep_weight=weight), stats={LAYER: cov},
                           templates=groups, keep=keep)
        (delta,), fact = held.deltas, held.facts[0]
        proj = module_at(model, delta.module)
        bias = value_bias(proj)
        bias = 0 if bias is None else bias.detach()
        with apply_deltas(model, [delta]):
            assert torch.allclose(value_weight(proj) @ fact["key"] + bias, fact["target"], atol=1e-8)
        moved[weight] = float((kept_keys @ delta.dense().double().T).norm())
    unheld = float((kept_keys @ plain.deltas[0].dense().double().T).norm())
    assert moved[1e6] < moved[1.0] < unheld
    shared = rome_deltas(model, tok, FACTS[:1], _config(keep_weight=4.0), stats={LAYER: cov}, templates=groups,
                         keep=keep, keep_share=0.25)  # a share of the weight: the same update as that much less
    assert torch.allclose(shared.deltas[0].dense(), rome_deltas(
        model, tok, FACTS[:1], _config(keep_weight=1.0), stats={LAYER: cov}, templates=groups, keep=keep).deltas[0].dense(),
        atol=1e-6)
    assert moved[1e6] < 1e-3 * unheld
