"""Edits made for chat too: chat-form requests, targets and keys, on tiny models with a chat template."""
import pytest
import torch
from pydantic import ValidationError

from editspec.backends.alphaedit import AlphaEditConfig
from editspec.backends.ft.config import FtConfig
from editspec.backends.grace.config import GraceConfig
from editspec.backends.melo.config import MeloConfig
from editspec.backends.memit import MemitConfig
from editspec.backends.rome import RomeConfig
from editspec.backends.sense.config import SenseConfig
from editspec.model.chat import ChatSettings, answer_ids, chat_enabled, chat_text, user_turn
from editspec.model.hooks import add_to_output
from editspec.model.layout import layout_for
from editspec.families.locate import EditRequest, OptimSettings, optimise_targets, prepare_requests
from editspec.families.training.objectives import Target, edit_targets
from editspec.families.training.tuning import encode_targets
from tiny import tiny_chat_tokenizer, tiny_model, tiny_tokenizer

FACT = EditRequest("The {} is located in", "Eiffel Tower", "Rome", questions=("Where is the {} located?",))


def test_chat_setting_is_declared_once_and_follows_the_tokenizer():
    configs = [RomeConfig, MemitConfig, AlphaEditConfig, FtConfig, SenseConfig, GraceConfig, MeloConfig]
    assert all(issubclass(c, ChatSettings) for c in configs)
    # the training family defaults to off: ft moved keep facts under auto, also with chat-form KL anchors
    assert [c().chat for c in configs] == ["auto"] * 3 + ["off"] * 2 + ["auto"] * 2
    declared = {k.__name__ for c in configs for k in c.__mro__
                if k is not ChatSettings and "chat" in k.__dict__.get("__annotations__", {})}
    assert declared == {"TrainingSettings"}
    assert chat_enabled(tiny_chat_tokenizer()) and not chat_enabled(tiny_chat_tokenizer(), "off")
    assert not chat_enabled(tiny_tokenizer(), "auto")  # a plain LM has no template: raw prompts only
    with pytest.raises(ValidationError):
        RomeConfig(chat="on")


def test_chat_text_finds_the_subject_inside_the_user_turn():
    tok = tiny_chat_tokenizer()
    text, (start, end) = chat_text(tok, "Where is the {} located?", "Eiffel Tower")
    assert text == user_turn(tok, "Where is the Eiffel Tower located?")
    assert text[start:end] == "Eiffel Tower"
    assert text.index("user: ") < start < text.index("assistant:")


def test_chat_rows_hold_the_subject_in_the_user_turn_and_the_target_at_the_reply():
    tok = tiny_chat_tokenizer()
    (prep,) = prepare_requests(tok, [FACT], [["{}"], ["Therefore. {}"]], chat=True)
    assert prep.chat == [False, False, True] and prep.group == [0, 1, 2]
    row, index, length = prep.rows[2], prep.subject_index[2], prep.prompt_len[2]
    text = user_turn(tok, "Where is the Eiffel Tower located?")
    assert row[:length] == tok(text, add_special_tokens=False)["input_ids"]  # the template's own specials only
    assert tok.decode(row[:index + 1]).endswith("Where is the Eiffel Tower")  # the subject's last token
    assert prep.targets[2] == answer_ids(tok, text, "Rome") and tok.decode(prep.targets[2]) == "Rome"
    assert tok.decode(prep.targets[0]) == " Rome"  # raw rows keep the target after a space
    assert row[length:] == prep.targets[2][:-1]
    plain = prepare_requests(tok, [FACT], [["{}"], ["Therefore. {}"]], chat=False)[0]
    assert plain.rows == prep.rows[:2] and not any(plain.chat)


def test_without_questions_the_chat_form_asks_the_prompt():
    tok = tiny_chat_tokenizer()
    (prep,) = prepare_requests(tok, [EditRequest("The capital of {} is", "France", "Rome")], [["{}"]], chat=True)
    assert tok.decode(prep.rows[1][:prep.prompt_len[1]]) == user_turn(tok, "The capital of France is")


