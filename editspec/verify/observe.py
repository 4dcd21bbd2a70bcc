"""Run a model over a check set once: every score a check needs, in as few forward passes as possible.

`observe` returns plain JSON data per check id (scored answers and foils, generations, text
losses, sampled texts), so the unedited model's observations can be cached on disk and the
edited model's compared with them.  Judging (pass/fail) happens in `editspec.verify.judge`.

Example::

    seen = observe(checks, model, tokenizer, seed=0)
    seen["capital-australia-…/efficacy/0"]["scored"]["Sydney"]["logprobs"]
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Sequence

import torch

from editspec.errors import EditspecError
from editspec.model.tokens import pad_id, right_pad
from editspec.verify.checks import FLUENCY_TOKENS, Check
from editspec.verify.protocols import Scored, _device, generate_texts, has_chat_template, score_targets

TEXT_CHUNK = 256          # preserve texts are scored in windows of this many tokens
GENERATE_SLACK = 6        # generation runs this many tokens past the longest answer
_SCORED = ("compare", "teacher_forced", "logprob")


def scored_to_json(s: Scored) -> dict:
    return {"target_ids": list(s.target_ids), "logprobs": list(s.logprobs), "argmax": list(s.argmax)}


def scored_from_json(prompt: str, target: str, data: dict) -> Scored:
    return Scored(prompt, target, tuple(data["target_ids"]), tuple(data["logprobs"]), tuple(data["argmax"]))


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency: word n-gram entropies in bits, weighted ``(2/3·H2 + 4/3·H3) / 2``.

    Words are runs of letters/digits or single punctuation marks (NLTK's tokeniser, roughly).

    >>> ngram_entropy("the the the the the")
    0.0
    """
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    entropies = []
    for n in ns:
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropies.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(h * w for h, w in zip(entropies, weights)) / len(ns)


