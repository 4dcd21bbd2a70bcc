"""What the memory backends (grace, melo) share: keys from edits, radius calibration, hook attachments.

    keyed = edit_keys(job)                                 # teacher-forced texts of the edits
    queries = activations(model, tok, path, [k.ids for k in keyed])
    eps = radii(job, path, keys)                           # per key, or the config's number
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch
from torch import nn

from editspec.build.backend import Attachment, CompileJob
from editspec.model.chat import chat_enabled, ended_answer
from editspec.families.memory.codebook import KeyedText, activations, nearest_distances, teacher_forced
from editspec.errors import EditspecError
from editspec.families.training.objectives import Target, edit_targets, fact_texts

# Model -> (its state, {(path, where, token ids): activation}): reference text already run.
_REFERENCE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


class HookAttachment(Attachment):
    """Forward hooks on a model (a memory); `revert()` removes them, leaving no trace."""

    def __init__(self, model: nn.Module, handles: Sequence):
        self.model, self.handles, self.reverted = model, list(handles), False

    def revert(self) -> None:
        if self.reverted:
            return
        for handle in self.handles:
            handle.remove()
        self.reverted = True


def value_projection_at(model: nn.Module, layer, auto_depth: float) -> str:
    """The MLP value projection a memory sits at: `layer`, or `auto` at that share of the depth.

    >>> value_projection_at(model, "auto", 0.8)   # doctest: +SKIP
    'model.layers.24.mlp.down_proj'
    """
    from editspec.model.layout import layout_for

    layout = layout_for(model)
    count = layout.num_layers(model)
    index = int(auto_depth * count) if layer == "auto" else layer
    if index >= count:
        raise EditspecError(f"layer {index} does not exist: the model has {count} layers (0..{count - 1})")
    return layout.mlp_out_at(index)


def require_edits(job: CompileJob, backend: str) -> None:
    """A memory stores edited facts: a spec with none is an error (canonical and forget blocks get
    the shared warning of `editspec.build.support`, since memories do not compile them)."""
    if not job.edits:
        raise EditspecError(f"{job.spec.source} has no edits for `{backend}` to store")


def edit_keys(job: CompileJob) -> list[KeyedText]:
    """Each edit prompt with its answer, teacher-forced: where the keys are taken (chat forms too,
    with the `chat` setting on, so the memory also routes where the fact is asked in chat), and
    with `answer_end` the position after the answer, labelled with that text's first token."""
    from editspec.families.training.tuning import encode_targets

    tokenizer = job.model.tokenizer
    encoded = encode_targets(tokenizer, edit_key_targets(job))
    return teacher_forced(tokenizer, encoded, answer_ends(tokenizer, encoded, getattr(job.config, "answer_end", "")))


def edit_key_targets(job: CompileJob) -> list[Target]:
    """The targets `edit_keys` keys, in its order: each edit's prompts, and its chat forms with `chat` on."""
    chat = chat_enabled(job.model.tokenizer, job.config.chat)
    return [t for edit in job.edits for t in edit_targets(edit, chat=chat)]


def answer_ends(tokenizer, encoded, end: str) -> list[int | None]:
    """For each encoded target, the token `end` starts with right after its answer (None: no key there;
    `end` empty or `off`: none at all).

    The token is the one the tokenizer gives the answer followed by `end`, so it is the token a
    generation would write; an answer that already ends a sentence, or whose last token merges
    with `end`, gets none.
    """
    from dataclasses import replace

    from editspec.families.training.tuning import encode_targets

    if not end or end == "off":
        return [None] * len(encoded)
    found: list[int | None] = []
    for e in encoded:
        ended = ended_answer(e.target.answer, end)
        if ended == e.target.answer.rstrip():
            found.append(None)
            continue
        (longer,) = encode_targets(tokenizer, [replace(e.target, answer=ended, foil=None)])
        n = len(e.answer)
        found.append(longer.answer[n] if longer.answer[:n] == e.answer and len(longer.answer) > n else None)
    return found


def reference_texts(job: CompileJob) -> list[str]:
    """Text whose activations must stay outside every radius: keep facts and general text."""
    texts = [text for edit in job.spec.edits for text in fact_texts(edit.keep)]
    config = job.config
    if config.eps == "auto" and config.reference_samples:
        from editspec.model.corpus import load_corpus

        texts += load_corpus(config.reference_corpus).sample(config.reference_samples)
    return texts


def radii(job: CompileJob, path: str, keys: torch.Tensor, where: str = "input") -> torch.Tensor:
    """The initial radius of each key [n]: the config's `eps`, or calibrated on reference text."""
    config = job.config
    if config.eps != "auto":
        return torch.full((keys.shape[0],), float(config.eps))
    tokenizer = job.model.tokenizer
    texts = reference_texts(job)
    ids = [list(tokenizer(t, add_special_tokens=True)["input_ids"])[:128] for t in texts]
    states = reference_activations(job.model.model, tokenizer, path, [i for i in ids if i], where=where)
    references = torch.cat(states) if states else torch.zeros(0, keys.shape[1])
    distances = nearest_distances(keys, references)
    if not bool(torch.isfinite(distances).all()):
        raise EditspecError("`eps auto` needs reference text: none was given",
                            hint="set `eps` to a number, or give `reference_corpus` / keep facts")
    return config.eps_scale * distances


