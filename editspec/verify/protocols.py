"""The named evaluation protocols and the batched model calls behind them.

Editing papers score edits in incompatible ways; each verifier check names the one it uses:

- ``compare``: the best answer (aliases count) is more probable than the best foil, with
  ``P = exp(-mean per-token NLL)`` of ``" " + target`` after the prompt (CounterFact ES/PS/NS).
- ``teacher_forced``: the fraction of answer tokens that are the argmax given the prompt and the
  gold previous tokens (zsRE); the check passes when every token is.
- ``generate``: greedy generation contains the answer or an alias after normalisation
  (lower case, punctuation, articles and extra whitespace removed).  The protocol for API models.
  A fact check generates ``max_new_tokens`` freely: the *first sentence* must give the answer and
  no part of the generation the ``was`` object (WILD-style: "Paris. Some say Rome." and
  "Rome ... no, Paris" fail), see
  `editspec.verify.answers`; a forget check generates a little past its strings, judged whole.
- ``chat``: the prompt (or the relation's ``question``) is sent as a user message through the
  tokenizer's chat template; the greedy reply (up to the end of the turn or ``max_new_tokens``)
  is judged as ``generate``'s: the answer in its first sentence, the ``was`` object nowhere
  (`editspec.verify.answers`).  Only for models whose tokenizer has a chat template.
- ``logprob``: the whole answer's probability ``P = exp(sum of token log-probs)`` against a
  threshold such as ``p >= 1/5`` (Hewitt et al.'s "example" normalisation).

Scoring runs many prompts per forward pass: right padding and explicit positions for
teacher-forced scores, left padding for generation (docs/conventions.md#tokens-and-padding).

Example::

    scored = score_targets(model, tokenizer, [("The capital of France is", "Paris")])
    scored[0].mean_logprob, scored[0].accuracy
    compare(scored_answers=[...], scored_foils=[...])   # -> ProtocolResult
"""
from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import Sequence

import torch

from editspec.model.chat import chat_prompt_ids, has_chat_template  # noqa: F401  (re-exported for the observers)
from editspec.model.continuation import continuations, model_device
from editspec.model.kvcache import cache_kwarg, output_cache
from editspec.lang.metrics import PROTOCOLS  # noqa: F401  (re-exported; the names live with the spec language)
from editspec.model.tokens import pad_id, right_pad, target_token_ids


@dataclass(frozen=True)
class Scored:
    """Teacher-forced scores of `target` after `prompt`: one entry per target token."""

    prompt: str
    target: str
    target_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    argmax: tuple[int, ...]

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / len(self.logprobs)

    @property
    def p_mean(self) -> float:
        """CounterFact's probability: ``exp(-mean NLL)``."""
        return math.exp(self.mean_logprob)

    @property
    def p_sequence(self) -> float:
        """The probability of the whole target: ``exp(-summed NLL)``."""
        return math.exp(self.sum_logprob)

    @property
    def accuracy(self) -> float:
        """Fraction of target tokens that are the argmax under teacher forcing."""
        hits = sum(int(a == t) for a, t in zip(self.argmax, self.target_ids))
        return hits / len(self.target_ids)


@dataclass(frozen=True)
class ProtocolResult:
    """What a protocol concluded: pass/fail, a score in its own units, the answer it saw."""

    protocol: str
    passed: bool
    score: float
    got: str
    scores: dict


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _last_logits(model, ids: torch.Tensor, mask: torch.Tensor, last: torch.Tensor):
    """Run prompts with a KV cache; the logits at each row's last real token [b, vocab], and the output."""
    try:
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=last[:, None])
        if out.logits.shape[1] == 1:
            return out.logits[:, 0], out
    except TypeError:  # a model (or wrapper) without `logits_to_keep`
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    return out.logits[torch.arange(len(last), device=out.logits.device), last], out