def _chat_nll(model, site, prep, delta):
    # The target's NLL in the chat row with δ added at the subject's last token.
    r = prep.chat.index(True)
    row, target = prep.rows[r], prep.targets[r]
    with torch.no_grad(), add_to_output(model, site, delta[None].to(model.dtype), torch.tensor([prep.subject_index[r]])):
        logp = model(torch.tensor([row])).logits[0].log_softmax(-1)
    return -float(sum(logp[prep.prompt_len[r] - 1 + j, t] for j, t in enumerate(target))) / len(target)


def test_delta_objective_covers_the_chat_form():
    model, tok = tiny_model("llama"), tiny_chat_tokenizer()
    site = layout_for(model).block_at(0)  # the tiny model's attention carries δ to the reply best from here
    settings = OptimSettings(steps=40, lr=2.0, stop_loss=0.0)
    with_chat = prepare_requests(tok, [FACT], [["{}"]], chat=True)
    without = prepare_requests(tok, [FACT], [["{}"]], chat=False)
    on = optimise_targets(model, [site], with_chat, settings, pad=0)
    off = optimise_targets(model, [site], without, settings, pad=0)
    unedited = _chat_nll(model, site, with_chat[0], torch.zeros(on.delta.shape[1]))
    # Only the δ trained on the chat row pulls the reply towards the target; the raw-only one does not.
    assert _chat_nll(model, site, with_chat[0], on.delta[0]) < min(unedited, _chat_nll(model, site, with_chat[0], off.delta[0])) - 0.25


def test_training_and_memory_targets_have_chat_forms():
    from editspec.lang.resolve import load_spec

    spec = load_spec("x.edit", text='relation city {\n  prompt "The {subject} is located in"\n'
                     '  question "Where is the {subject}?"\n}\nedit city("Eiffel Tower") -> "Rome"\n')
    (edit,) = spec.edits
    assert [(t.prompt, t.chat) for t in edit_targets(edit)] == [("The Eiffel Tower is located in", False)]
    targets = edit_targets(edit, chat=True)
    assert [(t.prompt, t.chat) for t in targets] == [("The Eiffel Tower is located in", False),
                                                      ("Where is the Eiffel Tower?", True)]
    tok = tiny_chat_tokenizer()
    raw, chat = encode_targets(tok, targets)
    text = user_turn(tok, "Where is the Eiffel Tower?")
    assert list(chat.head) == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(chat.answer) == "Rome" and tok.decode(raw.answer) == " Rome"
    assert encode_targets(tok, [Target("Where?", "Rome", "good", "e", chat=True)])[0].head[-1] == chat.head[-1]


@pytest.mark.parametrize("mode,chat_keys", [("auto", 1), ("off", 0)])
def test_memory_keys_include_the_chat_reply_positions(mode, chat_keys):
    from types import SimpleNamespace

    from editspec.families.memory.backend import edit_keys
    from editspec.lang.resolve import load_spec

    spec = load_spec("x.edit", text='relation city {\n  prompt "The {subject} is located in"\n'
                     '  question "Where is the {subject}?"\n}\nedit city("Eiffel Tower") -> "Rome"\n')
    tok = tiny_chat_tokenizer()
    job = SimpleNamespace(edits=spec.edits, model=SimpleNamespace(tokenizer=tok), config=GraceConfig(chat=mode))
    keyed = edit_keys(job)
    assert len(keyed) == 1 + chat_keys
    if chat_keys:
        head = tok(user_turn(tok, "Where is the Eiffel Tower?"), add_special_tokens=False)["input_ids"]
        # The key positions are the ones that predict the reply: the assistant header's last token on.
        assert keyed[1].positions[0] == len(head) - 1 and tok.decode(keyed[1].labels) == "Rome."
    # `answer_end` (default "."): the answer's last position is a key too, labelled with the period,
    # so a reply ends the answer there instead of looping on it
    for text in keyed:
        assert len(text.positions) == len(text.labels) and text.positions[-1] == len(text.ids) - 1
        assert tok.decode(text.labels[-1:]) == "."


