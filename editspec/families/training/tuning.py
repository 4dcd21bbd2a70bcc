"""Train some parameters of a model on spec objectives, with a KL term to the unedited model.

The loop the training backends share (ft, sense): every step scores all targets
(`editspec.families.training.objectives`) teacher-forced in one batch, adds ``kl_weight · KL(p_unedited ‖ p_θ)``
summed over the positions of a seeded random batch of anchor windows (averaged over the
batch, as Hewitt et al. 2024), and takes one Adam step on `params`.  It stops early once the
objective loss is below `stop_loss`; with a preserve `budget`, it measures the preserve texts
every `budget_every` steps and, past the budget, restores the last parameters within it.

    >>> anchors = reference_anchors(model, tok, [["The capital of France is Paris"]])   # doctest: +SKIP
    >>> log = train(model, tok, params, encode_targets(tok, objectives.targets), anchors, settings)  # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from editspec.model.chat import answer_ids, user_turn
from editspec.errors import EditspecError
from editspec.families.training.objectives import Target
from editspec.model.continuation import chat_replies, model_device
from editspec.model.tokens import pad_id, right_pad, target_token_ids

ANCHOR_TOKENS = 32  # anchor texts are cut into windows of this many tokens; chat replies are this long at most


@dataclass(frozen=True)
class Encoded:
    """A target as token ids: the prompt (with special tokens), the answer, the foil (contrast)."""

    target: Target
    head: tuple[int, ...]
    answer: tuple[int, ...]
    foil: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChatAnchor:
    """A keep question as a user turn with the unedited model's own reply: one anchor window, whole.

    `ids` are the templated turn and the reply; the KL counts only the positions from `start`
    on, those that predict the reply (the template and the question are not the model's to say).
    """

    ids: tuple[int, ...]
    start: int


@dataclass
class Anchors:
    """Anchor windows and the unedited model's next-token log-probs on them (float16, CPU)."""

    ids: torch.Tensor  # [n, width]
    mask: torch.Tensor  # [n, width]
    reference: torch.Tensor  # [n, width, vocab] log-probs
    counted: torch.Tensor | None = None  # [n, width]: the positions whose KL counts (None: every unpadded one)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class TrainSettings:
    """How long and how hard to train (a backend builds this from its config)."""

    lr: float
    steps: int
    kl_weight: float
    kl_batch: int
    stop_loss: float
    grad_clip: float = 1.0
    budget_every: int = 10
    forget_logp: float = math.log(0.01)
    seed: int = 0


def encode_targets(tokenizer, targets: Sequence[Target]) -> list[Encoded]:
    """Token ids of every target, or an `EditspecError` naming the source whose answer is empty.

    >>> encode_targets(tok, [Target("The capital of France is", "Rome", "good", "e1")])[0].answer  # doctest: +SKIP
    (1234,)
    """
    encoded = []
    for target in targets:
        try:
            if target.chat:  # a user turn through the chat template; the answer opens the reply
                text = user_turn(tokenizer, target.prompt)
                head = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
                ids = lambda answer: tuple(answer_ids(tokenizer, text, answer))  # noqa: E731
            else:
                head = tuple(tokenizer(target.prompt.rstrip(), add_special_tokens=True)["input_ids"])
                ids = lambda answer: tuple(target_token_ids(tokenizer, target.prompt, answer))  # noqa: E731
            answer, foil = ids(target.answer), ids(target.foil) if target.foil else ()
        except EditspecError as error:
            raise EditspecError(f"`{target.source}`: {error.diagnostics[0].message}") from None
        encoded.append(Encoded(target, head, answer, foil))
    return encoded


@torch.no_grad()
def chat_anchors(model, tokenizer, messages: Sequence[str], *, limit: int = 64,
                 reply_tokens: int = ANCHOR_TOKENS) -> list[ChatAnchor]:
    """Each of (at most `limit`) `messages` as a user turn and the unedited `model`'s greedy reply.

    The reply is generated as verify's `chat` protocol generates it (`chat_replies`: greedy,
    ending with the assistant's turn, here after at most `reply_tokens`), so the anchor holds
    the very answer the chat locality check compares with; a reply that ended keeps its EOS.
    """
    eos = tokenizer.eos_token_id
    found = []
    for prompt, reply, ended in chat_replies(model, tokenizer, list(dict.fromkeys(messages))[:limit],
                                             max_new_tokens=reply_tokens):
        reply = reply + [eos] if ended else reply
        if reply:
            found.append(ChatAnchor(tuple(prompt + reply), len(prompt) - 1))
    return found


def anchor_windows(tokenizer, groups: Sequence[Sequence[str | ChatAnchor]], limit: int) -> list[list[int] | ChatAnchor]:
    """At most `limit` windows of at most `ANCHOR_TOKENS` tokens from `groups` of texts, in priority order.

    The first group (the keep facts of what is trained now) comes first, up to half the limit;
    then one window from each group that has any left, round after round, so that no group
    crowds out the others: a sequential compile of the 200th edit anchors that edit's own keep
    facts and general text, not only the first edits' keep facts.  Within a group, text order.
    A `ChatAnchor` in a group is one window, kept whole.
    """
    per_group = [_windows(tokenizer, texts, limit) for texts in groups]
    if not per_group:
        return []
    first = per_group[0][:limit // 2]
    per_group[0] = per_group[0][len(first):]
    chosen: list[list[int]] = list(first)
    for round_ in range(limit):
        for windows in per_group:
            if round_ < len(windows) and len(chosen) < limit:
                chosen.append(windows[round_])
    return chosen


def _windows(tokenizer, texts: Sequence[str | ChatAnchor], limit: int) -> list[list[int] | ChatAnchor]:
    windows: list[list[int] | ChatAnchor] = []
    for text in texts:
        if isinstance(text, ChatAnchor):
            windows.append(text)
            if len(windows) >= limit:
                break
            continue
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        for start in range(0, max(len(ids) - 1, 1), ANCHOR_TOKENS):
            window = ids[start:start + ANCHOR_TOKENS]
            if len(window) > 1:
                windows.append(window)
        if len(windows) >= limit:
            break
    return windows[:limit]


@torch.no_grad()
def reference_anchors(model, tokenizer, groups: Sequence[Sequence[str | ChatAnchor]], *, limit: int = 64) -> Anchors | None:
    """The unedited `model`'s log-probs on windows of the texts in `groups` (None when there is no text).

    Groups share the `limit` fairly (`anchor_windows`); a `ChatAnchor` counts from its reply on."""
    windows = anchor_windows(tokenizer, groups, limit)
    if not windows:
        return None
    ids, mask = right_pad([list(w.ids) if isinstance(w, ChatAnchor) else w for w in windows], pad_id(tokenizer))
    counted = None
    if any(isinstance(w, ChatAnchor) for w in windows):
        counted = mask.clone()
        for row, window in enumerate(windows):
            if isinstance(window, ChatAnchor):
                counted[row, : window.start] = 0
    refs = []
    for start in range(0, len(windows), 8):
        chunk = slice(start, start + 8)
        logits = model(input_ids=ids[chunk].to(model_device(model)), attention_mask=mask[chunk].to(model_device(model))).logits
        refs.append(torch.log_softmax(logits.float(), dim=-1).to(torch.float16).cpu())
    return Anchors(ids, mask, torch.cat(refs), counted)


def anchor_kl(model, anchors: Anchors, rows: torch.Tensor) -> torch.Tensor:
    """``KL(p_unedited ‖ p_model)`` summed over the counted positions of `rows`, averaged over them."""
    device = model_device(model)
    ids, mask = anchors.ids[rows].to(device), anchors.mask[rows].to(device)
    counted = mask if anchors.counted is None else anchors.counted[rows].to(device)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    ref = anchors.reference[rows].to(device=device, dtype=torch.float32)
    per_position = (ref.exp() * (ref - logp)).sum(-1) * counted
    return per_position.sum() / len(rows)


def target_losses(model, tokenizer, encoded: Sequence[Encoded], forget_logp: float = math.log(0.01)
                  ) -> tuple[torch.Tensor, list[float]]:
    """The summed objective loss of all targets in one forward pass, and each target's loss.

    `good`: mean NLL of the answer; `contrast`: ``softplus(NLL(answer) - NLL(foil))`` (means per
    token); `bad`: ``relu(log p(answer) - forget_logp)``, zero once the whole forbidden string
    is below the threshold.
    """
    sequences = []
    for e in encoded:
        sequences.append(e.head + e.answer)
        if e.foil:
            sequences.append(e.head + e.foil)
    ids, mask = right_pad(sequences, pad_id(tokenizer))
    device = model_device(model)
    logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), dim=-1)
    losses, row = [], 0
    for e in encoded:
        answer = _token_logprobs(logp[row], e.head, e.answer)
        row += 1
        if e.target.kind == "good":
            loss = -answer.mean()
        elif e.target.kind == "bad":  # the forbidden continuation's log-probability, down to forget_logp
            loss = F.relu(answer.sum() - forget_logp)
        else:  # contrast: the answer's mean NLL below the foil's
            foil = _token_logprobs(logp[row], e.head, e.foil)
            row += 1
            loss = F.softplus(foil.mean() - answer.mean())
        losses.append(loss)
    total = torch.stack(losses).sum()
    return total, [loss.item() for loss in losses]


