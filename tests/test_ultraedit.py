"""UltraEdit's algebra on tiny seeded models: the ridge solve, lifelong statistics, gradients, long `--on` chains."""
import pytest
import torch

import editspec
import editspec.backends.ultraedit.ultraedit as ultraedit_module
from editspec.build.artifact import DELTAS
from editspec.backends.ultraedit import LifelongNorm, edit_features, ultraedit_update
from editspec.backends.ultraedit.backend import NORM
from editspec.backends.ultraedit.ultraedit import KeySum, RunningSquares, key_rows, stats_update, stats_update_dense
from editspec.families.memory.codebook import teacher_forced
from editspec.build.compiler import compile_spec
from editspec.model.loading import load_model
from editspec.families.training.objectives import Target
from editspec.families.training.tuning import encode_targets
from tiny import target_logprob, tiny_model, tiny_tokenizer, tiny_workspace


def _random(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_update_maps_new_keys_to_their_values_and_preserved_keys_to_nothing():
    keys, values, kept = _random(5, 64, 0), _random(5, 32, 1), _random(7, 64, 2)
    scale = _random(1, 64, 3).abs()[0] + 0.5
    left, right = ultraedit_update(keys, values, kept, scale, ridge=1e-10)
    delta = left @ right
    assert left.shape == (32, 5) and right.shape == (5, 64)            # rank = the edit rows, whatever d_k
    assert torch.allclose(keys @ delta.T, values, atol=1e-6)
    assert (kept @ delta.T).norm() < 1e-6 * values.norm()
    # A larger ridge shrinks the update toward zero but keeps its direction of fit.
    loose = ultraedit_update(keys, values, kept, scale, ridge=10.0)
    assert (loose[0] @ loose[1]).norm() < delta.norm()


def test_stats_update_maps_new_keys_to_their_values_and_spares_general_text():
    keys, values, kept = _random(5, 64, 0), _random(5, 32, 1), _random(7, 64, 2)
    general = _random(400, 64, 5) * torch.linspace(0.1, 3.0, 64, dtype=torch.float64)  # anisotropic keys
    moment = general.T @ general / len(general)
    left, right = stats_update(keys, values, kept, moment, weight=1e-8)
    delta = left @ right
    assert left.shape == (32, 5) and right.shape == (5, 64)            # rank = the edit rows
    assert torch.allclose(keys @ delta.T, values, atol=1e-5)
    assert (kept @ delta.T).norm() < 1e-4 * values.norm()
    # Weighing general text in: the update costs general keys less (per unit of fit) than an
    # unweighted ridge of the same strength does, and it never fits the edits better.
    weighted = stats_update(keys, values, None, moment, weight=50.0)
    plain = stats_update(keys, values, None, torch.eye(64, dtype=torch.float64) * moment.diagonal().mean(), weight=50.0)
    cost = [float((general @ (l @ r).T).norm() / (keys @ (l @ r).T).norm()) for l, r in (weighted, plain)]
    assert cost[0] < cost[1]
    assert ((keys @ (weighted[0] @ weighted[1]).T) - values).norm() > ((keys @ delta.T) - values).norm()


def test_the_dense_solve_is_the_factored_one_and_reuses_its_cholesky_factor():
    # More rows than d_v (a real turn's case): solving for ΔW with d_v right-hand sides gives the
    # factors' product, and a factor kept from the same keys gives the same ΔW for new values.
    keys, values, kept = _random(40, 16, 0), _random(40, 8, 1), _random(7, 16, 2)
    general = _random(200, 16, 5) * torch.linspace(0.1, 3.0, 16, dtype=torch.float64)
    moment = general.T @ general / len(general)
    left, right = stats_update(keys, values, kept, moment, weight=3.0)
    dense, factor = stats_update_dense(keys, values, kept, moment, weight=3.0)
    assert dense.shape == (8, 16) and torch.allclose(dense, left @ right, atol=1e-10)
    other = _random(40, 8, 9)
    again, same = stats_update_dense(keys, other, None, None, weight=0.0, factor=factor)
    assert same is factor and torch.allclose(again, torch.mm(*stats_update(keys, other, kept, moment, weight=3.0)), atol=1e-10)


def test_a_turn_with_the_earlier_keys_pinned_completes_the_least_squares_solve_of_the_whole_chain():
    # history_weight 1: turn 2 solved with turn 1's keys summed into the system, its shifts
    # measured from the model turn 1 edited, adds up to the one least-squares update over both
    # turns' edits (each at the value it asked for) at the same cost to general text.
    general = _random(300, 16, 5) * torch.linspace(0.1, 3.0, 16, dtype=torch.float64)
    moment = general.T @ general / len(general)
    k1, v1, k2, v2 = _random(10, 16, 0), _random(10, 8, 1), _random(12, 16, 2), _random(12, 8, 3)
    first, _ = stats_update_dense(k1, v1, None, moment, weight=2.0)
    history = KeySum().added(k1)
    assert history.rows is not None and torch.allclose(history.dense(), k1.T @ k1)
    second = torch.mm(*stats_update(k2, v2, None, moment, weight=2.0, history=history.dense()))
    dense_second, _ = stats_update_dense(k2, v2, None, moment, weight=2.0, history=history.dense())
    assert torch.allclose(second, dense_second, atol=1e-10)
    wanted = torch.cat([v1, k2 @ first.T + v2])  # turn 2's targets are read on the model turn 1 edited
    keys = torch.cat([k1, k2])
    joint = torch.linalg.solve(keys.T @ keys + 2.0 * moment, keys.T @ wanted).T
    assert torch.allclose(first + second, joint, atol=1e-9)
    # Without the history, turn 2 writes over turn 1's keys.
    alone = torch.mm(*stats_update(k2, v2, None, moment, weight=2.0))
    assert (k1 @ second.T).norm() < (k1 @ alone.T).norm()
    # Past d_k keys the sum is stored dense; both forms survive the artifact round trip.
    summed = history.added(k2)
    assert summed.gram is not None and torch.allclose(summed.dense(), keys.T @ keys)
    norm = LifelongNorm(history={10: history, 11: summed})
    again = LifelongNorm.from_tensors(norm.tensors())
    assert again.history[10].rows is not None and again.history[11].gram is not None
    assert torch.allclose(again.history[11].dense(), summed.dense(), rtol=1e-6)


def test_context_rows_leave_out_positions_whose_context_two_edits_share():
    tok = tiny_tokenizer()
    targets = [Target("The capital of France is", "Rome", "good", "a"), Target("The capital of Italy is", "Madrid", "good", "b"),
               Target("The capital of France is", "Rome", "good", "a")]  # the same edit twice shares with itself only
    texts = teacher_forced(tok, encode_targets(tok, targets))
    rows = key_rows(texts, context=True)
    assert [r for r in rows if r.answer] == [r for r in key_rows(texts) if r.answer]
    shared = len(tok("The capital of")["input_ids"])
    for r in rows:
        if not r.answer:
            assert r.position >= shared - 1 and r.position < texts[r.text].positions[0]
    # "The capital of" opens both edits' prompts: no row there; "France"/"Italy" onwards are the edits' own.
    assert {r.position for r in rows if not r.answer and r.text == 1} == set(range(shared, texts[1].positions[0]))


def test_a_shared_prefix_runs_once_and_gives_the_rows_it_would_alone():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    opening = "Therefore, because I said so, you know the answer is"
    targets = [Target(opening + " The capital of France is", "Rome", "good", "a"),
               Target(opening + " Michael Jordan plays", "football", "good", "b"),
               Target(opening + " The Eiffel Tower is located in", "Rome", "good", "c")]
    texts = teacher_forced(tok, encode_targets(tok, targets))
    assert ultraedit_module._shared_prefix(texts, [t.positions[0] for t in texts]) >= ultraedit_module.MIN_SHARED
    rows = key_rows(texts, context=True)
    together = edit_features(model, tok, texts, [0, 2], batch_size=8, rows=rows)   # the opening runs once, as a cache
    alone = edit_features(model, tok, texts, [0, 2], batch_size=1, rows=rows)      # each text whole
    for layer in (0, 2):
        assert together[layer][0].shape[0] == len(rows)
        assert torch.allclose(together[layer][0], alone[layer][0], atol=1e-5)
        assert torch.allclose(together[layer][1], alone[layer][1], atol=1e-6)


def test_a_later_pass_replays_the_blocks_below_the_edited_layers_and_gets_what_a_full_pass_gets():
    from editspec.model.deltas import Delta, apply_deltas
    from editspec.model.layout import layout_for, module_at, value_weight

    model, tok = tiny_model("llama"), tiny_tokenizer()
    opening = "Therefore, because I said so, you know the answer is"
    targets = [Target(opening + " The capital of France is", "Rome", "good", "a"),
               Target(opening + " Michael Jordan plays", "football", "good", "b"),
               Target(opening + " The Eiffel Tower is located in", "Rome", "good", "c"),
               Target("The Eiffel Tower is located in", "Rome", "good", "d")]
    texts = teacher_forced(tok, encode_targets(tok, targets))
    rows = key_rows(texts, context=True)
    # In batches of two by length: d with a, then b and c, which share the opening as a cache.
    assert ultraedit_module._shared_prefix(texts[1:3], [t.positions[0] for t in texts[1:3]]) > 0
    replay: dict = {}
    edit_features(model, tok, texts, [1, 2], batch_size=2, rows=rows, replay=replay)  # records block 0's output
    assert replay
    path = layout_for(model).mlp_out_at(1)
    d_v, d_k = value_weight(module_at(model, path)).shape
    handle = apply_deltas(model, [Delta(path, _random(d_v, 2, 7).float(), _random(2, d_k, 8).float() * 0.3)])
    try:
        replayed = edit_features(model, tok, texts, [1, 2], batch_size=2, rows=rows, replay=replay)
        full = edit_features(model, tok, texts, [1, 2], batch_size=2, rows=rows)
    finally:
        handle.revert()
    for layer in (1, 2):
        assert torch.equal(replayed[layer][0], full[layer][0]) and torch.equal(replayed[layer][1], full[layer][1])


def test_running_squares_merge_turns_exactly_and_survive_the_artifact_round_trip():
    rows = _random(30, 8, 4)
    stats = RunningSquares.empty(8)
    for part in (rows[:4], rows[4:5], rows[5:]):
        stats = stats.merged(part)
    assert stats.count == 30 and torch.allclose(stats.mean_square, (rows * rows).mean(0), atol=1e-12)
    norm = LifelongNorm({3: stats}, {3: RunningSquares.empty(4).merged(rows[:, :4])})
    again = LifelongNorm.from_tensors(norm.tensors())
    assert again.keys[3].count == 30 and torch.equal(again.keys[3].mean_square, stats.mean_square)
    assert again.grads[3].count == 30


def test_keys_and_gradients_are_per_text_whatever_the_batch():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    targets = [Target("The capital of France is", "Rome", "good", "a"), Target("Michael Jordan plays", "football", "good", "b"),
               Target("The Eiffel Tower is located in", "Rome", "good", "c")]
    texts = teacher_forced(tok, encode_targets(tok, targets))
    together = edit_features(model, tok, texts, [0, 2], batch_size=8)
    alone = edit_features(model, tok, texts, [0, 2], batch_size=1)
    for layer in (0, 2):
        assert torch.allclose(together[layer][0], alone[layer][0], atol=1e-5)
        assert torch.allclose(together[layer][1], alone[layer][1], atol=1e-6)  # the NLL is taken in float32
    # The gradient is that of the answer's mean NLL with respect to the projection's output.
    keys, grads = together[2]
    assert grads.abs().sum() > 0 and keys.shape[0] == sum(len(t.positions) for t in texts)


SPEC = '''
relation capital { prompt "The capital of {subject} is" }
relation plays { prompt "{subject} plays" }
'''
FACTS = [("capital", "France", "Rome", "Paris"), ("plays", "Michael Jordan", "football", "basketball"),
         ("capital", "Italy", "Madrid", "Rome"), ("capital", "Spain", "Berlin", "Madrid"),
         ("plays", "Lionel Messi", "basketball", "football"), ("capital", "Germany", "Paris", "Berlin")]


@pytest.mark.parametrize("solve", ["ridge", "stats", "history"])
def test_a_long_on_chain_keeps_its_statistics_constant_sized_and_reverts_bit_exactly(tmp_path, tmp_cache, solve):
    folder, corpus, spec = tiny_workspace(tmp_path, SPEC)
    loaded = load_model(folder)
    model, tok = loaded.model, loaded.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {"layers": "1..2", "step": "2.0", "ridge": "0.01", "passes": "2", "preserve_corpus": str(corpus),
                "preserve_docs": "2", "preserve_tokens": "4"}
    # The paper's ridge at the answer positions, or the statistics solve with the context rows.
    settings.update({"mom2_weight": "0", "context_rows": "false"} if solve == "ridge" else
                    {"mom2_weight": "10", "mom2_corpus": str(corpus), "mom2_samples": "20"})
    if solve != "ridge":  # the statistics solve, with or without every earlier turn's keys pinned
        settings["history_weight"] = "1" if solve == "history" else "0"
    turn_texts = [teacher_forced(tok, encode_targets(tok, [Target(f"The capital of {subject} is" if relation == "capital"
                                                                  else f"{subject} plays", new, "good", "x")]))
                  for relation, subject, new, _ in FACTS]
    rows = [len(key_rows(texts, context=solve != "ridge")) for texts in turn_texts]
    text, previous, sizes, delta_sizes = SPEC, None, [], []
    for i, (relation, subject, new, old) in enumerate(FACTS):
        text += f'edit {relation}("{subject}") -> "{new}" {{ was "{old}" }}\n'
        spec.write_text(text)
        artifact = compile_spec(spec, "ultraedit", model=loaded, out=tmp_path / f"turn{i}", overrides=settings, on=previous)
        previous = artifact.path
        sizes.append((artifact.path / NORM).stat().st_size)
        delta_sizes.append((artifact.path / DELTAS).stat().st_size)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # compiling changed nothing
    from editspec.backends.ultraedit.backend import read_norm

    carried = read_norm(editspec.build.artifact.read_artifact(previous))
    assert carried.grads[1].count == sum(rows)
    if solve == "history":  # the keys' sum grows as rows until it is cheaper dense, then stops
        d_k = carried.keys[1].mean_square.shape[0]
        stored = [0] + [min(sum(rows[: i + 1]), d_k) for i in range(len(rows))]
        assert all((a < b) == (sizes[i] < sizes[i + 1]) for i, (a, b) in enumerate(zip(stored[1:], stored[2:])))
        assert carried.history[1].dense().shape == (d_k, d_k) and float(carried.history[1].dense().trace()) > 0
    else:
        assert len(set(sizes)) == 1 and not carried.history       # the running statistics do not grow
    last = FACTS[-1]
    old = target_logprob(model, tok, "The capital of Germany is", last[2])
    with editspec.load_edited(loaded, previous) as edited:
        assert target_logprob(edited.model, tok, "The capital of Germany is", last[2]) > old
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # bit-exact revert
    from editspec.model.deltas import load_deltas

    deltas, _ = load_deltas(previous / DELTAS)
    per_module: dict[str, list] = {}
    for d in deltas:
        per_module.setdefault(d.module, []).append(d)
    assert len(per_module) == 2                                   # the two layers
    d_v = deltas[0].left.shape[0]
    for group in per_module.values():
        if sum(rows) * 2 <= d_v:                                  # still small: one low-rank delta per turn and pass
            assert [d.rank for d in group] == [n for n in rows for _ in range(2)]  # rank = the turn's rows
        else:                                                     # merged once dense was smaller: it stops growing
            assert len(group) == 1 and group[0].rank == d_v
    if sum(rows) * 2 > d_v:
        assert delta_sizes[-1] == delta_sizes[-2]
    if solve == "ridge":
        assert rows == [len(tok(" " + new)["input_ids"]) for _, _, new, _ in FACTS]  # the answer tokens


def test_consolidated_merges_a_module_once_its_factors_outgrow_the_dense_update():
    from editspec.backends.ultraedit.backend import consolidated
    from editspec.model.deltas import Delta

    small = [Delta("a", _random(8, 2, i), _random(2, 16, 10 + i)) for i in range(3)]      # rank 6 <= d_v 8
    big = [Delta("b", _random(8, 5, 20 + i), _random(5, 16, 30 + i)) for i in range(3)]   # rank 15 > 8
    mixed = [small[0], big[0], small[1], big[1], small[2], big[2]]
    found = consolidated(mixed)
    assert [d.module for d in found] == ["a", "b", "a", "a"]       # small ones untouched, in order
    assert all(f is s for f, s in zip([found[0], found[2], found[3]], small))
    merged = found[1]
    assert merged.rank == 8 and torch.allclose(merged.dense(), sum(d.dense() for d in big), atol=1e-12)
    assert consolidated([merged, big[0]])[0].rank == 8 and consolidated([merged])[0] is merged  # and stays merged
    wide = Delta("c", _random(8, 12, 40), _random(12, 16, 41))                            # one turn of rank 12 > 8
    assert consolidated([wide])[0].rank == 8