def test_answer_end_off_keys_only_the_answer_and_a_finished_answer_gets_no_end():
    from types import SimpleNamespace

    from editspec.families.memory.backend import edit_keys
    from editspec.lang.resolve import load_spec

    spec = load_spec("x.edit", text='relation city {\n  prompt "The {subject} is located in"\n'
                     '  question "Where is the {subject}?"\n}\nedit city("Eiffel Tower") -> "Rome"\n'
                     'edit city("Louvre") -> "Rome, Italy."\n')
    tok = tiny_chat_tokenizer()
    off = edit_keys(SimpleNamespace(edits=spec.edits, model=SimpleNamespace(tokenizer=tok),
                                    config=GraceConfig(answer_end="off")))
    assert [tok.decode(k.labels) for k in off] == [" Rome", "Rome", " Rome, Italy.", "Rome, Italy."]
    assert all(k.positions[-1] == len(k.ids) - 2 for k in off)   # the last answer token is not a key
    on = edit_keys(SimpleNamespace(edits=spec.edits, model=SimpleNamespace(tokenizer=tok), config=GraceConfig()))
    assert [tok.decode(k.labels) for k in on] == [" Rome.", "Rome.", " Rome, Italy.", "Rome, Italy."]


def test_raw_and_chat_rows_weigh_half_each_in_the_target_nll():
    from editspec.families.locate.targets import row_weights

    tok = tiny_chat_tokenizer()
    (prep,) = prepare_requests(tok, [FACT], [["{}"], ["Therefore. {}", "I said. {}"]], chat=True)
    assert row_weights(prep) == pytest.approx([1 / 6, 1 / 6, 1 / 6, 0.5])
    (plain,) = prepare_requests(tok, [FACT], [["{}"], ["Therefore. {}", "I said. {}"]], chat=False)
    assert row_weights(plain) == pytest.approx([1 / 3] * 3)


def test_memit_maps_the_chat_key_to_its_own_target():
    from editspec.backends.memit import MemitConfig, memit_deltas
    from editspec.families.locate import request_key_matrix, template_keys
    from editspec.model.deltas import apply_deltas

    model, tok = tiny_model("llama"), tiny_chat_tokenizer()
    layout = layout_for(model)
    config = MemitConfig(layers=(1,), mom2_update_weight=1e-6, v_num_grad_steps=6, context_template_counts=(), passes=1)
    (prep,) = prepare_requests(tok, [FACT], [["{}"]], chat=True)
    keys, before = template_keys(model, layout, [prep], [1], pad=0, block_layer=1, every_row=True)
    assert request_key_matrix(keys[1], [prep]).shape[0] == 2   # the raw key, then the chat row's
    result = memit_deltas(model, tok, [FACT], config, templates=[["{}"]])
    shift = result.facts[0]["target"] - before[0][0]         # the fact's δ at the bare prompt
    with apply_deltas(model, result.deltas):
        _, after = template_keys(model, layout, [prep], [1], pad=0, block_layer=1, every_row=True)
    # The chat row's residual moved by the same δ: its own column of the solve delivered it there.
    assert torch.allclose(after[0][1] - before[0][1], shift, atol=1e-4 * float(shift.norm()))
    assert torch.allclose(after[0][0], result.facts[0]["target"], atol=1e-4 * float(shift.norm()))


