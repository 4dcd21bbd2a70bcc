"""What a local model says after token ids: left-padded batches through `model.generate`.

One loop for every caller that needs a model's own continuation as ids (verify's greedy and
sampled generations decode them; the locate family's held keep replies keep them as ids), so a
prompt gets the same continuation alone or in a batch, and the same in both places.

Example::

    continuations(model, [ids_a, ids_b], max_new_tokens=48, pad=pad_id(tok), eos=tok.eos_token_id)
    # [[... up to 48 ids, cut before the first EOS ...], [...]]
"""
from __future__ import annotations

from typing import Sequence

import torch


def model_device(model) -> torch.device:
    """Where `model`'s input embeddings (else its first parameter) live: the device inputs go to."""
    embeddings = model.get_input_embeddings()
    return embeddings.weight.device if embeddings is not None else next(model.parameters()).device


@torch.inference_mode()
def continuations(model, encoded: Sequence[Sequence[int]], *, max_new_tokens: int, pad: int, eos: int | None = None,
                  batch_size: int = 32, sample_top_k: int | None = None, seed: int = 0,
                  draws: int = 1) -> list[list[int]]:
    """The ids `model` generates after each of `encoded`: greedy, or top-k samples with a fixed seed.

    Rows are batched shortest first and left-padded (position ids follow the attention mask), so
    a row's continuation does not depend on its batch.  With `eos`, a row stops there and its ids
    end before it; without, every row runs the full `max_new_tokens`.  With sampling, `draws`
    samples of each row, row by row (the first row's draws, then the next's).
    """
    draws = draws if sample_top_k else 1
    order = [(i, d) for i in sorted(range(len(encoded)), key=lambda i: len(encoded[i])) for d in range(draws)]
    options = dict(do_sample=True, top_k=sample_top_k, top_p=1.0, temperature=1.0) if sample_top_k else \
        dict(do_sample=False, top_k=None, top_p=None, temperature=None)
    if sample_top_k:
        torch.manual_seed(seed)
    device = model_device(model)
    found: dict[tuple[int, int], list[int]] = {}
    for first in range(0, len(order), batch_size):
        entries = order[first:first + batch_size]
        rows = [i for i, _ in entries]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(encoded[i]):] = torch.tensor(list(encoded[i]), dtype=torch.long)
            mask[r, width - len(encoded[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=eos, **options)
        for r, (i, d) in enumerate(entries):
            new = out[r, width:].tolist()
            found[i, d] = new[:new.index(eos)] if eos is not None and eos in new else new
    return [found[i, d] for i in range(len(encoded)) for d in range(draws)]


def chat_replies(model, tokenizer, messages: Sequence[str], *, max_new_tokens: int,
                 batch_size: int = 32) -> list[tuple[list[int], list[int], bool]]:
    """Each message as one user turn (`chat_prompt_ids`) and `model`'s greedy reply, as verify's
    `chat` protocol asks it: ``(prompt ids, reply ids, whether the reply ended the turn)``; the
    ids of a reply that ended stop before the tokenizer's EOS.
    """
    from editspec.model.chat import chat_prompt_ids
    from editspec.model.tokens import pad_id

    prompts = [chat_prompt_ids(tokenizer, m) for m in messages]
    replies = continuations(model, prompts, max_new_tokens=max_new_tokens, pad=pad_id(tokenizer),
                            eos=tokenizer.eos_token_id, batch_size=batch_size)
    return [(p, r, len(r) < max_new_tokens) for p, r in zip(prompts, replies)]