def _text_windows(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    windows = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        windows += [ids[i:i + TEXT_CHUNK] for i in range(0, max(len(ids) - 1, 1), TEXT_CHUNK - 1)]
    return [w for w in windows if len(w) > 1]


@torch.inference_mode()
def text_logprobs(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8) -> list[torch.Tensor]:
    """Next-token log-distributions over every token of `texts`: one [tokens - 1, vocab] tensor per window."""
    windows = _text_windows(tokenizer, texts)
    device, out = _device(model), []
    for start in range(0, len(windows), batch_size):
        rows = windows[start:start + batch_size]
        ids, mask = right_pad(rows, pad_id(tokenizer))
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for r, window in enumerate(rows):
            out.append(torch.log_softmax(logits[r, : len(window) - 1], dim=-1).cpu())
    return out


def text_loss(model, tokenizer, texts: Sequence[str], reference: list[torch.Tensor] | None = None) -> dict:
    """Mean per-token NLL of `texts`; with `reference` (unedited log-distributions) also the mean KL.

    KL is ``KL(p_unedited ‖ p_model)`` averaged over token positions.
    """
    windows = _text_windows(tokenizer, texts)
    logprobs = text_logprobs(model, tokenizer, texts)
    nll, count = 0.0, 0
    for window, lp in zip(windows, logprobs):
        targets = torch.tensor(window[1:])
        nll -= float(lp.gather(1, targets[:, None]).sum())
        count += len(targets)
    result = {"loss": nll / max(count, 1), "tokens": count}
    if reference is not None:
        kl = sum(float((ref.exp() * (ref - lp)).sum()) for ref, lp in zip(reference, logprobs))
        result["kl"] = kl / max(count, 1)
    return result


def _answer_tokens(tokenizer, answer: str) -> int:
    return len(tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"])


def generation_length(check: Check, tokenizer) -> int:
    """Tokens to generate for a `generate` check: its `max_new_tokens` (a fact check's free
    generation), else a little past its longest string (forget: is any of them produced?)."""
    if check.max_new_tokens is not None:
        return check.max_new_tokens
    return max(_answer_tokens(tokenizer, a) for a in check.answers) + GENERATE_SLACK


def observe(checks: Sequence[Check], model, tokenizer, *, seed: int = 0, batch_size: int = 32,
            kl_reference: dict[str, list[torch.Tensor]] | None = None) -> dict[str, dict]:
    """Everything the checks need from `model`, as JSON data keyed by check id.

    Teacher-forced pairs from every check are scored together, generations are grouped by
    length; `kl_reference` (from `kl_references` on the unedited model) adds KL to
    preserve checks that need it.
    """
    pairs = [(c.prompt, t) for c in checks if c.protocol in _SCORED for t in (*c.answers, *c.foils)]
    pairs += [(c.prompt, c.answers[0]) for c in checks if c.protocol == "generate" and c.agree]
    scored = dict(zip(pairs, score_targets(model, tokenizer, pairs, batch_size=batch_size)))
    by_length: dict[int, list[str]] = defaultdict(list)
    for c in checks:
        if c.protocol == "generate":
            by_length[generation_length(c, tokenizer)].append(c.prompt)
    generated: dict[tuple[int, str], str] = {}
    for length, prompts in sorted(by_length.items()):
        texts = generate_texts(model, tokenizer, prompts, max_new_tokens=length, batch_size=batch_size)
        generated.update({(length, p): t for p, t in zip(prompts, texts)})
    replies = _chat_replies([c for c in checks if c.protocol == "chat"], model, tokenizer, batch_size)

    seen: dict[str, dict] = {}
    for c in checks:
        data: dict = {}
        if c.protocol in _SCORED or (c.protocol == "generate" and c.agree):
            targets = (*c.answers, *c.foils) if c.protocol in _SCORED else c.answers[:1]
            data["scored"] = {t: scored_to_json(scored[(c.prompt, t)]) for t in targets}
        if c.protocol == "generate":
            data["generated"] = generated[(generation_length(c, tokenizer), c.prompt)]
        if c.protocol == "chat":
            data["generated"] = replies[(c.max_new_tokens, c.prompt)]
        if c.metric == "preserve":
            data.update(text_loss(model, tokenizer, c.texts, (kl_reference or {}).get(c.id)))
        if c.metric == "fluency":
            texts = generate_texts(model, tokenizer, c.prompts, max_new_tokens=FLUENCY_TOKENS,
                                   batch_size=batch_size, sample_top_k=5, seed=seed)
            data["texts"] = texts
            data["entropies"] = [ngram_entropy(t) for t in texts]
        seen[c.id] = data
    return seen


def _chat_replies(checks: Sequence[Check], model, tokenizer, batch_size: int) -> dict[tuple[int, str], str]:
    """The greedy chat reply to each check's prompt (a user turn), grouped by reply length."""
    if checks and not has_chat_template(tokenizer):
        where = checks[0]
        raise EditspecError(f"{where.location}: the `chat` protocol needs a tokenizer with a chat template, "
                            "and this model's has none",
                            hint="verify an instruct model, or use another protocol (compare, generate, ...)")
    by_length: dict[int, list[str]] = defaultdict(list)
    for c in checks:
        by_length[c.max_new_tokens].append(c.prompt)
    replies: dict[tuple[int, str], str] = {}
    for length, prompts in sorted(by_length.items()):
        texts = generate_texts(model, tokenizer, prompts, max_new_tokens=length, batch_size=batch_size, chat=True)
        replies.update({(length, p): t for p, t in zip(prompts, texts)})
    return replies


def kl_references(checks: Sequence[Check], model, tokenizer) -> dict[str, list[torch.Tensor]]:
    """The unedited model's log-distributions on each KL-budgeted preserve check's texts (kept in memory)."""
    return {c.id: text_logprobs(model, tokenizer, c.texts) for c in checks if c.metric == "preserve" and c.protocol == "kl"}