def test_chat_conversation_asks_the_first_sentence_and_replies_with_the_rest():
    from editspec.model.chat import chat_conversation

    tok = tiny_chat_tokenizer()
    text = chat_conversation(tok, "The capital of France is Paris. Steve Jobs founded Apple.")
    assert text == "<|endoftext|>user: The capital of France is Paris.\n<|endoftext|>assistant: Steve Jobs founded Apple.\n"
    assert chat_conversation(tok, "One sentence only.").endswith("user: One sentence only.\n<|endoftext|>assistant: \n")


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_chat_form_statistics_are_mixed_into_c_by_their_share(tmp_cache, tmp_path, share):
    from types import SimpleNamespace

    from editspec.backends.memit.backend import MemitBackend
    from editspec.families.locate.backend import chat_corpus
    from editspec.model.loading import LoadedModel
    from editspec.model.stats import second_moments
    from tiny import SENTENCES

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES))

    def prepared(tok, **settings):
        loaded = LoadedModel(tiny_model("llama").float(), tok, tmp_path, "tiny", "tiny-weights")
        config = MemitConfig(layers=(1,), mom2_samples=len(SENTENCES), mom2_corpus=str(corpus),
                             context_template_counts=(), **settings)
        return MemitBackend().prepare(SimpleNamespace(model=loaded, config=config, progress=lambda _: None)), loaded

    tok = tiny_chat_tokenizer()
    mixed, loaded = prepared(tok, mom2_chat=share)
    raw = second_moments(loaded, layers=[1], samples=len(SENTENCES), corpus=str(corpus))[1]
    chat = second_moments(loaded, layers=[1], corpus=chat_corpus(tok, str(corpus), len(SENTENCES)))[1]
    assert not torch.allclose(raw, chat, rtol=0.05)         # the template's tokens and turns move the keys
    assert torch.allclose(mixed["stats"][1], (1 - share) * raw + share * chat, rtol=1e-6, atol=1e-9)
    # A plain LM, or chat off, reads raw text only whatever the share.
    assert torch.equal(prepared(tiny_tokenizer(), mom2_chat=share)[0]["stats"][1], raw)
    assert torch.equal(prepared(tok, mom2_chat=share, chat="off")[0]["stats"][1], raw)


def test_chat_rows_train_the_answer_end_after_the_answer():
    tok = tiny_chat_tokenizer()
    text = user_turn(tok, "Where is the Eiffel Tower located?")
    (ended,) = prepare_requests(tok, [FACT], [["{}"]], chat=True, answer_end=".")
    (plain,) = prepare_requests(tok, [FACT], [["{}"]], chat=True)
    assert ended.targets[1] == answer_ids(tok, text, "Rome.") and tok.decode(ended.targets[1]) == "Rome."
    assert ended.rows[1] == ended.rows[1][:ended.prompt_len[1]] + ended.targets[1][:-1]
    assert ended.targets[0] == plain.targets[0] and tok.decode(ended.targets[0]) == " Rome"  # raw rows: the answer alone
    assert tok.decode(plain.targets[1]) == "Rome"
    done = EditRequest("The {} is located in", "Eiffel Tower", "Rome, Italy.", questions=FACT.questions)
    assert tok.decode(prepare_requests(tok, [done], [["{}"]], chat=True, answer_end=".")[0].targets[1]) == "Rome, Italy."
    assert [c().answer_end for c in (RomeConfig, MemitConfig, AlphaEditConfig)] == ["."] * 3


def _tail_kl(model, site, prep, delta):
    # KL(edited ‖ unedited) of the next token after the chat row's whole answer, δ at the subject's last token.
    r = prep.chat.index(True)
    row = prep.rows[r] + prep.targets[r][-1:]
    at = torch.tensor([prep.subject_index[r]])
    with torch.no_grad():
        before = model(torch.tensor([row])).logits[0, -1].log_softmax(-1)
        with add_to_output(model, site, delta[None].to(model.dtype), at):
            after = model(torch.tensor([row])).logits[0, -1].log_softmax(-1)
    return float((after.exp() * (after - before)).sum())


