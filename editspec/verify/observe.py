"""Observation data and the text measures behind it: scored answers as JSON, text losses, n-gram entropy.

Observations are plain JSON data per check id (scored answers and foils, generations, text
losses, sampled texts), so the unedited model's can be cached on disk and the edited model's
compared with them.  Each kind of check decides what it observes (`editspec.verify.kinds`,
`observe_all`) and asks an observer (`editspec.verify.observers`) for it; judging (pass/fail)
happens in the kinds too.

Example::

    text_loss(model, tokenizer, ["The capital of Italy is Rome."])     # {"loss": 2.9, "tokens": 7}
    ngram_entropy("the the the the the")                               # 0.0
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import torch

from editspec.model.tokens import pad_id, right_pad
from editspec.model.continuation import model_device
from editspec.verify.protocols import Scored

TEXT_CHUNK = 256          # preserve texts are scored in windows of this many tokens


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
    device, out = model_device(model), []
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
