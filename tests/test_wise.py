"""WISE's side memory on tiny tensors and a tiny model: routing, TIES merging, threshold calibration."""
import pytest
import torch

from editspec.backends.wise.memory import SideMemory, best_threshold, routing_hook, scores, ties_merge
from tiny import tiny_model


def _random(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_routing_picks_the_memory_with_the_highest_score_only_past_its_threshold():
    w = _random(6, 8, seed=0)
    memory = SideMemory.empty(6, 8)
    memory.put(0, torch.outer(_random(6, seed=1), torch.eye(8)[0]), threshold=0.5, edits=3)  # reads feature 0
    memory.put(1, torch.outer(_random(6, seed=2), torch.eye(8)[1]), threshold=0.5, edits=2)  # reads feature 1
    inputs = torch.stack([torch.eye(8)[0] * 5 + 0.01, torch.eye(8)[1] * 5 + 0.01, torch.eye(8)[5]])
    index, update = memory.route(inputs, inputs @ w.T)
    assert index.tolist() == [0, 1, -1]
    assert torch.allclose(update[0], inputs[0] @ memory.deltas[0].T)
    assert torch.allclose(scores(memory.deltas[0], inputs, inputs @ w.T)[:1],
                          (inputs[:1] @ memory.deltas[0].T).norm(dim=-1) / (inputs[:1] @ w.T).norm(dim=-1))


def test_positions_outside_every_threshold_run_the_unedited_computation_bit_for_bit():
    model = tiny_model("llama").float()
    module = model.model.layers[1].mlp.down_proj
    memory = SideMemory.empty(*module.weight.shape)
    memory.put(0, _random(*module.weight.shape, seed=3) * 1e-3, threshold=10.0, edits=1)  # nothing passes
    ids = torch.tensor([[5, 17, 33, 2, 9]])
    with torch.no_grad():
        before = model(ids).logits
        handle = module.register_forward_hook(routing_hook(memory))
        after = model(ids).logits
        memory.thresholds[0] = 0.0  # everything passes: the memory's update is added everywhere
        changed = model(ids).logits
        handle.remove()
    assert torch.equal(before, after) and not torch.equal(before, changed)


def test_ties_merge_keeps_agreeing_entries_and_drops_the_minority_sign():
    a = torch.tensor([[2.0, -1.0, 0.0, 3.0]])
    b = torch.tensor([[2.0, 3.0, 4.0, 0.0]])
    merged = ties_merge([a, b], density=1.0)
    assert merged.tolist() == [[2.0, 3.0, 4.0, 3.0]]   # entry 1: + wins (3 > 1); zeros do not vote
    assert torch.equal(ties_merge([a], 0.5), a)


def test_threshold_separates_what_should_route_from_what_should_not_locality_first():
    positive, negative = torch.tensor([2.0, 3.0, 4.0]), torch.tensor([0.5, 1.0, 1.5])
    t = best_threshold(positive, negative)
    assert 1.5 < t < 2.0
    # An overlap: one keep position above two edit positions costs more than it gains.
    t = best_threshold(torch.tensor([1.0, 1.2, 3.0]), torch.tensor([0.1, 1.3]), leak_cost=10.0)
    assert t > 1.3


def test_a_shard_trains_the_same_with_its_prefixes_cached():
    from types import SimpleNamespace

    from editspec.backends.wise.backend import train_shard
    from editspec.backends.wise.config import WiseConfig
    from editspec.families.memory.codebook import KeyedText
    from tiny import tiny_tokenizer

    model, tok = tiny_model("llama").float(), tiny_tokenizer()  # float32, as the memory is
    path = "model.layers.1.mlp.down_proj"
    module = model.model.layers[1].mlp.down_proj
    # Texts of different lengths, answers at different depths: the prefixes and suffixes are ragged.
    keyed = [KeyedText("a", (5, 17, 33, 2, 9, 41), (3, 4), (9, 41)),
             KeyedText("b", (8, 3, 12, 7), (1, 2), (12, 7)),
             KeyedText("c", (4, 4, 6, 19, 22, 30, 11, 2), (5, 6), (30, 11))]
    job = SimpleNamespace(config=WiseConfig(n_iter=3, stop_loss=0.0), model=SimpleNamespace(model=model, tokenizer=tok))
    base = _random(*module.weight.shape, seed=4) * 1e-3
    mask = (torch.rand(base.shape, generator=torch.Generator().manual_seed(5)) < 0.5).float()
    edit_in, edit_out = _random(4, module.weight.shape[1], seed=6), _random(4, seed=7).abs() + 1
    ref_in, ref_out = _random(6, module.weight.shape[1], seed=8), _random(6, seed=9).abs() + 1
    a = train_shard(job, path, keyed, base, mask, edit_in, edit_out, [(ref_in, ref_out)])
    b = train_shard(job, path, keyed, base, mask, edit_in, edit_out, [(ref_in, ref_out)], cache_prefix=False)
    assert a[2] == b[2] == 3 and a[0].abs().sum() > 0
    assert torch.allclose(a[0], b[0], rtol=1e-4, atol=1e-6)
    assert a[1] == pytest.approx(b[1], rel=1e-4)


def test_a_small_group_of_hard_negatives_counts_on_its_own_in_the_threshold():
    positive = torch.tensor([2.0, 2.1, 2.2, 2.3])
    easy = torch.zeros(200)
    hard = torch.tensor([2.15])  # one keep answer scoring among the edits
    pooled = best_threshold(positive, torch.cat([easy, hard]), leak_cost=10.0)
    grouped = best_threshold(positive, [hard, easy], leak_cost=10.0)
    assert pooled < 2.0          # pooled, 1 in 201 leaked costs less than the edits gained
    assert grouped > 2.15        # as its own group, routing it costs a whole group's fraction


def test_subject_keys_sit_on_the_subjects_last_token_in_plain_and_chat_texts():
    from types import SimpleNamespace

    from editspec.backends.wise.backend import _subject_positions
    from editspec.backends.wise.config import WiseConfig
    from dataclasses import replace

    from editspec.families.memory.backend import edit_key_targets, edit_keys
    from editspec.families.memory.codebook import teacher_forced
    from editspec.families.training.tuning import encode_targets
    from editspec.lang.resolve import load_spec
    from tiny import tiny_chat_tokenizer

    spec = load_spec("x.edit", text='relation city {\n  prompt "The {subject} is located in"\n'
                     '  question "Where is the {subject}?"\n}\nedit city("Eiffel Tower") -> "Rome"\n')
    tok = tiny_chat_tokenizer()
    job = SimpleNamespace(edits=spec.edits, model=SimpleNamespace(tokenizer=tok), config=WiseConfig(key="subject"))
    keyed, targets = edit_keys(job), edit_key_targets(job)
    keys = _subject_positions(tok, targets, spec.edits, keyed)
    for text, (key,) in zip(keyed, keys):  # the plain prompt and the chat user turn
        assert tok.decode(text.ids[: key + 1]).endswith("Eiffel Tower") and key < text.positions[0]
    # A prompt that does not name the subject keeps its answer positions as keys.
    unnamed = [replace(targets[0], prompt="It is located in")]
    (text,) = teacher_forced(tok, encode_targets(tok, unnamed))
    assert _subject_positions(tok, unnamed, spec.edits, [text]) == [text.positions]


def test_a_shard_keyed_at_the_subject_trains_the_same_cached_and_acts_only_there():
    from types import SimpleNamespace

    from editspec.backends.wise.backend import train_shard
    from editspec.backends.wise.config import WiseConfig
    from editspec.families.memory.codebook import KeyedText
    from tiny import tiny_tokenizer

    model, tok = tiny_model("llama").float(), tiny_tokenizer()
    path = "model.layers.1.mlp.down_proj"
    module = model.model.layers[1].mlp.down_proj
    keyed = [KeyedText("a", (5, 17, 33, 2, 9, 41), (3, 4), (9, 41)),
             KeyedText("b", (8, 3, 12, 7), (1, 2), (12, 7))]
    keys = [(1,), (0,)]  # each text's "subject", before its answer
    job = SimpleNamespace(config=WiseConfig(n_iter=3, stop_loss=0.0), model=SimpleNamespace(model=model, tokenizer=tok))
    base = torch.zeros(module.weight.shape)
    mask = torch.ones(base.shape)
    edit_in, edit_out = _random(2, module.weight.shape[1], seed=6), _random(2, seed=7).abs() + 1
    ref = [(_random(6, module.weight.shape[1], seed=8), _random(6, seed=9).abs() + 1)]
    cached = train_shard(job, path, keyed, base, mask, edit_in, edit_out, ref, keys=keys)
    plain = train_shard(job, path, keyed, base, mask, edit_in, edit_out, ref, cache_prefix=False, keys=keys)
    at_answers = train_shard(job, path, keyed, base, mask, edit_in, edit_out, ref)
    assert torch.allclose(cached[0], plain[0], rtol=1e-4, atol=1e-6)
    assert cached[1] == pytest.approx(plain[1], rel=1e-4)
    assert not torch.allclose(cached[0], at_answers[0])  # where the memory acts changes what it learns