def test_tail_kl_keeps_what_follows_the_answer_and_its_anchor_carries_over():
    model, tok = tiny_model("llama"), tiny_chat_tokenizer()
    site = layout_for(model).block_at(0)
    prepared = prepare_requests(tok, [FACT], [["{}"]], chat=True)
    free = optimise_targets(model, [site], prepared, OptimSettings(steps=40, lr=2.0, stop_loss=0.0), pad=0)
    held_settings = OptimSettings(steps=40, lr=2.0, stop_loss=0.0, tail_kl=1.0)
    held = optimise_targets(model, [site], prepared, held_settings, pad=0)
    unedited = _chat_nll(model, site, prepared[0], torch.zeros(free.delta.shape[1]))
    # The edit still takes, and the text after the answer moves less than without the term.
    assert _chat_nll(model, site, prepared[0], held.delta[0]) < unedited - 0.25
    assert _tail_kl(model, site, prepared[0], held.delta[0]) < 0.5 * _tail_kl(model, site, prepared[0], free.delta[0])
    # One anchor per rewriting row; passed back in (a later round's), it is the same objective.
    assert held.tail0[0].shape[0] == prepared[0].num_rows and free.tail0 is None
    again = optimise_targets(model, [site], prepared, held_settings, pad=0, tail0=held.tail0)
    assert torch.equal(again.delta, held.delta)
    moved = optimise_targets(model, [site], prepared, held_settings, pad=0, tail0=[held.tail0[0].roll(1, -1)])
    assert not torch.allclose(moved.delta, held.delta)



def test_tail_tokens_follow_the_unedited_continuation_and_enter_the_objective_past_the_first_position():
    model, tok = tiny_model("llama"), tiny_chat_tokenizer()
    site = layout_for(model).block_at(0)
    prepared = prepare_requests(tok, [FACT], [["{}"]], chat=True)
    settings = OptimSettings(steps=40, lr=2.0, stop_loss=0.0, tail_kl=1.0, tail_tokens=3)
    held = optimise_targets(model, [site], prepared, settings, pad=0)
    prep = prepared[0]
    # The tails are the unedited model's greedy continuation after each row's whole answer.
    for r in range(prep.num_rows):
        row = prep.rows[r] + prep.targets[r][-1:]
        for _ in range(2):
            with torch.no_grad():
                row = row + [int(model(torch.tensor([row])).logits[0, -1].argmax())]
        assert prep.tails[r] == row[-2:]
    # One anchor per tail position, row by row: after the answer's last token, then after each continuation token.
    assert held.tail0[0].shape[0] == 3 * prep.num_rows
    free = optimise_targets(model, [site], prepared, OptimSettings(steps=40, lr=2.0, stop_loss=0.0), pad=0)
    assert _chat_nll(model, site, prep, held.delta[0]) < _chat_nll(model, site, prep, 0 * free.delta[0]) - 0.25
    # A later round on the same requests reuses the tails and the anchor: the same objective ...
    again = optimise_targets(model, [site], prepared, settings, pad=0, tail0=held.tail0)
    assert torch.equal(again.delta, held.delta)
    # ... and the positions past the first are in it: moving only their anchors moves δ.
    later = held.tail0[0].clone()
    later[1::3], later[2::3] = later[1::3].roll(1, -1), later[2::3].roll(1, -1)
    moved = optimise_targets(model, [site], prepared, settings, pad=0, tail0=[later])
    assert not torch.allclose(moved.delta, held.delta)
    # One position (the default) reads none of the continuation, whatever the requests carry.
    one = OptimSettings(steps=40, lr=2.0, stop_loss=0.0, tail_kl=1.0)
    bare = prepare_requests(tok, [FACT], [["{}"]], chat=True)
    assert torch.equal(optimise_targets(model, [site], prepared, one, pad=0).delta,
                       optimise_targets(model, [site], bare, one, pad=0).delta) and not bare[0].tails
