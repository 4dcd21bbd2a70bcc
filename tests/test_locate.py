"""Shared locate machinery: the cached-prefix, replayed optimisation equals the plain one; layer auto."""
import dataclasses

import pytest
import torch

from editspec.model.layout import layout_for
from editspec.families.locate import (
    EditRequest, OptimSettings, layer_scores, optimise_targets, prepare_requests, select_layers,
)
from editspec.model.tokens import context_templates
from tiny import TYPES, tiny_chat_tokenizer, tiny_model, tiny_tokenizer

FACTS = [
    EditRequest("The capital of {} is", "France", "Rome"),
    EditRequest("{} plays", "Michael Jordan", "football"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English"),
]


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("site", ["mlp_out", "block"])
def test_prefix_cache_and_batching_do_not_change_targets(model_type, site):
    model, tok = tiny_model(model_type), tiny_tokenizer()
    layout = layout_for(model)
    groups = context_templates(model, tok, ((2, 4), (2, 7)), seed=0)
    prep = prepare_requests(tok, FACTS, groups)
    path = layout.mlp_out_at(1) if site == "mlp_out" else layout.block_at(1)
    fast = OptimSettings(steps=4, facts_per_batch=3)
    a = optimise_targets(model, [path] * 3, prep, fast, pad=0)
    plain = dataclasses.replace(fast, cache_prefix=False, facts_per_batch=1, replay_below=False)
    b = optimise_targets(model, [path] * 3, prep, plain, pad=0)
    # Gemma's norms compute in float32 even in a float64 model, hence the float32 tolerance.
    assert torch.allclose(a.init, b.init, atol=1e-5)
    assert torch.allclose(a.delta, b.delta, atol=1e-6)
    assert torch.allclose(a.loss, b.loss, atol=1e-5)
    assert bool((a.nll < a.nll.new_full((3,), 100)).all())


def test_chunks_follow_suffix_width_and_results_keep_request_order(monkeypatch):
    import editspec.families.locate.targets as targets

    model, tok = tiny_model("llama"), tiny_tokenizer()
    prep = prepare_requests(tok, FACTS, context_templates(model, tok, ((2, 4),), seed=0))
    widths = [targets.suffix_width(p) for p in prep]
    assert len(set(widths)) > 1   # the three facts need different suffix widths
    chunks, real = [], targets._optimise_chunk
    monkeypatch.setattr(targets, "_optimise_chunk",
                        lambda model, site, facts, *a, **k: chunks.append([prep.index(f) for f in facts]) or real(model, site, facts, *a, **k))
    site = layout_for(model).block_at(1)
    paired = optimise_targets(model, [site] * 3, prep, OptimSettings(steps=4, facts_per_batch=2), pad=0)
    by_width = sorted(range(3), key=lambda i: widths[i])
    assert chunks == [by_width[:2], by_width[2:]]
    alone = optimise_targets(model, [site] * 3, prep, OptimSettings(steps=4, facts_per_batch=1), pad=0)
    assert torch.allclose(paired.delta, alone.delta, atol=1e-6)   # each fact's δ, in request order
    assert torch.allclose(paired.init, alone.init, atol=1e-6)


def test_loss_falls_and_early_stop_freezes_facts():
    model, tok = tiny_model("llama", layers=2), tiny_tokenizer()
    layout = layout_for(model)
    prep = prepare_requests(tok, FACTS, [["{}"]])
    path = layout.block_at(0)  # δ reaches the target positions through layer 1's attention
    one = optimise_targets(model, [path] * 3, prep, OptimSettings(steps=1, clamp_factor=100), pad=0)
    many = optimise_targets(model, [path] * 3, prep, OptimSettings(steps=40, clamp_factor=100, stop_loss=0.5), pad=0)
    assert bool((many.nll < one.nll).all())
    assert bool(((many.loss < 0.5) | (many.steps == 39)).all())


def test_stragglers_go_on_from_where_they_stopped_with_the_wider_clamp():
    model, tok = tiny_model("llama", layers=2), tiny_tokenizer()
    path = layout_for(model).block_at(0)
    prep = prepare_requests(tok, FACTS, [["{}"]])
    # Unreachable stop criteria: every fact is a straggler.
    short = OptimSettings(steps=6, clamp_factor=0.5, stop_loss=0.0, stop_prob=1.0)
    first = optimise_targets(model, [path] * 3, prep, short, pad=0)
    longer = optimise_targets(model, [path] * 3, prep,
                              dataclasses.replace(short, straggler_steps=10, straggler_clamp_factor=100), pad=0)
    assert longer.steps.tolist() == [5 + 10] * 3                 # step indices: 0-5, then 10 more
    assert bool((longer.loss < first.loss).all())
    assert bool((longer.delta.norm(dim=-1) > 0.5 * first.init.norm(dim=-1) * 1.01).all())  # past the first clamp
    assert torch.equal(longer.init, first.init)


@pytest.mark.parametrize("tail_kl", [0.0, 1.0])
def test_a_straggler_pass_resumes_the_loss_with_the_unedited_kl_anchor(tail_kl):
    # Re-evaluating the first pass's δ must give its last loss: the KL terms (and the tail KL)
    # still compare with the unedited distributions, not with the ones δ produced.
    from editspec.families.locate.targets import _optimise_chunk

    model, tok = tiny_model("llama", layers=2), tiny_tokenizer()
    path = layout_for(model).block_at(0)
    prep = prepare_requests(tok, FACTS, [["{}"]])
    settings = OptimSettings(steps=5, clamp_factor=100, stop_loss=0.0, stop_prob=1.0, kl_factor=1.0, tail_kl=tail_kl)
    delta, _, loss, _, _, kl0, tail0 = _optimise_chunk(model, path, prep, settings, 0)
    _, _, again, _, _, _, _ = _optimise_chunk(model, path, prep, dataclasses.replace(settings, steps=1), 0,
                                              start=(delta, kl0), tail0=tail0 if tail_kl else None)
    assert torch.allclose(again, loss, atol=1e-6)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_steps_keep_the_first_step_exact_and_follow_the_float32_path(native, monkeypatch):
    import editspec.families.locate.targets as targets

    monkeypatch.setattr(targets, "native_bfloat16", lambda device: native)
    model, tok = tiny_model("llama", layers=2, dtype=torch.float32), tiny_tokenizer()
    path = layout_for(model).block_at(0)
    prep = prepare_requests(tok, FACTS, context_templates(model, tok, ((2, 3),), seed=0))
    plain = OptimSettings(steps=8, clamp_factor=100, stop_loss=0.0, stop_prob=1.0)
    exact = optimise_targets(model, [path] * 3, prep, plain, pad=0)
    fast = optimise_targets(model, [path] * 3, prep, dataclasses.replace(plain, bf16_steps=True), pad=0)
    assert torch.equal(fast.init, exact.init)                    # step 0 ran in float32
    if native:
        assert not torch.equal(fast.delta, exact.delta)          # later steps did run in bfloat16 ...
        assert torch.allclose(fast.loss, exact.loss, rtol=0.1)   # ... and landed where float32 does
        cosine = torch.nn.functional.cosine_similarity(fast.delta, exact.delta, dim=-1)
        assert bool((cosine > 0.95).all())
    else:                                                        # no native bfloat16: float32 throughout
        assert torch.equal(fast.delta, exact.delta)


def test_facts_that_stop_in_time_are_not_rerun():
    model, tok = tiny_model("llama", layers=2), tiny_tokenizer()
    path = layout_for(model).block_at(0)
    prep = prepare_requests(tok, FACTS, [["{}"]])
    easy = OptimSettings(steps=6, stop_loss=1e9)                 # every fact stops at step 0
    plain = optimise_targets(model, [path] * 3, prep, easy, pad=0)
    extra = optimise_targets(model, [path] * 3, prep, dataclasses.replace(easy, straggler_steps=10), pad=0)
    assert extra.steps.tolist() == [0, 0, 0]
    assert torch.equal(plain.delta, extra.delta)


@pytest.mark.parametrize("model_type", TYPES)
def test_replaying_the_blocks_below_matches_running_them_as_facts_stop(model_type):
    # Facts stop at different steps, so later steps replay a subset of the recorded rows.
    model, tok = tiny_model(model_type, layers=4), tiny_tokenizer()
    layout = layout_for(model)
    modules = list(model.modules())                            # the stand-ins must all be gone afterwards
    prep = prepare_requests(tok, FACTS, context_templates(model, tok, ((2, 3),), seed=0))
    free = optimise_targets(model, [layout.block_at(2)] * 3, prep,
                            OptimSettings(steps=40, facts_per_batch=3, clamp_factor=100, stop_loss=0.0), pad=0)
    low, middle = sorted(free.loss.tolist())[:2]
    settings = OptimSettings(steps=40, facts_per_batch=3, clamp_factor=100, stop_loss=(low + middle) / 2)
    a = optimise_targets(model, [layout.block_at(2)] * 3, prep, settings, pad=0)
    b = optimise_targets(model, [layout.block_at(2)] * 3, prep, dataclasses.replace(settings, replay_below=False), pad=0)
    assert len(set(a.steps.tolist())) > 1                      # the facts did stop apart
    assert torch.equal(a.steps, b.steps)
    assert torch.allclose(a.delta, b.delta, atol=1e-6) and torch.allclose(a.loss, b.loss, atol=1e-5)
    assert all(a is b for a, b in zip(model.modules(), modules)) and len(list(model.modules())) == len(modules)


def test_layer_auto_picks_a_candidate_per_fact():
    model, tok = tiny_model("gpt2"), tiny_tokenizer()
    layout = layout_for(model)
    prep = prepare_requests(tok, FACTS, [["{}"]])
    scores = layer_scores(model, layout, prep, [0, 1, 2], pad=0)
    assert scores.shape == (3, 3) and bool((scores > 0).all())
    assert select_layers(model, layout, prep, [0, 1, 2], pad=0) == [int(j) for j in scores.argmin(1)]


@pytest.mark.parametrize("model_type", TYPES)
def test_rows_run_in_length_buckets_as_they_would_in_one_padded_batch(model_type, monkeypatch):
    # Chat rows are much longer after the subject than raw rows: they run as a pass of their own.
    import editspec.families.locate.targets as targets

    model, tok = tiny_model(model_type, layers=4), tiny_chat_tokenizer()
    layout = layout_for(model)
    facts = [dataclasses.replace(f, questions=(f"Tell me please, what do you know about {{}} and {f.target_new}?",))
             for f in FACTS]
    prep = prepare_requests(tok, facts, context_templates(model, tok, ((2, 3),), seed=0), chat=True)
    assert all(any(p.chat) for p in prep)
    passes, real = [], targets.length_buckets
    monkeypatch.setattr(targets, "length_buckets", lambda lengths, cost: passes.append(real(lengths, cost)) or passes[-1])
    settings = OptimSettings(steps=6, facts_per_batch=3, stop_loss=0.0)
    a = optimise_targets(model, [layout.mlp_out_at(2)] * 3, prep, settings, pad=0)
    assert len(passes[0]) > 1                                   # the first step did run several buckets
    b = optimise_targets(model, [layout.mlp_out_at(2)] * 3, prep, dataclasses.replace(settings, length_buckets=False),
                         pad=0)
    assert torch.allclose(a.init, b.init, atol=1e-5)
    assert torch.allclose(a.delta, b.delta, atol=1e-6) and torch.allclose(a.loss, b.loss, atol=1e-5)
    assert torch.equal(a.steps, b.steps)


def test_length_buckets_minimise_padded_tokens_plus_passes():
    from editspec.families.locate.targets import length_buckets

    assert length_buckets([4, 4, 12, 5], pass_cost=16) == [[0, 1, 3], [2]]
    assert length_buckets([4, 4, 12, 5], pass_cost=1000) == [[0, 1, 2, 3]]   # a pass costs more than the padding
    assert length_buckets([3, 3, 3], pass_cost=0) == [[0, 1, 2]]
    lengths = [4] * 44 + [6] * 4 + [12] * 4                     # 4 CounterFact facts with chat rows
    buckets = length_buckets(lengths, pass_cost=16)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert sum(len(b) * max(lengths[i] for i in b) for b in buckets) < len(lengths) * 12 / 2