def model_state(model: nn.Module) -> tuple:
    """What a module's activations depend on besides the text: the weights (and their in-place
    versions), the module tree and the hooks on it."""
    weights = tuple((p.data_ptr(), p._version) for p in model.parameters())
    hooks = tuple(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return weights, hooks


def reference_activations(model: nn.Module, tokenizer, path: str, sequences: Sequence[Sequence[int]],
                          where: str = "input") -> list[torch.Tensor]:
    """`activations` of reference text, remembered while `model`'s state is unchanged.

    Sequential compiles in one process (a notebook, a benchmark) calibrate on the same general
    text every time; it runs once.  Each text runs alone (no padding), so a remembered
    activation is bit for bit the one a fresh process computes.
    """
    state = model_state(model)
    known_state, known = _REFERENCE.get(model, (None, {}))
    if known_state != state:
        known = {}
    missing = [s for s in dict.fromkeys(map(tuple, sequences)) if (path, where, s) not in known]
    for sequence, state_at in zip(missing, activations(model, tokenizer, path, missing, where=where, batch_size=1)):
        known[(path, where, sequence)] = state_at
    _REFERENCE[model] = (state, known)
    return [known[(path, where, tuple(s))] for s in sequences]


def key_queries(job: CompileJob, path: str, keyed: Sequence[KeyedText], where: str = "input"
                ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The activation at every key position [n, d], and (text index, position) for each row."""
    states = activations(job.model.model, job.model.tokenizer, path, [k.ids for k in keyed], where=where)
    rows, where_from = [], []
    for t, (text, state) in enumerate(zip(keyed, states)):
        for position in text.positions:
            rows.append(state[position])
            where_from.append((t, position))
    return torch.stack(rows), where_from


def fit(job: CompileJob, keyed: Sequence[KeyedText], params: Sequence[torch.Tensor], *, lr: float, n_iter: int,
        stop_loss: float, lr_step: int | None = None, lowest: str | None = None, shortcut: bool = True) -> dict:
    """Adam on `params` (with the memory's hooks installed) until every answer's mean NLL < `stop_loss`.

    Returns ``{"steps", "loss" (the worst text's), "per_text"}``; `lr_step` halves the rate that often.

    Two shortcuts give the same fit as running the whole model at every step, the second to
    float rounding (docs/methods/memory.md#the-fit): the blocks under `lowest` (the lowest module the memory
    hooks) compute the same thing at every step, so their output is recorded at the first step
    and replayed after; and the output head runs only at the key positions, the only ones the
    loss reads.  `shortcut=False` runs the whole model every step (what the tests compare with).
    """
    from editspec.model.hooks import blocks_below, raw_outputs, replaying
    from editspec.model.layout import output_head
    from editspec.model.tokens import pad_id, right_pad
    from editspec.families.locate.targets import head_logits
    from editspec.families.training.backend import only_trainable

    model, tokenizer = job.model.model, job.model.tokenizer
    optimizer = torch.optim.Adam(list(params), lr=lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step, gamma=0.5) if lr_step else None
    ids, mask = right_pad([k.ids for k in keyed], pad_id(tokenizer))
    device = model.get_input_embeddings().weight.device
    ids, mask = ids.to(device), mask.to(device)
    rows = [(list(k.positions), torch.tensor(k.labels, device=device)[:, None]) for k in keyed]
    # Every key position of every text, flat: the rows the output head is asked for.
    at_row = torch.tensor([r for r, (positions, _) in enumerate(rows) for _ in positions], device=device)
    at_pos = torch.tensor([p for positions, _ in rows for p in positions], device=device)
    spans = torch.tensor([0] + [len(positions) for positions, _ in rows]).cumsum(0).tolist()
    below = blocks_below(model, lowest) if shortcut and lowest else []
    head_w, head_b = output_head(model)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    recorded = None
    steps, per_text = 0, []
    with only_trainable(model, params):  # no gradients for the model's own weights: only the memory's
        for steps in range(n_iter + 1):
            if shortcut:
                with raw_outputs(model, below[-1:] if recorded is None else []) as top, \
                        replaying(model, below, recorded):
                    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
                if top and isinstance(top[0], torch.Tensor):  # older blocks return tuples: they run every step
                    recorded = top[0].detach()
                logp = torch.log_softmax(head_logits(hidden[at_row, at_pos], head_w, head_b, softcap), -1)
                picked = logp.gather(1, torch.cat([labels for _, labels in rows]))
                losses = torch.stack([-picked[a:b].mean() for a, b in zip(spans, spans[1:])])
            else:
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
                losses = torch.stack([-logp[r, positions].gather(1, labels).mean()
                                      for r, (positions, labels) in enumerate(rows)])
            per_text = [x.item() for x in losses]
            if steps == n_iter or max(per_text) < stop_loss:
                break
            if not losses.requires_grad:   # no position of any text reached the memory being trained
                raise EditspecError("no edit prompt reaches the memory's keys: nothing to train",
                                    hint="report this with the spec: the keys were placed but do not route")
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
    return {"steps": steps, "loss": round(max(per_text), 6), "per_text": per_text}


def per_edit_losses(job: CompileJob, keyed: Sequence[KeyedText], per_text: Sequence[float], **extra) -> list[dict]:
    """The manifest's per-edit numbers: mean final loss over the edit's prompts (and `extra`)."""
    losses: dict[str, list[float]] = {}
    for text, loss in zip(keyed, per_text):
        losses.setdefault(text.source, []).append(loss)
    return [{"id": e.id, "loss": round(sum(losses[e.id]) / len(losses[e.id]), 6), **extra} for e in job.edits]
