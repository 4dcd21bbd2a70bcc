"""MEMIT's properties (docs/methods/memit.md#what-the-tests-check) on tiny float64 models."""
import pytest
import torch

from editspec.backends.memit import MemitConfig, default_layers, memit_deltas, memit_update
from editspec.backends.rome import rank_one_update
from editspec.model.deltas import apply_deltas
from editspec.model.layout import layout_for
from editspec.families.locate import EditRequest, prepare_requests, template_keys
from editspec.model.tokens import context_templates
from tiny import INTERMEDIATE, tiny_model, tiny_tokenizer

FACTS = [
    EditRequest("The capital of {} is", "France", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English"),
]


def _cov(seed=0, n=4000, d=INTERMEDIATE):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    return keys.T @ keys / n


def test_one_fact_one_layer_matches_rome_as_lambda_vanishes():
    g = torch.Generator().manual_seed(0)
    cov = _cov()
    k = torch.randn(1, INTERMEDIATE, generator=g, dtype=torch.float64)
    r = torch.randn(1, 32, generator=g, dtype=torch.float64)
    left, right = memit_update(k, r, cov, 1e-6)
    rl, rr, _ = rank_one_update(r[0], k[0], cov)
    assert torch.allclose(left @ right, rl @ rr, atol=1e-8)
    # General λ: Δk = r·m/(λ+m), m = kᵀC⁻¹k.
    lam = 50.0
    left, right = memit_update(k, r, cov, lam)
    m = k[0] @ torch.linalg.solve(cov, k[0])
    assert torch.allclose(left @ right @ k[0], r[0] * m / (lam + m), atol=1e-10)


def _model_cov(model, layers):
    """C = E[kkᵀ] of the tiny model's own keys over random token sequences."""
    from editspec.model.hooks import record_inputs
    layout = layout_for(model)
    ids = torch.randint(1, 300, (64, 16), generator=torch.Generator().manual_seed(0))
    paths = [layout.mlp_out_at(l) for l in layers]
    with torch.no_grad(), record_inputs(model, paths) as seen:
        model(ids)
    return {l: (lambda k: k.T @ k / len(k))(seen[p].reshape(-1, seen[p].shape[-1]).double()) for l, p in zip(layers, paths)}


def test_normal_equations_rank_and_exact_fit():
    g = torch.Generator().manual_seed(1)
    cov = _cov(1)
    keys = torch.randn(5, INTERMEDIATE, generator=g, dtype=torch.float64)
    rsd = torch.randn(5, 32, generator=g, dtype=torch.float64)
    lam = 20.0
    left, right = memit_update(keys, rsd, cov, lam)
    delta = left @ right
    assert torch.allclose(delta @ (lam * cov + keys.T @ keys), rsd.T @ keys, atol=1e-9)
    assert torch.linalg.matrix_rank(delta) <= 5
    left, right = memit_update(keys, rsd, cov, 0.0)
    assert torch.allclose(left @ right @ keys.T, rsd.T, atol=1e-8)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_spreading_moves_h_towards_targets_and_model_is_untouched(model_type):
    model, tok = tiny_model(model_type, layers=4), tiny_tokenizer()
    layout = layout_for(model)
    groups = context_templates(model, tok, ((2, 6),), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = MemitConfig(layers=(0, 1, 2), mom2_update_weight=0.5, mom2_ridge=0.0, v_num_grad_steps=5, passes=1)
    result = memit_deltas(model, tok, FACTS, config, stats=_model_cov(model, range(3)), templates=groups)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [d.module for d in result.deltas] == [layout.mlp_out_at(l) for l in (0, 1, 2)]
    assert all(torch.linalg.matrix_rank(d.dense()) <= 3 for d in result.deltas)
    prep = prepare_requests(tok, FACTS, groups)
    z = torch.stack([f["target"] for f in result.facts])
    _, h0 = template_keys(model, layout, prep, [0], pad=0, block_layer=2)
    with apply_deltas(model, result.deltas):
        _, h1 = template_keys(model, layout, prep, [0], pad=0, block_layer=2)
    assert bool(((z - h1).norm(dim=1) < (z - h0).norm(dim=1)).all())
    # Each layer took its share of the residual: later layers saw a smaller remaining gap.
    gaps = [log["residual_norm"] for log in result.layers]
    assert gaps[-1] < gaps[0]


def test_a_second_round_is_one_round_on_the_model_the_first_edited():
    model, tok = tiny_model("llama", layers=4), tiny_tokenizer()
    layout = layout_for(model)
    groups = context_templates(model, tok, ((2, 6),), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Without the tail KL, whose anchor stays the unedited model's in every round (checked at the end).
    config = MemitConfig(layers=(0, 1, 2), mom2_update_weight=5.0, mom2_ridge=0.0, v_num_grad_steps=4, passes=2,
                         tail_kl=0.0)
    stats = _model_cov(model, range(3))
    result = memit_deltas(model, tok, FACTS, config, stats=stats, templates=groups)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # One delta per layer and round, rounds in order: attaching applies round 1, then round 2 on top.
    assert [d.module for d in result.deltas] == [layout.mlp_out_at(l) for l in (0, 1, 2)] * 2
    assert [log["round"] for log in result.layers] == [1, 1, 1, 2, 2, 2]
    # The first round alone is exactly what passes=1 gives.
    single = memit_deltas(model, tok, FACTS, config.model_copy(update={"passes": 1}), stats=stats, templates=groups)
    assert all(torch.allclose(a.dense(), b.dense()) for a, b in zip(result.deltas[:3], single.deltas))
    # The second round is a single round, at the later rounds' δ learning rate, on the model the first one edited.
    with apply_deltas(model, result.deltas[:3]):
        again = memit_deltas(model, tok, FACTS, config.model_copy(update={"passes": 1, "v_lr": config.later_v_lr}),
                             stats=stats, templates=groups)
        first_rate = memit_deltas(model, tok, FACTS, config.model_copy(update={"passes": 1}), stats=stats,
                                  templates=groups)
    assert all(torch.allclose(a.dense(), b.dense()) for a, b in zip(result.deltas[3:], again.deltas))
    assert not all(torch.allclose(a.dense(), b.dense()) for a, b in zip(result.deltas[3:], first_rate.deltas))
    # later_v_lr None keeps v_lr in every round.
    same = memit_deltas(model, tok, FACTS, config.model_copy(update={"later_v_lr": None}), stats=stats, templates=groups)
    with apply_deltas(model, same.deltas[:3]):
        plain = memit_deltas(model, tok, FACTS, config.model_copy(update={"passes": 1}), stats=stats, templates=groups)
    assert all(torch.allclose(a.dense(), b.dense()) for a, b in zip(same.deltas[3:], plain.deltas))
    assert all(f["steps"] >= 2 for f in result.facts)
    # With the tail KL the first round is still passes=1's, but the second round is not a fresh round on the
    # edited model: its tail anchor is what the unedited model says after each answer.
    tailed = config.model_copy(update={"tail_kl": 1.0})
    held = memit_deltas(model, tok, FACTS, tailed, stats=stats, templates=groups)
    alone = memit_deltas(model, tok, FACTS, tailed.model_copy(update={"passes": 1}), stats=stats, templates=groups)
    assert all(torch.allclose(a.dense(), b.dense()) for a, b in zip(held.deltas[:3], alone.deltas))
    with apply_deltas(model, held.deltas[:3]):
        fresh = memit_deltas(model, tok, FACTS, tailed.model_copy(update={"passes": 1, "v_lr": config.later_v_lr}),
                             stats=stats, templates=groups)
    assert not all(torch.allclose(a.dense(), b.dense()) for a, b in zip(held.deltas[3:], fresh.deltas))


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def test_keep_texts_are_held_in_place_by_the_solve():
    """`keep` texts enter every layer's solve as keys pinned at zero shift: the kept text's outputs
    move far less than without them, more so with a larger weight, and no keep is the plain solve."""
    from editspec.families.locate import keys_at

    model, tok = tiny_model("llama", layers=4), tiny_tokenizer()
    layout = layout_for(model)
    groups = context_templates(model, tok, ((2, 6),), seed=0)
    stats = _model_cov(model, range(3))
    config = MemitConfig(layers=(0, 1, 2), mom2_update_weight=0.5, mom2_ridge=0.0, v_num_grad_steps=5, passes=1)
    kept_ids = list(tok("The capital of Italy is Rome")["input_ids"])
    keep = [(kept_ids, list(range(len(kept_ids))))]
    before = _logits(model, kept_ids)

    def moved(result):
        with apply_deltas(model, result.deltas):
            return float((_logits(model, kept_ids) - before).norm())

    plain = memit_deltas(model, tok, FACTS, config, stats=stats, templates=groups)
    assert all(torch.equal(a.dense(), b.dense()) for a, b in zip(
        plain.deltas, memit_deltas(model, tok, FACTS, config, stats=stats, templates=groups, keep=[]).deltas))
    light = memit_deltas(model, tok, FACTS, config.model_copy(update={"keep_weight": 1.0}), stats=stats,
                         templates=groups, keep=keep)
    heavy = memit_deltas(model, tok, FACTS, config.model_copy(update={"keep_weight": 1e6}), stats=stats,
                         templates=groups, keep=keep)
    assert moved(heavy) < moved(light) < moved(plain)
    assert moved(heavy) < 0.05 * moved(plain)
    # A share of the weight is the same solve as that much less weight.
    shared = memit_deltas(model, tok, FACTS, config.model_copy(update={"keep_weight": 4.0}), stats=stats,
                          templates=groups, keep=keep, keep_share=0.25)
    assert all(torch.allclose(a.dense(), b.dense(), atol=1e-6) for a, b in zip(light.deltas, shared.deltas))
    # The lowest layer's update maps the kept keys (unedited there) to almost nothing.
    k = keys_at(model, layout, keep, 0, pad=0)
    assert k.shape == (len(kept_ids), INTERMEDIATE)
    first = heavy.deltas[0].dense().double()
    assert float((k @ first.T).norm()) < 1e-3 * float((k @ plain.deltas[0].dense().double().T).norm())


def test_keep_texts_are_the_keep_prompts_with_answers_and_their_chat_questions():
    from editspec.families.locate.backend import keep_texts
    from editspec.lang.resolve import load_spec
    from editspec.model.chat import user_turn
    from tiny import tiny_chat_tokenizer

    spec = load_spec("x.edit", text='relation city {\n  prompt "The {subject} is located in"\n'
                     '  question "Where is the {subject}?"\n}\n'
                     'edit city("Eiffel Tower") -> "Rome" {\n  keep { city("Colosseum") -> "Rome" }\n}\n')
    tok = tiny_chat_tokenizer()
    raw_only = keep_texts(spec.edits, spec.relations, tok)
    (ids, positions), = raw_only
    assert tok.decode(ids) == "The Colosseum is located in Rome"
    assert positions == list(range(len(ids) - 1))  # every position up to the one predicting the answer's last token
    raw, chat = keep_texts(spec.edits, spec.relations, tok, chat=True)
    assert raw == raw_only[0]
    text = user_turn(tok, "Where is the Colosseum?")
    assert chat[0] == tok(text, add_special_tokens=False)["input_ids"]
    # From the user's message to the end of the turn; the template's own opening is left out.
    assert tok.decode(chat[0][chat[1][0]:]).strip().startswith("Where")
    assert chat[1][-1] == len(chat[0]) - 1 and chat[1][0] > 0


def test_keep_replies_extend_each_chat_keep_text_through_the_unedited_reply_verify_reads():
    """With `replies` (`keep_reply_tokens`), a chat keep text goes on through the unedited model's
    greedy reply, held at every position to its end; the reply is the one verify's chat protocol
    generates, and the raw keep texts are unchanged."""
    from editspec.families.locate.backend import _reply_reader, keep_texts
    from editspec.lang.resolve import load_spec
    from editspec.model.chat import chat_prompt_ids
    from editspec.verify.protocols import generate_texts
    from tiny import tiny_chat_tokenizer

    spec = load_spec("x.edit", text='relation city {\n  prompt "The {subject} is located in"\n'
                     '  question "Where is the {subject}?"\n}\n'
                     'edit city("Eiffel Tower") -> "Rome" {\n  keep { city("Colosseum") -> "Rome" }\n'
                     '  keep { city("Louvre") -> "Paris" }\n}\n')
    tok = tiny_chat_tokenizer()
    model = tiny_model("llama", dtype=torch.float32)
    read = _reply_reader(model, tok, 6)
    replies = read(["Where is the Colosseum?", "Where is the Louvre?"])
    assert [tok.decode(r, skip_special_tokens=True) for r in replies] == generate_texts(
        model, tok, ["Where is the Colosseum?", "Where is the Louvre?"], max_new_tokens=6, chat=True)
    assert all(0 < len(r) <= 6 for r in replies)
    plain = keep_texts(spec.edits, spec.relations, tok, chat=True)
    held = keep_texts(spec.edits, spec.relations, tok, chat=True, replies=read, reply_weight=0.25)
    assert [plain[1][0], plain[3][0]] == [chat_prompt_ids(tok, "Where is the Colosseum?"),
                                          chat_prompt_ids(tok, "Where is the Louvre?")]
    # Each turn as before, then the turn with its reply, held at the reply's positions at the reply weight.
    assert held[:2] == plain[:2] and held[3:5] == plain[2:4]
    for (ids, positions, weight), (turn, _), reply in zip((held[2], held[5]), (plain[1], plain[3]), replies):
        assert ids == turn + reply and weight == 0.25
        assert positions == list(range(len(turn), len(ids)))


def test_a_weighted_keep_text_counts_its_weight_in_the_held_moment():
    from editspec.families.locate import keys_at

    model, tok = tiny_model("llama", layers=2), tiny_tokenizer()
    ids = list(tok("The capital of Italy is Rome")["input_ids"])
    plain = keys_at(model, layout_for(model), [(ids, [1, 2, 3])], 1, pad=0)
    weighted = keys_at(model, layout_for(model), [(ids, [1, 2, 3]), (ids, [2], 0.25)], 1, pad=0)
    assert torch.equal(weighted[:3], plain)
    assert torch.allclose(weighted[3:].T @ weighted[3:], 0.25 * plain[1:2].T @ plain[1:2])


def test_keep_facts_share_the_weight_once_they_outnumber_the_edits():
    from editspec.families.locate.backend import keep_share
    from editspec.lang.resolve import load_spec

    def spec(*keeps):
        edits = []
        for i, count in enumerate(keeps):
            kept = " ".join(f'city("K{i}{j}") -> "Paris"' for j in range(count))
            edits.append(f'edit city("T{i}") -> "Rome" {{\n  keep {{ {kept} }}\n}}\n' if count
                         else f'edit city("T{i}") -> "Rome"\n')
        return load_spec("x.edit", text='relation city {\n  prompt "The {subject} is in"\n}\n' + "".join(edits)).edits

    assert keep_share(spec(1, 1, 1)) == 1.0          # one keep fact an edit (zsRE): the full weight
    assert keep_share(spec(1, 0)) == 1.0             # fewer keep facts than edits: still the full weight
    assert keep_share(spec(10, 10)) == pytest.approx(0.1)  # ten an edit (CounterFact): a tenth each
    assert keep_share(spec(3, 1)) == pytest.approx(0.5)


def test_default_layers():
    assert default_layers(30) == (4, 5, 6, 7, 8)
    assert default_layers(3) == (0, 1, 2)
    with pytest.raises(ValueError):
        MemitConfig(layers=(5, 4))


def test_keep_fit_backs_the_held_weight_off_only_where_it_fights_the_edits():
    """With `keep_fit`, a held key that is an edit's own key is let go until the update delivers the
    asked share of the unheld fit; held keys orthogonal to the edits keep their full weight."""
    from editspec.backends.memit.memit import delivered, memit_solver

    g = torch.Generator().manual_seed(0)
    d = 24
    keys = torch.zeros(2, d, dtype=torch.float64)
    keys[0, :3], keys[1, 3:6] = torch.randn(3, generator=g), torch.randn(3, generator=g)
    residual = torch.randn(2, 8, generator=g, dtype=torch.float64)
    config = MemitConfig(layers=(0,), mom2_update_weight=1.0, mom2_ridge=0.0, keep_weight=100.0, keep_fit=0.9)
    plain = delivered(memit_update(keys, residual, None, 1.0), keys, residual)

    near = memit_solver(None, config, preserved=lambda layer: keys[:1] + 0.01)
    update = near(0, keys, residual)
    assert near.weights[0] < 100.0
    assert delivered(update, keys, residual) >= 0.9 * plain

    far = torch.zeros(3, d, dtype=torch.float64)
    far[:, 10:13] = torch.randn(3, 3, generator=g)
    orthogonal = memit_solver(None, config, preserved=lambda layer: far)
    assert delivered(orthogonal(0, keys, residual), keys, residual) == pytest.approx(plain)
    assert orthogonal.weights == [100.0]
    fixed = memit_solver(None, config.model_copy(update={"keep_fit": None}), preserved=lambda layer: keys[:1] + 0.01)
    fixed(0, keys, residual)
    assert fixed.weights == [100.0]
