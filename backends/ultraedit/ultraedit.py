"""UltraEdit's update math: keys and value gradients from one pass, lifelong normalisation, a closed-form solve.

For each edit, the texts are the edit prompt followed by the new answer (teacher-forced), raw and
in chat form.  One forward-backward pass over them records, at every edited value projection,
the projection's input k (the key) and the gradient g of the answer's NLL with respect to the
projection's output, at the rows `key_rows` picks: the positions that predict an answer token
and (`context_rows`) the prompt positions before them that no other edit's text shares, the
subject's among them, found without knowing where the subject is.  No optimisation loop.

Lifelong normalisation: per layer, the running per-feature mean square of every key and every
gradient seen so far, over all `--on` turns (merged exactly, like a running mean).  Gradients
are divided by their running RMS before they become value shifts ``V = −η·g/rms_g``, so the
step means the same thing in turn 1 and turn 100 while the edited model drifts.  Each feature's
RMS is shrunk toward the mean over features, as if `prior_rows` rows had shown that mean.  We
scale and do not centre: a centred gradient would erase a lone edit.

The solve, by default (`mom2_weight` > 0, `stats_update`): MEMIT's least-squares update for one
layer, with C = E[kkᵀ] the unedited model's keys on general text standing for `mom2_weight`
tokens and the keep facts' keys pinned at zero:

    ΔW = Vᵀ K (KᵀK + w·PᵀP + λ·C)⁻¹

With `mom2_weight` 0, the paper's ridge in running-RMS-normalised key space (`ultraedit_update`,
a dual [n, n] system).  Either way the update comes out as factors ``Delta(left=Vᵀ, right=…)``
of rank n, the rows; the backend merges a module's factors into one dense delta once they are
larger than it (docs/methods/ultraedit.md).  `passes` > 1 steps again from the edited model.

    norm = LifelongNorm()
    for batch in turns:
        deltas, norm, logs = ultraedit_deltas(model, tok, batch_texts, keep_texts, config, norm, stats)
        apply_deltas(model, deltas)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from editspec.families.memory.codebook import KeyedText
from editspec.model.deltas import Delta, apply_deltas
from editspec.model.hooks import blocks_below, raw_outputs, record_inputs, replaying, stop_after
from editspec.model.layout import layout_for, module_at, output_head, value_weight
from editspec.families.locate import frozen, least_squares_update
from editspec.families.locate.targets import head_logits
from editspec.model.tokens import pad_id, right_pad

from .config import UltraEditConfig

EPS = 1e-12  # added to mean squares before the square root: a feature never seen scales by 1e6, not inf


@dataclass(frozen=True)
class RunningSquares:
    """The running per-feature mean square of rows seen so far, and how many there were."""

    count: int
    mean_square: torch.Tensor  # [d] float64

    @classmethod
    def empty(cls, dim: int) -> "RunningSquares":
        return cls(0, torch.zeros(dim, dtype=torch.float64))

    def merged(self, rows: torch.Tensor) -> "RunningSquares":
        """These statistics with `rows` [n, d] added (exact: a count-weighted mean of means)."""
        rows = rows.to(torch.float64)
        n = rows.shape[0]
        if n == 0:
            return self
        total = self.count + n
        mean = self.mean_square * (self.count / total) + (rows * rows).sum(0) / total
        return RunningSquares(total, mean)

    def rms(self, prior: int = 0) -> torch.Tensor:
        """Per-feature RMS, shrunk toward the all-feature mean as if `prior` rows had shown it.

        A few hundred keys say little about a rare feature of 1536: unshrunk, a feature the
        edits barely touched gets a tiny scale, and dividing by it lets the update read that
        feature hugely on every other input (general-text perplexity 22 -> 3,000 after two edits).
        """
        mean = self.mean_square.mean()
        shrunk = (self.mean_square * self.count + mean * prior) / max(self.count + prior, 1)
        return (shrunk + EPS).sqrt()


@dataclass(frozen=True)
class KeySum:
    """``Σ kkᵀ`` over the edit keys of earlier turns: the keys themselves while they are fewer
    than d_k (an artifact of a few edits stays small), then the dense [d_k, d_k] sum."""

    rows: torch.Tensor | None = None  # [r, d_k], r < d_k
    gram: torch.Tensor | None = None  # [d_k, d_k]

    def added(self, keys: torch.Tensor) -> "KeySum":
        keys = keys.to(torch.float64)
        if self.gram is None:
            rows = keys if self.rows is None else torch.cat([self.rows.to(torch.float64), keys])
            if rows.shape[0] < rows.shape[1]:
                return KeySum(rows=rows)
            return KeySum(gram=rows.T @ rows)
        return KeySum(gram=self.gram.to(torch.float64) + keys.T @ keys)

    def dense(self) -> torch.Tensor:
        """The [d_k, d_k] sum, float64."""
        if self.gram is not None:
            return self.gram.to(torch.float64)
        rows = self.rows.to(torch.float64)
        return rows.T @ rows


@dataclass
class LifelongNorm:
    """What `--on` carries, per edited layer: running squares of the keys and of the value
    gradients, and (with `history_weight`) the sum of the earlier turns' edit keys."""

    keys: dict[int, RunningSquares] = field(default_factory=dict)
    grads: dict[int, RunningSquares] = field(default_factory=dict)
    history: dict[int, KeySum] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """For safetensors: `keys.<layer>` and `grads.<layer>` mean squares and their counts;
        `history.<layer>.rows` or `.gram` (float32: the solve adds it to a float64 system)."""
        found = {}
        for kind, table in (("keys", self.keys), ("grads", self.grads)):
            for layer, stats in table.items():
                found[f"{kind}.{layer}.mean_square"] = stats.mean_square.contiguous()
                found[f"{kind}.{layer}.count"] = torch.tensor([stats.count], dtype=torch.long)
        for layer, summed in self.history.items():
            part, tensor = ("gram", summed.gram) if summed.gram is not None else ("rows", summed.rows)
            found[f"history.{layer}.{part}"] = tensor.to(torch.float32).contiguous()
        return found

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "LifelongNorm":
        norm = cls()
        for name, tensor in tensors.items():
            kind, layer, part = name.split(".")
            if part == "mean_square":
                count = int(tensors[f"{kind}.{layer}.count"][0])
                getattr(norm, kind)[int(layer)] = RunningSquares(count, tensor.to(torch.float64))
            elif kind == "history":
                norm.history[int(layer)] = KeySum(**{part: tensor.to(torch.float64)})
        return norm


