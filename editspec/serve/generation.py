"""Token-by-token generation for the local API server, with log-probs and stop strings.

One prefill, then one cached forward per new token, so the server can stream each token as
it is made.  Temperature 0 is greedy; otherwise sampling with the request's seed (or 0), so
a request is reproducible either way.

>>> steps = list(generate(loaded, loaded.tokenizer("The capital of France is")["input_ids"],
...                       max_tokens=3, top_logprobs=2))              # doctest: +SKIP
>>> "".join(s.text for s in steps)                                    # doctest: +SKIP
' Paris.'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

from editspec.model.kvcache import cache_kwarg, output_cache


@dataclass(frozen=True)
class Step:
    """One token: its id, its text, its log-prob, and the best alternatives `[(text, logprob)]`."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def _top(logprobs, tokenizer, k: int) -> tuple[tuple[str, float], ...]:
    if k <= 0:
        return ()
    values, ids = logprobs.topk(k)
    return tuple((tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids))


def prompt_logprobs(loaded, input_ids: Sequence[int], *, top_logprobs: int = 0) -> list[Step | None]:
    """The log-prob of each prompt token given the ones before it (None for the first token).

    Used for `echo` with `logprobs` on /v1/completions (scoring a text through the API).
    """
    import torch

    with torch.inference_mode():
        ids = torch.tensor([list(input_ids)], device=loaded.input_device)
        logits = loaded.model(input_ids=ids).logits[0].float()          # [len, vocab]
        logprobs = torch.log_softmax(logits, dim=-1)
    steps: list[Step | None] = [None]
    for position in range(1, len(input_ids)):
        row = logprobs[position - 1]
        token = int(input_ids[position])
        steps.append(Step(token, loaded.tokenizer.decode([token]), float(row[token]),
                          _top(row, loaded.tokenizer, top_logprobs)))
    return steps


def generate(loaded, input_ids: Sequence[int], *, max_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, top_logprobs: int = 0,
             stop_ids: Sequence[int] = ()) -> Iterator[Step]:
    """Yield generated tokens one by one until `max_tokens`, an end-of-sequence or a stop id."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    ends = set(stop_ids)
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        ends.update(value if isinstance(value, list) else [value] if value is not None else [])
    generator = torch.Generator(device="cpu").manual_seed(seed or 0)
    kwarg = cache_kwarg(model)
    with torch.inference_mode():
        ids = torch.tensor([list(input_ids)], device=loaded.input_device)
        output = model(input_ids=ids, use_cache=True)
        for _ in range(max_tokens):
            logits = output.logits[0, -1].float()                           # [vocab]
            logprobs = torch.log_softmax(logits, dim=-1)
            token = _choose(logits, temperature, top_p, generator)
            yield Step(token, tokenizer.decode([token]), float(logprobs[token]), _top(logprobs, tokenizer, top_logprobs))
            if token in ends:
                return
            output = model(input_ids=torch.tensor([[token]], device=ids.device), use_cache=True,
                           **{kwarg: output_cache(output)})


def _choose(logits, temperature: float, top_p: float, generator) -> int:
    import torch

    if temperature <= 0 or math.isclose(temperature, 0.0):
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    if top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < top_p
        keep[0] = True                      # the likeliest token always stays (top_p 0: greedy)
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
