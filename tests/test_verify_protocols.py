"""The verifier's protocols on hand-computed cases and on tiny models (checked against plain loops)."""
import math

import pytest
import torch

from editspec.verify import protocols
from editspec.verify.observe import ngram_entropy, text_loss, text_logprobs
from editspec.verify.protocols import Scored, compare, generate_texts, logprob, normalise, score_targets, teacher_forced
from tiny import tiny_model, tiny_tokenizer


def scored(target, logps, target_ids, argmax):
    return Scored("prompt", target, tuple(target_ids), tuple(math.log(p) for p in logps), tuple(argmax))


# -- hand-computed numbers ------------------------------------------------------------------------

def test_probabilities_are_counterfacts_and_hewitts():
    s = scored("a", [0.5, 0.125], [1, 2], [1, 7])
    assert s.p_mean == pytest.approx(0.25)          # exp(mean log p) = sqrt(0.5 * 0.125)
    assert s.p_sequence == pytest.approx(0.0625)    # 0.5 * 0.125
    assert s.accuracy == 0.5                        # token 1 is the argmax, token 2 is not


@pytest.mark.parametrize("answer_p, foil_p, passed", [
    ([0.5, 0.125], [0.2], True),      # 0.25 > 0.2
    ([0.5, 0.125], [0.3], False),     # 0.25 < 0.3
    ([0.04], [0.3, 0.3], False),
])
def test_compare_uses_mean_token_probability(answer_p, foil_p, passed):
    result = compare([scored("new", answer_p, range(len(answer_p)), [0] * len(answer_p))],
                     [scored("old", foil_p, range(len(foil_p)), [0] * len(foil_p))])
    assert result.passed is passed
    assert result.score == (1.0 if passed else 0.0)
    assert result.scores["p_answer"] == pytest.approx(math.exp(sum(map(math.log, answer_p)) / len(answer_p)))


def test_compare_takes_the_best_alias():
    weak, strong = scored("Linda Yaccarino", [0.01], [1], [0]), scored("Yaccarino", [0.6], [2], [2])
    result = compare([weak, strong], [scored("Jack Dorsey", [0.3], [3], [0])])
    assert result.passed and result.got == "Yaccarino" and result.scores["p_answer"] == pytest.approx(0.6)


def test_teacher_forced_is_token_accuracy_of_the_best_alias():
    half = scored("a", [0.5, 0.1], [4, 5], [4, 9])
    full = scored("b", [0.2], [6], [6])
    assert teacher_forced([half]).score == 0.5 and not teacher_forced([half]).passed
    assert teacher_forced([half, full]).passed and teacher_forced([half, full]).scores["answer"] == "b"


@pytest.mark.parametrize("comparator, threshold, passed", [(">=", 0.2, True), (">=", 0.3, False),
                                                          ("<=", 0.3, True), ("<=", 0.2, False)])
def test_logprob_threshold_on_whole_answer_probability(comparator, threshold, passed):
    s = scored("Strelsau", [0.5, 0.5], [1, 2], [1, 2])   # P = 0.25
    assert logprob([s], comparator, threshold).passed is passed


def test_logprob_upper_bound_holds_for_every_alias():
    unlikely, likely = scored("555-0187", [0.01], [1], [0]), scored("(555) 0187", [0.5], [2], [2])
    assert not logprob([unlikely, likely], "<=", 0.05).passed


@pytest.mark.parametrize("text, answers, hit", [
    (" The Hague, in the Netherlands.", ["the hague"], "the hague"),
    (" Paris!", ["Paris"], "Paris"),
    (" Parisian food", ["Paris"], None),                  # whole words only
    (" rio de janeiro, brazil", ["Rio de Janeiro", "Rio"], "Rio de Janeiro"),
    (" nothing here", ["Rome"], None),
])
def test_generate_normalises_and_matches_whole_words(text, answers, hit):
    assert protocols.contains_answer(text, answers) == hit
    assert protocols.generate(text, answers).passed is (hit is not None)


def test_normalise_drops_case_punctuation_articles_and_spaces():
    assert normalise("  An  Apple, a DAY; the end. ") == "apple day end"


def test_ngram_entropy_by_hand():
    assert ngram_entropy("x x x x x x") == 0.0
    # words a b c d: 3 distinct bigrams (H2 = log2 3), 2 distinct trigrams (H3 = 1)
    assert ngram_entropy("a b c d") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)


# -- tiny models: batched scoring equals a plain loop, and does not depend on the batch -----------

@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request):
    # gpt2: absolute positions, so targets continuing from a padded prompt's cache need explicit ones
    return tiny_model(request.param, dtype=torch.float32), tiny_tokenizer(bos=request.param == "llama")


PAIRS = [("The capital of France is", "Paris"), ("Steve Jobs founded", "Apple Inc"),
         ("The language of Germany is", "German"), ("The capital of France is", "Rome"),
         ("The capital of France is", "Danielle Darrieux speaks French"), ("Michael Jordan plays", "basketball")]


def _by_hand(model, tok, prompt, target):
    head = tok(prompt)["input_ids"]
    ids = head + tok(" " + target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    steps = range(len(head), len(ids))
    return [float(logp[i - 1, ids[i]]) for i in steps], [int(logp[i - 1].argmax()) for i in steps]


def test_score_targets_equals_a_loop_over_single_prompts(tiny):
    model, tok = tiny
    for s, (prompt, target) in zip(score_targets(model, tok, PAIRS), PAIRS):
        logps, argmax = _by_hand(model, tok, prompt, target)
        assert s.logprobs == pytest.approx(logps, abs=1e-5)
        assert list(s.argmax) == argmax
        assert s.accuracy == sum(a == t for a, t in zip(argmax, s.target_ids)) / len(argmax)


def test_score_targets_is_batch_invariant(tiny):
    model, tok = tiny
    together = score_targets(model, tok, PAIRS, batch_size=4)
    alone = [score_targets(model, tok, [p], batch_size=1)[0] for p in PAIRS]
    for a, b in zip(together, alone):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5) and a.argmax == b.argmax


def test_greedy_generation_equals_a_loop_and_ignores_left_padding(tiny):
    model, tok = tiny
    prompts = ["The capital of France is", "Bill Gates founded"]
    batched = generate_texts(model, tok, prompts, max_new_tokens=4)
    for prompt, text in zip(prompts, batched):
        ids = tok(prompt)["input_ids"]
        for _ in range(4):
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert text == tok.decode(ids[len(tok(prompt)["input_ids"]):], skip_special_tokens=True)


def test_text_loss_and_kl(tiny):
    model, tok = tiny
    texts = ["The Eiffel Tower is located in Paris.", "Michael Jordan plays basketball."]
    reference = text_logprobs(model, tok, texts)
    result = text_loss(model, tok, texts, reference)
    assert result["kl"] == pytest.approx(0.0, abs=1e-9)       # same model: no divergence
    total, count = 0.0, 0
    for text in texts:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        total -= float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids))))
        count += len(ids) - 1
    assert result["loss"] == pytest.approx(total / count, rel=1e-5) and result["tokens"] == count