def _score_chunk(model, heads: list[list[int]], wanted: list[tuple[int, list[int]]], pad: int) -> list[torch.Tensor]:
    """Log-distributions [len(target), vocab] for each ``(prompt row, target ids)`` in `wanted`.

    The prompts run once, with a KV cache; every target then continues from its prompt's cache
    row (repeated per target) with explicit positions, so an answer and its foils share the
    prompt's forward pass.
    """
    device = model_device(model)
    ids, mask = right_pad(heads, pad)
    ids, mask = ids.to(device), mask.to(device)
    lengths = mask.sum(dim=1)
    first, out = _last_logits(model, ids, mask, lengths - 1)
    first = torch.log_softmax(first.float(), dim=-1)  # [prompts, vocab]
    rows = [first[r][None] for r, _ in wanted]
    multi = [k for k, (_, target) in enumerate(wanted) if len(target) > 1]
    if multi:
        cache = output_cache(out)
        index = torch.tensor([wanted[k][0] for k in multi], device=device)
        cache.batch_select_indices(index)  # one cache row per continuation (rows may repeat)
        cont_ids, cont_mask = right_pad([wanted[k][1][:-1] for k in multi], pad)
        steps = cont_ids.shape[1]
        positions = lengths[index][:, None] + torch.arange(steps, device=device)[None]
        logits = model(input_ids=cont_ids.to(device), attention_mask=torch.cat([mask[index], cont_mask.to(device)], 1),
                       position_ids=positions, use_cache=True, **{cache_kwarg(model): cache}).logits
        logits = torch.log_softmax(logits.float(), dim=-1)  # [continuations, steps, vocab]
        for row, k in enumerate(multi):
            rows[k] = torch.cat([rows[k], logits[row, : len(wanted[k][1]) - 1]], dim=0)
    return rows


@torch.inference_mode()
def score_targets(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32) -> list[Scored]:
    """Teacher-forced log-probs and argmaxes of each ``(prompt, target)`` pair, batched.

    The prompt is tokenised with the tokenizer's special tokens (a BOS where it adds one);
    the target tokens are those of ``" " + target`` after it (`target_token_ids`).  Each
    distinct prompt runs once (right-padded, sorted by length, `batch_size` prompts a pass)
    and its targets continue from its KV cache, so a pair scores the same alone or in any batch.

    >>> score_targets(model, tok, [("The capital of France is", "Paris")])[0].p_mean  # doctest: +SKIP
    0.77
    """
    unique = list(dict.fromkeys(pairs))
    targets = {pair: target_token_ids(tokenizer, *pair) for pair in unique}
    by_prompt: dict[str, list[tuple[str, str]]] = {}
    for pair in unique:
        by_prompt.setdefault(pair[0], []).append(pair)
    heads = {p: list(tokenizer(p.rstrip(), add_special_tokens=True)["input_ids"]) for p in by_prompt}
    prompts = sorted(by_prompt, key=lambda p: len(heads[p]))
    found: dict[tuple[str, str], Scored] = {}
    for chunk in _chunks(prompts, batch_size):
        mine = [(r, pair) for r, p in enumerate(chunk) for pair in by_prompt[p]]
        logps = _score_chunk(model, [heads[p] for p in chunk], [(r, targets[pair]) for r, pair in mine],
                             pad_id(tokenizer))
        for (_, pair), picked in zip(mine, logps):
            target = targets[pair]
            wanted = torch.tensor(target, device=picked.device)
            found[pair] = Scored(
                prompt=pair[0], target=pair[1], target_ids=tuple(target),
                logprobs=tuple(float(x) for x in picked.gather(1, wanted[:, None])[:, 0].cpu()),
                argmax=tuple(int(x) for x in picked.argmax(dim=-1).cpu()),
            )
    return [found[p] for p in pairs]


@torch.inference_mode()
def generate_texts(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 12, batch_size: int = 32,
                   sample_top_k: int | None = None, seed: int = 0, chat: bool = False, draws: int = 1) -> list[str]:
    """The continuation of each prompt: greedy, or top-k sampling with a fixed seed when `sample_top_k`.

    With sampling, `draws` samples of each prompt (prompt by prompt: the first prompt's draws,
    then the next's); every row of a batch draws its own tokens, so they differ.

    Rows are left-padded (with position ids from the attention mask, which `generate`
    derives), so a prompt gives the same continuation alone or in a batch.  With `chat`, each
    prompt is a user message sent through the chat template (`chat_prompt_ids`) and the reply
    stops at the end of the assistant's turn (the tokenizer's EOS); without it, generation
    runs the full `max_new_tokens`.

    >>> generate_texts(model, tok, ["The capital of France is"])  # doctest: +SKIP
    [' Paris. It is the largest city']
    >>> generate_texts(model, tok, ["What is the capital of France?"], max_new_tokens=48, chat=True)  # doctest: +SKIP
    ['The capital of France is Paris.']
    """
    unique = list(dict.fromkeys(prompts))
    if chat:
        encoded = [chat_prompt_ids(tokenizer, p) for p in unique]
    else:
        encoded = [list(tokenizer(p.rstrip(), add_special_tokens=True)["input_ids"]) for p in unique]
    draws = draws if sample_top_k else 1
    ids = continuations(model, encoded, max_new_tokens=max_new_tokens, pad=pad_id(tokenizer),
                        eos=tokenizer.eos_token_id if chat else None, batch_size=batch_size,
                        sample_top_k=sample_top_k, seed=seed, draws=draws)
    found = {(p, d): tokenizer.decode(ids[i * draws + d], skip_special_tokens=True)
             for i, p in enumerate(unique) for d in range(draws)}
    return [found[p, d] for p in prompts for d in range(draws)]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation + "“”‘’—–"})


