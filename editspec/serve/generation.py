"""Token-by-token generation for the local API server, with log-probs and stop strings.

The prompt is read in chunks of `PREFILL_CHUNK` tokens into the KV cache, then one cached
forward per new token, so the server can stream each token as it is made.  Chunks bound the
memory of a long prompt (SmolLM2 read 8,000 tokens at once at 3.3 GB, the attention scores and
every position's logits; see docs/benchmarks.md, serving) and let a request stop at its
deadline (`until`, a `time.monotonic()`; past it: `TimeoutError`) between chunks.
Temperature 0 is greedy; otherwise sampling with the request's seed (or 0), so a request is
reproducible either way.

>>> steps = list(generate(loaded, loaded.tokenizer("The capital of France is")["input_ids"],
...                       max_tokens=3, top_logprobs=2))              # doctest: +SKIP
>>> "".join(s.text for s in steps)                                    # doctest: +SKIP
' Paris.'
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from editspec.model.kvcache import cache_kwarg, output_cache

PREFILL_CHUNK = 512


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


def _prefill(model, ids, until: float, on_chunk=None):
    """Run `ids` ([1, len]) through `model` chunk by chunk into its KV cache; the last output.

    `on_chunk(start, logits)` sees each chunk's logits ([chunk, vocab]) before the next runs.
    """
    kwarg, output = cache_kwarg(model), None
    for start in range(0, ids.shape[1], PREFILL_CHUNK):
        if time.monotonic() > until:
            raise TimeoutError("the request's deadline passed while reading its prompt")
        cached = {kwarg: output_cache(output)} if output is not None else {}
        output = model(input_ids=ids[:, start:start + PREFILL_CHUNK], use_cache=True, **cached)
        if on_chunk is not None:
            on_chunk(start, output.logits[0])
    return output


def prompt_logprobs(loaded, input_ids: Sequence[int], *, top_logprobs: int = 0,
                    until: float = math.inf) -> list[Step | None]:
    """The log-prob of each prompt token given the ones before it (None for the first token).

    Used for `echo` with `logprobs` on /v1/completions (scoring a text through the API).
    """
    import torch

    tokens = [int(t) for t in input_ids]
    steps: list[Step | None] = [None]

    def score(start: int, logits) -> None:
        logprobs = torch.log_softmax(logits.float(), dim=-1)           # [chunk, vocab]
        for offset, row in enumerate(logprobs):
            position = start + offset + 1                               # the token this row predicts
            if position < len(tokens):
                token = tokens[position]
                steps.append(Step(token, loaded.tokenizer.decode([token]), float(row[token]),
                                  _top(row, loaded.tokenizer, top_logprobs)))

    with torch.inference_mode():
        _prefill(loaded.model, torch.tensor([tokens], device=loaded.input_device), until, score)
    return steps


def generate(loaded, input_ids: Sequence[int], *, max_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, top_logprobs: int = 0,
             stop_ids: Sequence[int] = (), until: float = math.inf) -> Iterator[Step]:
    """Yield generated tokens one by one until `max_tokens`, an end-of-sequence or a stop id."""
    import torch

    from editspec.model.tokens import end_ids

    model, tokenizer = loaded.model, loaded.tokenizer
    ends = set(stop_ids) | end_ids(model, tokenizer)
    generator = torch.Generator(device="cpu").manual_seed(seed or 0)
    kwarg = cache_kwarg(model)
    with torch.inference_mode():
        ids = torch.tensor([list(input_ids)], device=loaded.input_device)
        output = _prefill(model, ids, until)
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
