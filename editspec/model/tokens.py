"""Token positions: the subject's last token, target tokens, padded batches, context templates.

The rules (docs/conventions.md#tokens-and-padding) that keep edits from silently going wrong:

- the subject's last token is found from the fast tokenizer's `offset_mapping`, so a BOS
  token, a subject at the start of the prompt, or odd merges are all handled the same way;
- target tokens are the difference between tokenising ``prompt`` and ``prompt + " " + target``
  (a leading space, no special tokens), checked to be a prefix extension;
- batches are right-padded and every consumer gets explicit per-example indices;
- context templates are sampled once from the unedited model with a fixed seed.

Example::

    text, span = fill_prompt("The capital of {} is", "France")
    ids, index = encode_with_subject(tokenizer, text, span)   # index -> last token of "France"
    target = target_token_ids(tokenizer, text, "Paris")        # ids of " Paris"
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from editspec.errors import EditspecError
from editspec.model.continuation import model_device
from editspec.model.kvcache import cache_kwarg, output_cache

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


def fill_prompt(prompt: str, subject: str) -> tuple[str, tuple[int, int]]:
    """Put `subject` into the single ``{}`` of `prompt`; return the text and the subject's char span."""
    if prompt.count("{}") != 1:
        raise EditspecError(
            f"prompt {prompt!r} must contain exactly one `{{}}` where the subject goes",
            hint="write the prompt as e.g. \"The capital of {} is\"",
        )
    if not subject.strip():
        raise EditspecError("the subject is empty")
    start = prompt.index("{}")
    return prompt[:start] + subject + prompt[start + 2:], (start, start + len(subject))


def pad_id(tokenizer) -> int:
    """The id used for padding: the pad token, else EOS (GPT-2 has no pad token), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def end_ids(model, tokenizer=None) -> set[int]:
    """The token ids that end a generation: the tokenizer's EOS (when given) and the model's generation config's
    (its plain config's where it has none); a chat model often ends its turn with a token of its own there."""
    config = getattr(model, "generation_config", None) or model.config
    ends = set()
    for value in (tokenizer.eos_token_id if tokenizer is not None else None, getattr(config, "eos_token_id", None)):
        ends.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    return ends


def encode_with_subject(tokenizer, text: str, span: tuple[int, int], *, special: bool = True) -> tuple[list[int], int]:
    """Token ids of `text` (with the tokenizer's special tokens) and the subject's last token index.

    The index is that of the last token whose character span overlaps `span`; zero-width
    special tokens (BOS) never overlap, so they are counted but never chosen.  `special`
    False adds no special tokens (chat-templated text writes its own).
    """
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=special)
    start, end = span
    index = None
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and a < end and b > start:
            index = i
    if index is None:
        raise EditspecError(f"subject {text[start:end]!r} covers no token of {text!r}")
    return list(enc["input_ids"]), index


def target_token_ids(tokenizer, prompt_text: str, target: str) -> list[int]:
    """Ids of `target` as it follows `prompt_text` after a space, without special tokens.

    Computed as the difference between tokenising the prompt and prompt + target; when a
    tokenizer merges across the boundary, falls back to tokenising ``" " + target`` alone.
    """
    target = target.strip()
    if not target:
        raise EditspecError("the target is empty")
    prompt_text = prompt_text.rstrip()
    head = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    both = tokenizer(prompt_text + " " + target, add_special_tokens=False)["input_ids"]
    if both[: len(head)] == head and len(both) > len(head):
        ids = both[len(head):]
    else:
        ids = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise EditspecError(f"target {target!r} tokenises to nothing")
    return list(ids)


def right_pad(sequences: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``(input_ids, attention_mask)``, both [batch, max_len] long."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


@torch.inference_mode()
def sample_context_templates(
    model,
    tokenizer,
    counts: Sequence[tuple[int, int]] = ((10, 5), (10, 10)),
    *,
    seed: int = 0,
    top_k: int = 5,
    seed_words: Sequence[str] = SEED_WORDS,
) -> list[list[str]]:
    """Template groups ``[["{}"], [group 1...], ...]`` sampled once from the unedited model.

    `counts` holds ``(n, max_len)`` pairs: n samples of at most max_len tokens (seed included),
    each turned into ``sample + ". {}"`` with braces stripped.  Sampling is top-k with a fixed
    seed, seeded by `seed_words` in turn, so the result depends only on the model and arguments.
    """
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    kwarg = cache_kwarg(model)
    groups: list[list[str]] = [["{}"]]
    for n, max_len in counts:
        seeds = [tokenizer(seed_words[i % len(seed_words)], add_special_tokens=True)["input_ids"] for i in range(n)]
        samples: list[list[int]] = [list(s) for s in seeds]
        # Rows whose seeds have the same length grow together, so no padding is needed.
        for width in sorted({len(s) for s in seeds}):
            rows = [i for i, s in enumerate(seeds) if len(s) == width]
            ids = torch.tensor([seeds[i] for i in rows], dtype=torch.long, device=device)
            cache, step_ids = None, ids
            for _ in range(max(max_len - width, 0)):
                # Rows share a length, so the KV cache needs no padding; only the last logits are used.
                out = model(input_ids=step_ids, use_cache=True, **({kwarg: cache} if cache is not None else {}))
                cache = output_cache(out)
                logits = out.logits[:, -1, :].float().cpu()  # [rows, vocab]
                top = logits.topk(top_k, dim=-1)
                probs = torch.softmax(top.values, dim=-1)
                choice = torch.multinomial(probs, 1, generator=generator)  # [rows, 1]
                next_ids = top.indices.gather(1, choice).to(device)
                ids = torch.cat([ids, next_ids], dim=1)
                step_ids = next_ids
            for r, i in enumerate(rows):
                samples[i] = ids[r].tolist()
        texts = [tokenizer.decode(s, skip_special_tokens=True) for s in samples]
        groups.append([t.replace("{", " ").replace("}", " ") + ". {}" for t in texts])
    return groups


def context_templates(
    model, tokenizer, counts: Sequence[tuple[int, int]] = ((10, 5), (10, 10)), *,
    seed: int = 0, cache_file: str | os.PathLike | None = None,
) -> list[list[str]]:
    """`sample_context_templates`, read from / written to `cache_file` (JSON) when given.

    The cache file should be keyed by the model's weights hash by the caller; it is written
    atomically so a crash never leaves a half file.
    """
    if cache_file is not None and Path(cache_file).exists():
        data = json.loads(Path(cache_file).read_text())
        if data.get("counts") == [list(c) for c in counts] and data.get("seed") == seed:
            return data["groups"]
    groups = sample_context_templates(model, tokenizer, counts, seed=seed)
    if cache_file is not None:
        path = Path(cache_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"counts": [list(c) for c in counts], "seed": seed, "groups": groups}))
        os.replace(tmp, path)
    return groups


def place_in_template(template: str, prompt: str, subject: str) -> tuple[str, tuple[int, int]]:
    """Fill ``template`` (one ``{}``) with ``prompt`` (one ``{}``) and that with ``subject``."""
    if template.count("{}") != 1:
        raise EditspecError(f"context template {template!r} must contain exactly one `{{}}`")
    at = template.index("{}")
    return fill_prompt(template[:at] + prompt + template[at + 2:], subject)
