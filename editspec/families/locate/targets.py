"""Target vectors for many facts at once: the δ added at one module's output (ROME, MEMIT).

The method: docs/methods/locate.md#optimising-the-targets-δ.

All facts of a chunk run in one batch, each with its own δ, its rewriting rows (one per
context template) and its KL row.  With `tail_kl`, each rewriting row runs on through its
answer's last token, and the next-token distribution there is held near the unedited model's
(the tail KL): the edited model goes on after the new answer as the unedited one would.  With
`tail_tokens` above 1 the row runs on further, through the unedited model's own greedy
continuation of the answer (`fill_tails`), and the tail KL is the mean over those positions.

Two savings keep this fast on CPU:

- δ enters at the subject's last token, so every token before it is unaffected: those
  prefixes run once, without grad, and their attention keys/values are reused at every step;
  only the few tokens from the subject's last token on are recomputed.
- the blocks below the one that holds δ's site do not depend on δ either: they run once, and
  at every later step stand-ins return their recorded output (`replay_below`).
- logits are formed only where the loss reads them (target positions and the KL position).
- rows run in buckets of similar suffix length (`length_buckets`), one forward pass each, so
  a chat row's long suffix (the rest of the user turn, the assistant header, the answer) does
  not pad the dozen short raw rows of its fact to its own length; each bucket's prefix cache
  is cut to its longest prefix too.

A fact stops (and leaves the batch) once its loss is below `stop_loss` or the (geometric mean)
probability of its target tokens reaches `stop_prob`.  Facts that reach neither within `steps`
(stragglers) can go on from where they stopped for `straggler_steps` more, with a wider clamp,
so that a few hard facts get more room without slowing the typical one.

`row_scales` optionally scale δ per row: a rank-one edit built on an averaged key k̄ adds
``(uᵀk_t / uᵀk̄)·δ`` at a prompt whose key is k_t, not δ itself, so ROME optimises the δ that
its update will actually deliver at each template.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from editspec.model.hooks import add_to_output, blocks_below, raw_outputs, record_outputs, replaying
from editspec.model.prefix_cache import SplitRows, prefix_fits
from editspec.model.layout import layout_for, module_at, output_head
from editspec.model.precision import bfloat16_autocast, native_bfloat16
from editspec.model.tokens import end_ids, right_pad

from .requests import PreparedRequest


@dataclass(frozen=True)
class OptimSettings:
    """How δ is optimised; the backends' configs fill these in."""

    lr: float = 0.5
    steps: int = 25
    kl_factor: float = 0.0625
    weight_decay: float = 1e-3
    clamp_factor: float = 4.0
    stop_loss: float = 0.05
    facts_per_batch: int = 16
    stop_prob: float = 1.0  # also stop once exp(-mean target NLL) reaches this (1.0: never)
    cache_prefix: bool = True  # reuse the tokens before the subject; False recomputes whole rows
    replay_below: bool = True  # run the blocks below the site's block once; False: at every step
    straggler_steps: int = 0  # more steps for facts that met neither stop criterion (0: none)
    straggler_clamp_factor: float = 8.0  # δ's norm limit during those steps
    bf16_steps: bool = False  # steps after the first in bfloat16 autocast, where the device computes it natively
    length_buckets: bool = True  # rows of similar suffix length run as their own forward pass; False: one padded batch
    tail_kl: float = 0.0  # weight of the KL at the position after each row's whole answer (0: off)
    tail_tokens: int = 1  # positions of the tail KL: after the answer, then after each of the unedited continuation's tokens

    def reached(self, loss: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
        """Which facts met a stop criterion: loss below `stop_loss`, or target probability `stop_prob`."""
        return (loss < self.stop_loss) | (torch.exp(-nll) >= self.stop_prob)

    def for_stragglers(self) -> "OptimSettings":
        """The settings of the straggler pass: `straggler_steps` more steps, the wider clamp."""
        return replace(self, steps=self.straggler_steps + 1, clamp_factor=self.straggler_clamp_factor)


@dataclass
class Targets:
    """Per-fact results: δ [n, d], the site output before δ at the bare prompt [n, d], final losses."""

    delta: torch.Tensor
    init: torch.Tensor
    loss: torch.Tensor
    nll: torch.Tensor
    steps: torch.Tensor
    tail0: list | None = None  # per fact: the unedited log-probabilities after each row's answer [tail positions, vocab]

    @property
    def value(self) -> torch.Tensor:
        """``init + delta``: v* (ROME, at the MLP output) or z (MEMIT, at the block output)."""
        return self.init + self.delta


@contextlib.contextmanager
def frozen(model):
    """Eval mode and no parameter gradients inside the block; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def row_weights(prep: PreparedRequest) -> list[float]:
    """Each rewriting row's share of a fact's target NLL: the raw rows and the chat rows weigh half each
    (all rows alike without chat rows), so one chat row among a dozen templates is not drowned out."""
    chat = sum(prep.chat)
    raw = prep.num_rows - chat
    if not chat or not raw:
        return [1.0 / prep.num_rows] * prep.num_rows
    return [0.5 / chat if is_chat else 0.5 / raw for is_chat in prep.chat]


# One more forward pass costs about as much as this many padded row tokens (CPU: a few; on an
# accelerator a pass is launch-bound and padding is nearly free, so rows are rarely split there).
_PASS_COST = {"cpu": 16}
_PASS_COST_ELSEWHERE = 2048


def length_buckets(lengths: Sequence[int], pass_cost: int) -> list[list[int]]:
    """Indices of `lengths` split into buckets of similar length, shortest bucket first.

    A bucket costs ``len(bucket) · max(length) + pass_cost`` (its padded tokens plus one pass);
    the split minimising the total is found exactly over the sorted distinct lengths.  Four
    CounterFact facts with 11 raw rows of 3-6 tokens and one chat row of 10-12 each pad to 624
    row tokens in one pass; split by length they compute little more than their 263 real ones.

    >>> length_buckets([4, 4, 12, 5], pass_cost=16)
    [[0, 1, 3], [2]]
    """
    distinct = sorted(set(lengths))
    count = [sum(1 for x in lengths if x == d) for d in distinct]
    best = [0.0] + [float("inf")] * len(distinct)  # best[j]: the first j distinct lengths bucketed
    cut = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        rows = 0
        for i in range(j, 0, -1):  # bucket of distinct lengths i-1 .. j-1
            rows += count[i - 1]
            cost = best[i - 1] + rows * distinct[j - 1] + pass_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    bounds, j = [], len(distinct)
    while j:
        bounds.append((distinct[cut[j]], distinct[j - 1]))
        j = cut[j]
    return [[k for k, x in enumerate(lengths) if lo <= x <= hi] for lo, hi in reversed(bounds)]


class _Chunk:
    """The token layout of one chunk of facts: prefixes (left-padded, cached) and suffixes."""

    def __init__(self, facts: Sequence[PreparedRequest], pad: int, cache_prefix: bool = True,
                 scales: Sequence[Sequence[float]] | None = None, tails: int = 0):
        self.rows, self.fact, self.subject, self.bare, scale = [], [], [], [], []
        sup_row, sup_pos, sup_tgt, sup_w, self.kl_rows = [], [], [], [], []
        tail_row, tail_pos, tail_w = [], [], []
        for f, prep in enumerate(facts):
            own = scales[f] if scales is not None else [1.0] * (prep.num_rows + 1)
            if len(own) != prep.num_rows + 1:
                raise ValueError(f"{len(own)} row scales for {prep.num_rows} rows and the KL row")
            scale += list(own)
            forms = row_weights(prep)
            for r in range(prep.num_rows):
                target = prep.targets[r]  # raw rows: after a space; chat rows: the reply's first words
                m = len(target)
                row = len(self.rows)
                s = prep.subject_index[r]
                if r == 0:
                    self.bare.append(row)
                for j in range(m):  # logits at prompt_len-1+j predict target j
                    sup_row.append(row)
                    sup_pos.append(prep.prompt_len[r] - 1 + j - (s if cache_prefix else 0))
                    sup_tgt.append(target[j])
                    sup_w.append(forms[r] / m)
                # With `tails` positions the row goes on to the answer's last token (whose logits say what
                # follows the answer) and through the first tails - 1 tokens of the unedited continuation.
                more = ([target[-1]] + list(prep.tails[r][:tails - 1] if prep.tails else [])) if tails else []
                for j in range(len(more)):
                    tail_row.append(row)
                    tail_pos.append(prep.prompt_len[r] - 1 + m + j - (s if cache_prefix else 0))
                    tail_w.append(forms[r] / len(more))
                self._add(list(prep.rows[r]) + more, s, f)
            self.kl_rows.append(len(self.rows))
            self._add(prep.kl_row, prep.kl_index, f)
        self.fact_t = torch.tensor(self.fact)
        self.scale = torch.tensor(scale, dtype=torch.float64)  # δ's multiplier in each row
        self.sup_row, self.sup_pos = torch.tensor(sup_row), torch.tensor(sup_pos)
        self.sup_tgt, self.sup_w = torch.tensor(sup_tgt), torch.tensor(sup_w)
        self.sup_fact = self.fact_t[self.sup_row]
        self.tail_row, self.tail_pos = torch.tensor(tail_row, dtype=torch.long), torch.tensor(tail_pos, dtype=torch.long)
        self.tail_w = torch.tensor(tail_w)
        self.tail_fact = self.fact_t[self.tail_row] if tails else torch.zeros(0, dtype=torch.long)
        self.pad = pad
        # Rows split at the subject's last token; without a prefix cache the whole row is the suffix.
        self.split = list(self.subject) if cache_prefix else [0] * len(self.rows)
        self.at_subject = torch.tensor([s - p for s, p in zip(self.subject, self.split)])
        self.layout = SplitRows(self.rows, self.split, pad)
        self.suffix_ids, self.suffix_mask = self.layout.suffix_ids, self.layout.suffix_mask

    def _add(self, row, s, f):
        self.rows.append(list(row))
        self.subject.append(s)
        self.fact.append(f)


def head_logits(hidden, head_w, head_b, softcap):
    """Float logits of final hidden states [N, d] (`output_head`'s weight and bias, Gemma's softcap)."""
    logits = hidden @ head_w.T  # [N, vocab]
    if head_b is not None:
        logits = logits + head_b
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


def _still_running(rows: torch.Tensor, where: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries whose chunk row (`rows`) runs in this step, and their rows in the step's batch (`where`)."""
    entries = [k for k, r in enumerate(rows.tolist()) if r in where]
    return (torch.tensor(entries, dtype=torch.long),
            torch.tensor([where[r] for r in rows[entries].tolist()], dtype=torch.long))


def kl_to(logp: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ p₀) per row of log-probabilities `logp` against `anchor` (both [N, vocab])."""
    return (logp.exp() * (logp - anchor)).sum(-1)


def _optimise_chunk(model, site: str, facts: Sequence[PreparedRequest], s: OptimSettings, pad: int,
                    scales: Sequence[Sequence[float]] | None = None,
                    start: tuple[torch.Tensor, torch.Tensor] | None = None, tail0: Sequence[torch.Tensor] | None = None):
    """One chunk's δ; `start` (δ, unedited KL-row log-probabilities) goes on from an earlier pass;
    `tail0` (per fact, log-probabilities at each row's tail positions) anchors the tail KL (None: this pass's step 0)."""
    base = model.base_model
    head_w, head_b = output_head(model)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    device, dtype = head_w.device, head_w.dtype
    longest = max(len(r) for p in facts for r in (*p.rows, p.kl_row))
    tails = s.tail_kl > 0
    c = _Chunk(facts, pad, cache_prefix=s.cache_prefix and prefix_fits(model, longest), scales=scales,
               tails=s.tail_tokens if tails else 0)
    anchor = torch.cat([t.to(device) for t in tail0]) if tails and tail0 is not None else None
    n = len(facts)
    kv = c.layout.prefix_cache(base, device)
    # Both sites (MLP output, block output) live in the residual width d_model.
    delta = torch.zeros(n, head_w.shape[1], dtype=dtype, device=device)
    init = kl0 = replay = None
    if start is not None:
        delta += start[0].to(device, dtype)
        kl0 = start[1].to(device)  # from the first pass, before any δ
    delta.requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=s.lr)
    active = torch.ones(n, dtype=torch.bool)
    below = blocks_below(model, site) if s.replay_below else []
    # Step 0 stays in the model's dtype: it records init, the KL anchor and the replayed blocks.
    fast = s.bf16_steps and dtype == torch.float32 and native_bfloat16(device)
    loss_out, nll_out = torch.zeros(n), torch.zeros(n)
    steps_out = torch.zeros(n, dtype=torch.long)
    width = c.suffix_ids.shape[1]
    suffix_lens = c.suffix_mask.sum(1)
    pass_cost = _PASS_COST.get(torch.device(device).type, _PASS_COST_ELSEWHERE) if s.length_buckets else None
    for it in range(s.steps):
        rows = torch.nonzero(active[c.fact_t]).squeeze(1)  # rows of facts still optimising
        first = init is None  # step 0 records init, the KL anchor and the replayed blocks
        lens = suffix_lens[rows].tolist()
        buckets = length_buckets(lens, pass_cost) if pass_cost is not None else [list(range(len(lens)))]
        parts, seen_rows, below_rows = [], [], []
        for bucket in buckets:
            local = torch.tensor(bucket, dtype=torch.long)
            brows = rows[local]
            suffix_len = int(suffix_lens[brows].max())
            inputs = c.layout.inputs(kv, model, device, rows=brows, suffix_len=suffix_len)
            row_delta = delta[c.fact_t[brows].to(device)] * c.scale[brows].to(device, dtype).unsqueeze(1)  # [rows, d]
            at_subject = c.at_subject[brows]  # the subject's last token, in suffix coordinates
            # The recorder is registered first, so it sees the site output before δ is added.
            recorded = replay[brows.to(replay.device), :suffix_len] if replay is not None else None
            with record_outputs(model, [site] if first else []) as seen, \
                    raw_outputs(model, below[-1:] if first else []) as top_below, \
                    replaying(model, below, recorded), add_to_output(model, site, row_delta, at_subject), \
                    bfloat16_autocast(device, fast and it > 0):
                out = base(**inputs).last_hidden_state
            # Under a device map the last block may sit on another device than the (tied) head: δ,
            # the losses and the bookkeeping all live on the head's device.
            parts.append((local, out.to(device)))
            if first:
                seen_rows.append((brows, seen[site].detach()))
                # Transformers 5 blocks return a bare tensor, which a stand-in can return in their place;
                # older ones return tuples: then the blocks below run at every step.
                if top_below and isinstance(top_below[0], torch.Tensor):
                    below_rows.append((brows, top_below[0].detach()))
        if len(parts) == 1:
            hidden = parts[0][1]
        else:  # the buckets' rows back in batch order, right-padded to the longest
            longest = max(int(out.shape[1]) for _, out in parts)
            hidden = parts[0][1].new_zeros(len(rows), longest, parts[0][1].shape[-1])
            for local, out in parts:
                hidden = hidden.index_put((local.to(device).unsqueeze(1), torch.arange(out.shape[1], device=device)), out)
        if below_rows and len(below_rows) == len(buckets):
            sample = below_rows[0][1]
            replay = sample.new_zeros(len(c.rows), width, sample.shape[-1])  # [all rows, suffix, d]: every step
            for brows, out in below_rows:
                replay[brows.to(replay.device), :out.shape[1]] = out
        if init is None:
            bare = set(c.bare)
            init = torch.zeros(n, head_w.shape[1], dtype=dtype, device=device)
            for brows, at_site in seen_rows:
                for j, r in enumerate(brows.tolist()):
                    if r in bare:
                        init[c.fact[r]] = at_site[j, c.at_subject[r]].to(device)
            init = init.detach()  # [n, d]
        where = {int(r): i for i, r in enumerate(rows)}  # chunk row -> batch row
        sup, sup_batch = _still_running(c.sup_row, where)
        logp = torch.log_softmax(head_logits(hidden[sup_batch.to(device), c.sup_pos[sup].to(device)], head_w, head_b, softcap), -1)
        token_nll = -logp.gather(1, c.sup_tgt[sup].to(device).unsqueeze(1)).squeeze(1)  # [N]
        nll = torch.zeros(n, device=device).index_add(0, c.sup_fact[sup].to(device), token_nll * c.sup_w[sup].to(device))
        kl_batch = torch.tensor([where[r] for r in c.kl_rows if r in where], dtype=torch.long)
        kl_facts = c.fact_t[torch.tensor(c.kl_rows)][active]
        kl_at = c.at_subject[torch.tensor(c.kl_rows)[active]].to(device)
        kl_logp = torch.log_softmax(head_logits(hidden[kl_batch.to(device), kl_at], head_w, head_b, softcap), -1)
        if kl0 is None:
            kl0 = kl_logp.detach()  # p_0: the unedited next-token distribution at the subject
        kl = torch.zeros(n, device=device)
        kl[kl_facts.to(device)] = kl_to(kl_logp, kl0[kl_facts.to(device)])
        init_norm = init.float().norm(dim=-1)
        decay = delta.float().norm(dim=-1) / init_norm ** 2
        loss = nll + s.kl_factor * kl + s.weight_decay * decay  # [n]
        if tails:
            live, tail_batch = _still_running(c.tail_row, where)
            tail_logp = torch.log_softmax(
                head_logits(hidden[tail_batch.to(device), c.tail_pos[live].to(device)], head_w, head_b, softcap), -1)
            if anchor is None:
                anchor = tail_logp.detach()  # step 0 runs every row: the anchor's rows are the chunk's tail rows
            tail = kl_to(tail_logp, anchor[live.to(device)]) * c.tail_w[live].to(device)
            loss = loss + s.tail_kl * torch.zeros(n, device=device).index_add(0, c.tail_fact[live].to(device), tail)
        idx = active.nonzero().squeeze(1)
        loss_out[idx] = loss.detach().cpu()[idx]
        nll_out[idx] = nll.detach().cpu()[idx]
        steps_out[idx] = it
        active = active & ~s.reached(loss.detach().cpu(), nll.detach().cpu())
        if it == s.steps - 1 or not bool(active.any()):
            break  # the final iteration only evaluates
        opt.zero_grad()
        loss[active.to(device)].sum().backward()
        keep = delta.detach().clone()
        opt.step()
        with torch.no_grad():
            delta[~active.to(device)] = keep[~active.to(device)]  # finished facts stay put
            limit = s.clamp_factor * init_norm
            norm = delta.float().norm(dim=-1)
            scale = torch.where(norm > limit, limit / norm.clamp(min=1e-30), torch.ones_like(norm))
            delta.mul_(scale.to(delta.dtype).unsqueeze(1))
    anchors = [anchor[(c.tail_fact == f).to(anchor.device)].cpu() for f in range(n)] if tails else [None] * n
    return (delta.detach().to("cpu", torch.float64), init.to("cpu", torch.float64), loss_out, nll_out, steps_out,
            kl0.cpu(), anchors)


def optimise_targets(
    model, sites: Sequence[str], prepared: Sequence[PreparedRequest], settings: OptimSettings, *, pad: int,
    row_scales: Sequence[Sequence[float]] | None = None, tail0: Sequence[torch.Tensor] | None = None,
) -> Targets:
    """Optimise one δ per request, added at module ``sites[i]``'s output at its subject token.

    Facts with the same site run together in chunks of `settings.facts_per_batch`; results come
    back in request order, float64 on CPU.  The model's weights are never changed.
    `row_scales[i]` (one number per rewriting row, then one for the KL row) multiplies δ in
    each of request i's rows; None adds δ unscaled everywhere.
    With `settings.tail_tokens` above 1, requests without their tail continuations get them here,
    from the model as it is now (`fill_tails`); later passes on the same requests reuse them.
    """
    n = len(prepared)
    parts: dict[int, tuple] = {}
    with frozen(model):
        if settings.tail_kl > 0 and settings.tail_tokens > 1:
            fill_tails(model, [p for p in prepared if p.tail_tokens < settings.tail_tokens - 1],
                       settings.tail_tokens - 1, pad=pad)
        _optimise_groups(model, sites, prepared, settings, pad, row_scales, range(n), parts, tail0=tail0)
        stragglers = [i for i in range(n) if not settings.reached(parts[i][2], parts[i][3])]
        if settings.straggler_steps and stragglers:
            first = {i: parts[i] for i in stragglers}
            _optimise_groups(model, sites, prepared, settings.for_stragglers(), pad, row_scales, stragglers, parts,
                             start={i: (first[i][0], first[i][5]) for i in stragglers},
                             tail0={i: first[i][6] for i in stragglers})
            for i in stragglers:  # the second pass's step 0 re-evaluates the first pass's last step
                delta, init, loss, nll, steps, kl0, tails = parts[i]
                parts[i] = (delta, init, loss, nll, steps + first[i][4], kl0, tails)
    stacked = [torch.stack([parts[i][k] for i in range(n)]) for k in range(5)]
    return Targets(*stacked, tail0=[parts[i][6] for i in range(n)] if settings.tail_kl > 0 else None)


@torch.no_grad()
def fill_tails(model, prepared: Sequence[PreparedRequest], tokens: int, *, pad: int, rows_per_batch: int = 64):
    """Set each request's `tails`: for every rewriting row, the model's greedy continuation (up to
    `tokens` tokens, cut before an end-of-sequence token) after the row's whole answer.

    Called on the unedited model, these are the tokens the tail KL runs through: after the answer
    it holds the next positions too, not only the first, to what the unedited model says there
    (after "Yemen." it goes on " Aden is a"; a stuck reply says "Yemen." again).
    """
    base = model.base_model
    head_w, head_b = output_head(model)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    device = head_w.device
    eos = end_ids(model)
    seqs = [(prep, r, list(prep.rows[r]) + [prep.targets[r][-1]]) for prep in prepared for r in range(prep.num_rows)]
    for prep in prepared:
        prep.tails, prep.tail_tokens = [[] for _ in range(prep.num_rows)], tokens
    for first in range(0, len(seqs), rows_per_batch):
        batch = seqs[first:first + rows_per_batch]
        grown = [list(seq) for _, _, seq in batch]
        open_ = [True] * len(batch)
        for _ in range(tokens):
            ids, mask = right_pad(grown, pad)
            hidden = base(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            last = (mask.sum(1) - 1).to(device)
            nxt = head_logits(hidden[torch.arange(len(grown), device=device), last], head_w, head_b, softcap).argmax(-1)
            for k, token in enumerate(nxt.tolist()):
                if open_[k] and token not in eos:
                    grown[k].append(token)
                    batch[k][0].tails[batch[k][1]].append(token)
                else:
                    open_[k] = False
            if not any(open_):
                break


def suffix_width(prep: PreparedRequest) -> int:
    """The tokens a fact's rows recompute at every step: from the subject's last token to the row's end."""
    return max(len(row) - s for row, s in zip((*prep.rows, prep.kl_row), (*prep.subject_index, prep.kl_index)))


def _optimise_groups(model, sites, prepared, settings, pad, row_scales, indices, parts, start=None, tail0=None):
    """Runs `indices` in chunks of facts with the same site; writes each fact's results to `parts`.

    Facts are chunked in order of `suffix_width`, so that a chunk's rows need little padding:
    each fact's δ depends only on its own rows, and on CounterFact this pads 8% instead of 31%.
    """
    indices = list(indices)
    for site in dict.fromkeys(sites[i] for i in indices):
        members = sorted((i for i in indices if sites[i] == site), key=lambda i: suffix_width(prepared[i]))
        for first in range(0, len(members), settings.facts_per_batch):
            chunk = members[first:first + settings.facts_per_batch]
            scales = [row_scales[i] for i in chunk] if row_scales is not None else None
            begin = tuple(torch.stack([start[i][k] for i in chunk]) for k in range(2)) if start is not None else None
            anchors = [tail0[i] for i in chunk] if tail0 is not None else None
            result = _optimise_chunk(model, site, [prepared[i] for i in chunk], settings, pad, scales, begin, anchors)
            for j, i in enumerate(chunk):
                parts[i] = tuple(t[j] for t in result)