def normalise(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed.

    >>> normalise("  The Hague, Netherlands!")
    'hague netherlands'
    """
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def contains_answer(generated: str, answers: Sequence[str]) -> str | None:
    """The first answer that occurs in `generated` as whole words after normalisation, else None.

    >>> contains_answer("Paris, of course.", ["paris"])
    'paris'
    """
    haystack = f" {normalise(generated)} "
    for answer in answers:
        needle = normalise(answer)
        if needle and f" {needle} " in haystack:
            return answer
    return None


def best(scored: Sequence[Scored], key) -> Scored:
    """The alias that scores highest under `key` (aliases count as the same answer)."""
    return max(scored, key=key)


def compare(answers: Sequence[Scored], foils: Sequence[Scored]) -> ProtocolResult:
    """CounterFact-style: the best answer's ``exp(-mean NLL)`` beats the best foil's.

    >>> compare([Scored("p", "a", (1,), (-0.1,), (1,))], [Scored("p", "b", (2,), (-2.0,), (1,))]).passed
    True
    """
    answer = best(answers, key=lambda s: s.p_mean)
    foil = best(foils, key=lambda s: s.p_mean)
    return ProtocolResult(
        "compare", answer.p_mean > foil.p_mean, 1.0 if answer.p_mean > foil.p_mean else 0.0,
        got=answer.target if answer.p_mean > foil.p_mean else foil.target,
        scores={"p_answer": answer.p_mean, "p_foil": foil.p_mean, "answer": answer.target, "foil": foil.target,
                "margin": answer.p_mean - foil.p_mean},
    )


def teacher_forced(answers: Sequence[Scored], decode=None) -> ProtocolResult:
    """zsRE-style token accuracy of the best alias; passes when every token is the argmax.

    >>> teacher_forced([Scored("p", "a", (1, 2), (-0.1, -3.0), (1, 5))]).score
    0.5
    """
    answer = best(answers, key=lambda s: (s.accuracy, s.mean_logprob))
    got = decode(list(answer.argmax)) if decode else " ".join(map(str, answer.argmax))
    return ProtocolResult("teacher_forced", answer.accuracy == 1.0, answer.accuracy, got=got,
                          scores={"accuracy": answer.accuracy, "answer": answer.target,
                                  "argmax": list(answer.argmax), "target_ids": list(answer.target_ids)})


def generate(generated: str, answers: Sequence[str]) -> ProtocolResult:
    """Greedy generation contains an answer (or alias) after normalisation.

    >>> generate(" Paris, the city of light", ["Paris"]).passed
    True
    """
    hit = contains_answer(generated, answers)
    return ProtocolResult("generate", hit is not None, 1.0 if hit is not None else 0.0, got=generated,
                          scores={"matched": hit})


def logprob(answers: Sequence[Scored], comparator: str, threshold: float) -> ProtocolResult:
    """The best alias's whole-answer probability ``exp(sum log p)`` against a threshold.

    With ``>=`` the best alias must reach it; with ``<=`` every alias must stay under it
    (so a forbidden string cannot slip through under another spelling).

    >>> logprob([Scored("p", "a", (1,), (math.log(0.25),), (1,))], ">=", 0.2).passed
    True
    """
    probability = max(s.p_sequence for s in answers)
    passed = probability >= threshold if comparator == ">=" else probability <= threshold
    top = best(answers, key=lambda s: s.p_sequence)
    return ProtocolResult("logprob", passed, 1.0 if passed else 0.0, got=f"p={probability:.4g}",
                          scores={"p": probability, "comparator": comparator, "threshold": threshold,
                                  "answer": top.target})