def _token_logprobs(logp: torch.Tensor, head: Sequence[int], answer: Sequence[int]) -> torch.Tensor:
    positions = torch.arange(len(head) - 1, len(head) + len(answer) - 1, device=logp.device)
    wanted = torch.tensor(answer, device=logp.device)
    return logp[positions].gather(1, wanted[:, None])[:, 0]


def train(model, tokenizer, params: Sequence[torch.nn.Parameter], encoded: Sequence[Encoded],
          anchors: Anchors | None, settings: TrainSettings, *,
          over_budget: Callable[[], float | None] | None = None,
          progress: Callable[[str], None] = lambda message: None) -> dict:
    """Train `params` on `encoded` targets with KL on `anchors`; return a log of what happened.

    `over_budget()` (optional) returns None while the preserve budget holds, else the measured
    value; training then stops and `params` go back to their last values within the budget.
    """
    params = list(params)
    if not params:
        raise EditspecError("nothing to train: the backend selected no parameters")
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    snapshot = [p.detach().clone() for p in params]
    log: dict = {"steps": 0, "stopped": "steps"}
    was_training = model.training
    model.train(False)  # no dropout: deterministic steps
    try:
        for step in range(settings.steps):
            optimizer.zero_grad(set_to_none=True)
            objective, per_target = target_losses(model, tokenizer, encoded, settings.forget_logp)
            loss = objective
            kl = 0.0
            if anchors is not None and settings.kl_weight > 0:
                rows = torch.randperm(len(anchors), generator=generator)[: settings.kl_batch]
                kl_term = anchor_kl(model, anchors, rows)
                kl = kl_term.item()
                loss = loss + settings.kl_weight * kl_term
            if not math.isfinite(loss.item()):
                raise EditspecError("the training loss became NaN or inf; refusing the result",
                                    hint="try a smaller `lr`")
            log.update(steps=step, objective=round(objective.item(), 6), kl=round(kl, 6),
                       per_target=[round(x, 6) for x in per_target])
            if objective.item() < settings.stop_loss:
                log["stopped"] = "stop_loss"
                break
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            log["steps"] = step + 1
            if over_budget is not None and (step + 1) % settings.budget_every == 0:
                measured = over_budget()
                if measured is not None:
                    with torch.no_grad():
                        for p, saved in zip(params, snapshot):
                            p.copy_(saved)
                    log.update(stopped="budget", budget_measured=round(measured, 6))
                    progress(f"preserve budget exceeded at step {step + 1} ({measured:.4g}); "
                             f"kept the parameters of step {step + 1 - settings.budget_every}")
                    break
                snapshot = [p.detach().clone() for p in params]
            if step % 10 == 0:
                progress(f"step {step}: objective {objective.item():.4f}, kl {kl:.4f}")
    finally:
        model.train(was_training)
    return log


def budget_monitor(model, tokenizer, texts: Sequence[str], budget, reference: dict | None) -> Callable[[], float | None] | None:
    """A callable for `train(over_budget=...)`: None while the preserve `budget` holds.

    `reference` is the unedited model's `editspec.verify.observe.text_loss` on `texts` (with
    `"logprobs"` for a KL budget); the measure is the verifier's own.
    """
    if budget is None or not texts or reference is None:
        return None
    from editspec.verify.observe import text_loss

    def measure() -> float | None:
        with torch.no_grad():
            seen = text_loss(model, tokenizer, texts, reference.get("logprobs"))
        value = seen["kl"] if budget.metric == "kl" else (seen["loss"] - reference["loss"]) / reference["loss"]
        return value if value > budget.value else None

    return measure


def unedited_text_reference(model, tokenizer, texts: Sequence[str], budget) -> dict | None:
    """What `budget_monitor` compares with, measured on the unedited model."""
    if budget is None or not texts:
        return None
    from editspec.verify.observe import text_logprobs, text_loss

    with torch.no_grad():
        reference = text_loss(model, tokenizer, texts)
        if budget.metric == "kl":
            reference["logprobs"] = text_logprobs(model, tokenizer, texts)
    return reference