@dataclass(frozen=True)
class Row:
    """One key of a turn: text `text` at token `position`; `answer` when it predicts an answer token."""

    text: int
    position: int
    answer: bool


def key_rows(texts: Sequence[KeyedText], *, context: bool = False) -> list[Row]:
    """The rows a turn reads, in text order: each text's answer-predicting positions and, with
    `context`, the prompt positions before them whose context no text of another source shares.

    A position whose whole prefix appears in texts of two sources (a chat template's system
    turn, a relation that opens its prompt) has one key and two different wishes: it is left
    out, so the update never moves every chat turn or every prompt of a relation alike.
    """
    owners: dict[tuple[int, ...], set[str]] = {}
    if context:
        for t in texts:
            for p in range(t.positions[0]):
                owners.setdefault(tuple(t.ids[: p + 1]), set()).add(t.source)
    rows = []
    for i, t in enumerate(texts):
        if context:
            rows += [Row(i, p, False) for p in range(t.positions[0]) if len(owners[tuple(t.ids[: p + 1])]) == 1]
        rows += [Row(i, p, True) for p in t.positions]
    return rows


MIN_SHARED = 4  # a shared prefix shorter than this is not worth a cache


def _shared_prefix(chunk: Sequence[KeyedText], first: Sequence[int]) -> int:
    """Tokens every text of `chunk` opens with and no row reads (computed once, as a KV cache)."""
    width = min(first + [len(t.ids) - 1 for t in chunk])
    ids = [t.ids for t in chunk]
    shared = 0
    while shared < width and all(s[shared] == ids[0][shared] for s in ids):
        shared += 1
    return shared if shared >= MIN_SHARED and len(chunk) > 1 else 0


