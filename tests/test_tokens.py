"""Subject index, target tokens, padding and context templates."""
import pytest
import torch

from editspec.errors import EditspecError
from editspec.model.tokens import (
    context_templates, encode_with_subject, fill_prompt, place_in_template, right_pad,
    target_token_ids,
)
from tiny import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("prompt,subject", [
    ("The capital of {} is", "France"),
    ("{} is a", "Danielle Darrieux"),
    ("Where is {}? It is in", "the Eiffel Tower"),
    ("{}", "Paris"),
])
def test_subject_last_index_decodes_to_subject_end(prompt, subject):
    tok = tiny_tokenizer()
    text, span = fill_prompt(prompt, subject)
    ids, index = encode_with_subject(tok, text, span)
    assert tok.decode(ids[: index + 1]).endswith(subject)
    assert not tok.decode(ids[:index]).endswith(subject)


@pytest.mark.parametrize("prompt", ["The capital of {} is", "{} is a"])
def test_subject_index_counts_a_bos_token(prompt):
    text, span = fill_prompt(prompt, "France")
    ids, index = encode_with_subject(tiny_tokenizer(), text, span)
    ids_bos, index_bos = encode_with_subject(tiny_tokenizer(bos=True), text, span)
    assert ids_bos == [0] + ids and index_bos == index + 1
    # Target tokens never include the BOS.
    assert target_token_ids(tiny_tokenizer(bos=True), text, "Paris") == target_token_ids(tiny_tokenizer(), text, "Paris")


def test_target_tokens_are_prefix_difference_with_space():
    tok = tiny_tokenizer()
    text, _ = fill_prompt("The capital of {} is", "France")
    target = target_token_ids(tok, text, "Paris")
    assert tok(text + " Paris", add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"] + target
    assert tok.decode(target) == " Paris"
    assert target_token_ids(tok, text, " Paris") == target


@pytest.mark.parametrize("prompt,subject,target", [
    ("The capital of {{}} is", "France", "Paris"),
    ("The capital of {} is {}", "France", "Paris"),
    ("The capital of {} is", "France", "   "),
])
def test_bad_requests_are_errors(prompt, subject, target):
    tok = tiny_tokenizer()
    with pytest.raises(EditspecError):
        text, span = fill_prompt(prompt.replace("{{}}", "[]"), subject)
        target_token_ids(tok, text, target)


def test_right_pad():
    ids, mask = right_pad([[1, 2, 3], [4]], pad=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_templates_are_seeded_cached_and_brace_free(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    a = context_templates(model, tok, ((3, 4), (2, 6)), seed=1, cache_file=tmp_path / "t.json")
    b = context_templates(model, tok, ((3, 4), (2, 6)), seed=1)
    assert a == b and a[0] == ["{}"] and [len(g) for g in a] == [1, 3, 2]
    for group in a[1:]:
        for t in group:
            assert t.endswith(". {}") and t.count("{") == 1
    assert context_templates(model, tok, ((3, 4), (2, 6)), seed=1, cache_file=tmp_path / "t.json") == a
    text, span = place_in_template(a[1][0], "The capital of {} is", "France")
    assert text[span[0]:span[1]] == "France" and text.endswith("France is")