def edit_features(model, tokenizer, texts: Sequence[KeyedText], layers: Sequence[int], *,
                  with_grads: bool = True, batch_size: int = 32, rows: Sequence[Row] | None = None,
                  replay: dict | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Keys [rows, d_k] (and NLL gradients [rows, d_v]) at each text's `rows` (default: its
    answer-predicting positions), in the order of `rows`.

    Each text's loss is its answer's mean NLL and the batch loss is their sum, so a row's
    gradient is the same alone or in any batch.  The model's weights get no gradient and are
    never changed.  Float64 on CPU.

    Cost (docs/methods/ultraedit.md#cost): texts are batched by length, so batches carry little
    padding; a prefix that every text of a batch shares (the chat template's system turn) runs
    once, as a KV cache the batch continues; the output head runs only at the answer positions;
    without gradients the pass stops at the deepest layer.  `replay` (a dict, with gradients):
    the first call records each batch's output of the block below the lowest edited layer in
    it, a later call with the same texts and rows replays it, so the blocks below run once for
    every pass (the deltas of a pass sit at or above that layer and cannot change them).
    """
    rows = list(rows) if rows is not None else key_rows(texts)
    layout = layout_for(model)
    paths = [layout.mlp_out_at(layer) for layer in layers]
    head_w, head_b = output_head(model)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    device = head_w.device
    by_text: dict[int, list[int]] = {}
    for r, row in enumerate(rows):
        by_text.setdefault(row.text, []).append(r)
    order = sorted(by_text, key=lambda i: (len(texts[i].ids), i))
    below = blocks_below(model, layout.mlp_out_at(min(layers))) if with_grads and replay is not None else []
    keys = {p: [None] * len(rows) for p in paths}
    grads = {p: [None] * len(rows) for p in paths}
    with frozen(model):
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            chunk = [texts[i] for i in chosen]
            picked = [r for i in chosen for r in by_text[i]]
            shared = _shared_prefix(chunk, [min(rows[r].position for r in by_text[i]) for i in chosen]) if with_grads else 0
            ids, mask = right_pad([list(t.ids[shared:]) for t in chunk], pad_id(tokenizer))
            at_row = torch.tensor([b for b, i in enumerate(chosen) for _ in by_text[i]], device=device)
            at_col = torch.tensor([rows[r].position - shared for r in picked], device=device)
            outputs: dict[str, torch.Tensor] = {}
            handles = [module_at(model, p).register_forward_hook(_keep_output(outputs, p)) for p in paths] if with_grads else []
            try:
                # The shared prefix runs whole (its cache above the edited layers moves with a pass's deltas).
                extra = _prefix_cache(model, chunk[0].ids[:shared], len(chunk), device) if shared else {}
                recorded = replay.get(start) if below else None
                with record_inputs(model, paths) as seen, torch.set_grad_enabled(with_grads), \
                        raw_outputs(model, below[-1:] if below and recorded is None else []) as top_below, \
                        replaying(model, below, recorded):
                    if not with_grads:
                        with stop_after(model, paths[-1]):
                            model(input_ids=ids.to(device), attention_mask=mask.to(device))
                    else:
                        if shared:
                            mask = torch.cat([torch.ones(len(chunk), shared, dtype=mask.dtype), mask], 1)
                        hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                                  **extra).last_hidden_state
                        answers = [r for r in picked if rows[r].answer]
                        where = [k for k, r in enumerate(picked) if rows[r].answer]
                        at = hidden[at_row[where], at_col[where]]  # [answer rows, d_model]
                        labels = torch.tensor([texts[rows[r].text].labels[texts[rows[r].text].positions.index(rows[r].position)]
                                               for r in answers], device=device)
                        logp = torch.log_softmax(head_logits(at, head_w, head_b, softcap), -1)
                        nll = -logp.gather(1, labels[:, None]).squeeze(1)
                        weight = torch.tensor([1.0 / len(texts[rows[r].text].positions) for r in answers], device=device)
                        found = torch.autograd.grad((nll * weight).sum(), [outputs[p] for p in paths])
                        if below and recorded is None:
                            replay[start] = top_below[-1]
            finally:
                for handle in handles:
                    handle.remove()
            for k, p in enumerate(paths):
                got = seen[p].detach()[at_row.to(seen[p].device), at_col.to(seen[p].device)].to("cpu", torch.float64)
                g = found[k][at_row.to(found[k].device), at_col.to(found[k].device)].to("cpu", torch.float64) if with_grads else None
                for j, r in enumerate(picked):
                    keys[p][r] = got[j]
                    if with_grads:
                        grads[p][r] = g[j]
    return {layer: (torch.stack(keys[p]) if rows else torch.zeros(0, 0, dtype=torch.float64),
                    (torch.stack(grads[p]) if rows else None) if with_grads else None)
            for layer, p in zip(layers, paths)}


def _prefix_cache(model, prefix: Sequence[int], batch: int, device) -> dict:
    """The KV cache of `prefix`, repeated for a batch of `batch` texts that continue it."""
    from editspec.model.kvcache import cache_kwarg, output_cache

    with torch.no_grad():
        out = model.base_model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True)
    cache = output_cache(out)
    cache.batch_repeat_interleave(batch)
    return {cache_kwarg(model.base_model): cache}


def _keep_output(outputs: dict, path: str):
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if not hidden.requires_grad:  # nothing below needs a gradient: make it a leaf that does
            hidden.requires_grad_(True)
        outputs[path] = hidden

    return hook


def ultraedit_update(keys: torch.Tensor, values: torch.Tensor, preserved: torch.Tensor | None,
                     key_scale: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(left [d_v, n], right [n, d_k])`` of the ridge update that maps keys to values.

    `keys` [n, d_k] are mapped to `values` [n, d_v], `preserved` keys [m, d_k] to zero, all
    measured after dividing by `key_scale` [d_k]; λ is `ridge` × their mean squared norm.
    Float64.  With λ → 0 and independent keys, ``left @ right @ k_i = v_i`` exactly.
    """
    scale = key_scale.to(torch.float64)
    rows = keys.to(torch.float64) if preserved is None else torch.cat([keys, preserved]).to(torch.float64)
    k = rows / scale  # [n + m, d_k]
    gram = k @ k.T
    lam = ridge * float(gram.diagonal().mean().clamp(min=EPS))
    solved = torch.linalg.solve(gram + lam * torch.eye(len(k), dtype=torch.float64), k)  # [n + m, d_k]
    right = solved[: keys.shape[0]] / scale  # back to raw keys: ΔW k = ΔW̃ (k / scale)
    return values.to(torch.float64).T.contiguous(), right.contiguous()


def stats_update(keys: torch.Tensor, values: torch.Tensor, preserved: torch.Tensor | None,
                 moment: torch.Tensor, weight: float, history: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(left [d_v, n], right [n, d_k])`` of the update that maps `keys` [n, d_k] to
    `values` [n, d_v] at the least cost to general text:

        ΔW = Vᵀ K (KᵀK + PᵀP + H + weight·C)⁻¹

    `moment` C = E[kkᵀ] of the unedited model's keys on general text, `weight` how many such
    tokens it stands for; `preserved` keys [m, d_k] pinned like those tokens; `history` H
    [d_k, d_k] the (weighted) sum of earlier turns' edit keys, pinned alike, so this turn keeps
    what they wrote.  MEMIT's solve for one layer, with UltraEdit's one-step values.  Float64;
    a [d_k, d_k] system, however many keys.  With weight → 0 and independent keys,
    ``left @ right @ k_i = v_i`` exactly.
    """
    return least_squares_update(keys, values, moment, weight, preserved, history)


def stats_update_dense(keys: torch.Tensor, values: torch.Tensor, preserved: torch.Tensor | None,
                       moment: torch.Tensor, weight: float, factor: torch.Tensor | None = None,
                       history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`stats_update`'s ΔW [d_v, d_k] itself, and the Cholesky factor of its system (to reuse).

    The same least-squares update, solved for ``(KᵀK + PᵀP + weight·C) X = KᵀV`` with d_v
    right-hand sides instead of n, on the Cholesky factor of the symmetric positive definite
    system: cheaper than the factors once the rows n outnumber d_v (a turn of 100 CounterFact
    edits has about 2,200 rows per layer against d_v = 576), and the factors would be merged
    into the dense update anyway (docs/methods/ultraedit.md#cost).  `factor`: a Cholesky
    factor of this same system, when the keys are the ones it was made from; `history` as in
    `stats_update`.  Float64.
    """
    k = keys.to(torch.float64)
    if factor is None:
        system = weight * moment.to(torch.float64) + k.T @ k
        if preserved is not None and preserved.numel():
            p = preserved.to(torch.float64)
            system = system + p.T @ p
        if history is not None:
            system = system + history.to(torch.float64)
        factor = torch.linalg.cholesky(system)
    solved = torch.cholesky_solve(k.T @ values.to(torch.float64), factor)  # [d_k, d_v]
    return solved.T.contiguous(), factor


def ultraedit_deltas(model, tokenizer, texts: Sequence[KeyedText], keep: Sequence[KeyedText],
                     config: UltraEditConfig = UltraEditConfig(), norm: LifelongNorm | None = None,
                     stats: dict[int, torch.Tensor] | None = None,
                     ) -> tuple[list[Delta], LifelongNorm, list[dict]]:
    """This turn's deltas (one per layer and pass), the updated normalisation, per-layer logs.

    `texts` are the edits' teacher-forced prompts; `keep` texts whose keys must map to nothing.
    `stats` the unedited model's key second moments by layer, needed when `config.mom2_weight`
    is above 0.  The model is left as it was.
    """
    layout = layout_for(model)
    layers = list(config.layers)
    count = layout.num_layers(model)
    if layers[-1] >= count:
        from editspec.errors import EditspecError
        raise EditspecError(f"layer {layers[-1]} does not exist: the model has {count} layers (0..{count - 1})")
    if config.mom2_weight > 0 and (stats is None or any(layer not in stats for layer in layers)):
        raise ValueError("mom2_weight > 0 needs the key statistics of every edited layer")
    norm = norm or LifelongNorm()
    norm = LifelongNorm(dict(norm.keys), dict(norm.grads), dict(norm.history))
    history = config.history_weight > 0 and config.mom2_weight > 0  # the ridge solve keeps no history
    pinned = {layer: config.history_weight * norm.history[layer].dense() for layer in layers
              if history and layer in norm.history}
    kept = edit_features(model, tokenizer, keep, layers, with_grads=False, batch_size=config.batch_size) \
        if keep and config.preserve_keep else {}
    rows = key_rows(texts, context=config.context_rows)
    deltas, handles, logs = [], [], []
    factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (keys, Cholesky factor) of the last pass
    replay: dict = {}  # the blocks below the edited layers, recorded in pass 1 for the later passes
    try:
        for turn in range(config.passes):
            features = edit_features(model, tokenizer, texts, layers, batch_size=config.batch_size, rows=rows,
                                     replay=replay if config.passes > 1 else None)
            if turn == 0:  # each edit (and kept key) counts once in the lifelong statistics
                for layer, (k, g) in features.items():
                    d_k, d_v = k.shape[1], g.shape[1]
                    extra = kept[layer][0] if layer in kept else k[:0]
                    norm.keys[layer] = norm.keys.get(layer, RunningSquares.empty(d_k)).merged(torch.cat([k, extra]))
                    norm.grads[layer] = norm.grads.get(layer, RunningSquares.empty(d_v)).merged(g)
            stage = []
            for layer, (k, g) in features.items():
                values = -config.step * g / norm.grads[layer].rms(config.prior_rows)
                preserved = kept[layer][0] if layer in kept else None
                if config.mom2_weight > 0:
                    if preserved is not None:
                        preserved = preserved * config.keep_weight ** 0.5
                    if k.shape[0] > g.shape[1]:  # more rows than d_v: solve for the dense update
                        known = factors.get(layer)
                        same = known is not None and known[0].shape == k.shape and torch.equal(known[0], k)
                        right, factor = stats_update_dense(k, values, preserved, stats[layer], config.mom2_weight,
                                                           known[1] if same else None, pinned.get(layer))
                        factors[layer] = (k, factor)  # a later pass with the same keys (the first layer) reuses it
                        left = torch.eye(right.shape[0], dtype=torch.float64)
                    else:
                        left, right = stats_update(k, values, preserved, stats[layer], config.mom2_weight,
                                                   pinned.get(layer))
                else:
                    left, right = ultraedit_update(k, values, preserved, norm.keys[layer].rms(config.prior_rows),
                                                   config.ridge)
                path = layout.mlp_out_at(layer)
                dtype = torch.float64 if value_weight(module_at(model, path)).dtype == torch.float64 else torch.float32
                delta = Delta(path, left.to(dtype), right.to(dtype))
                stage.append(delta)
                dense = delta.dense(torch.float32)  # for the log only
                logs.append({"layer": layer, "pass": turn + 1, "keys": int(k.shape[0]),
                             "answer_keys": sum(r.answer for r in rows),
                             "preserved": int(kept[layer][0].shape[0]) if layer in kept else 0,
                             "history": layer in pinned,
                             "value_norm": float(values.norm(dim=1).mean()), "delta_norm": float(dense.norm()),
                             "fit": float((k.float() @ dense.T - values.float()).norm() / values.float().norm().clamp(min=EPS))})
            deltas += stage
            if turn + 1 == config.passes and history:
                # This turn's keys, as the last pass read them, join what later turns keep in place.
                for layer, (k, _) in features.items():
                    norm.history[layer] = norm.history.get(layer, KeySum()).added(k)
            if turn + 1 < config.passes:
                handles.append(apply_deltas(model, stage))
    finally:
        for handle in reversed(handles):
            handle.revert()
    return deltas, norm, logs
