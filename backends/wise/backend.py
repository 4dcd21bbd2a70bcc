"""The `wise` backend: side memories at one MLP value projection, routed by an activation margin.

Each compile trains the new edits into the current side memory (a delta ΔW of the projection):
the edits are split into shards, each shard trains ΔW in its own random subspace (a mask over
the entries) on its edits' answers, with margin losses that push the activation score
``‖ΔW a‖ / ‖W a‖`` above `edit_margin` at the edits' key positions and below `keep_margin`
on keep facts and reference text; the shards' changes are then merged by TIES.  The keys are
the subject's last token (`key subject`, as ROME keys a fact) or the answer-predicting
positions (`key answer`).  The routing threshold is calibrated on the spec's own prompts: the
one that best separates the edits' keys and their `scope` prompts from keep facts and
reference text (docs/methods/wise.md).

A memory that would pass `edits_per_memory` edits is closed; the next compile starts a new
one, and routing picks the memory with the highest score.  The payload is `wise.safetensors`
(deltas, thresholds, edit counts); `--on` continues it.  Positions that route nowhere run the
unedited computation bit for bit.
"""
from __future__ import annotations

import torch

from editspec.build.artifact import Artifact
from editspec.build.backend import Backend, CompileJob, CompileResult
from editspec.families.memory.codebook import KeyedText, activation_pairs
from editspec.errors import EditspecError
from editspec.model.hooks import _hidden, _with_hidden, blocks_below, raw_outputs, replaying
from editspec.model.layout import module_at, output_head
from editspec.families.memory.backend import (
    HookAttachment, edit_key_targets, edit_keys, per_edit_losses, reference_activations, require_edits, value_projection_at,
)

from .config import CAPABILITIES, WiseConfig
from .memory import SideMemory, best_threshold, load_memory, routing_hook, save_memory, scores, ties_merge

PAYLOAD = "wise.safetensors"
REFERENCE_TOKENS = 128


def wise_layer(model, layer, key: str = "subject") -> str:
    """The value projection WISE keeps its side memory at (`auto`: 27% of the depth keyed at the subject,
    8 of SmolLM2's 30; 75% keyed at the answer, 22 of 30)."""
    return value_projection_at(model, layer, 0.27 if key == "subject" else 0.75)


class WiseBackend(Backend):
    """Edits live in a side copy of one value projection; a margin on its activation routes to it."""

    name = "wise"
    config_class = WiseConfig
    capabilities = CAPABILITIES
    attach_previous = False  # the previous memory is read from its payload and continued

    def compile(self, job: CompileJob) -> CompileResult:
        config: WiseConfig = job.config
        require_edits(job, self.name)
        model, tokenizer = job.model.model, job.model.tokenizer
        path = wise_layer(model, config.layer, config.key)
        keyed = edit_keys(job)
        keys = (_subject_positions(tokenizer, edit_key_targets(job), job.edits, keyed) if config.key == "subject"
                else [k.positions for k in keyed])
        edit_in, edit_out, owner, prefix_in, prefix_out = _key_activations(model, tokenizer, path, keyed, keys)
        if job.previous is not None:
            memory, module = load_memory(job.previous.file(PAYLOAD))
            if module != path:
                raise EditspecError(f"{job.previous.path} keeps its memory at {module}, not {path}",
                                    hint="keep the `layer` of the previous artifact")
        else:
            memory = SideMemory.empty(edit_out.shape[1], edit_in.shape[1])
        current = len(memory) - 1
        if current < 0 or int(memory.edits[current]) + len(job.edits) > config.edits_per_memory:
            current = len(memory)
        base = memory.deltas[current] if current < len(memory) else torch.zeros(edit_out.shape[1], edit_in.shape[1])
        old_in, old_norms = memory.anchors_of(current)  # the continued memory's earlier edits: they must keep routing
        keep, other = _reference(job, path)
        # The edit prompts' own earlier tokens must not route either (unrelated prompts share them).
        negatives = [keep, (torch.cat([other[0], prefix_in]), torch.cat([other[1], prefix_out])) if len(other[0])
                     else (prefix_in, prefix_out)]
        generator = torch.Generator().manual_seed(job.seed)
        order = torch.randperm(len(job.edits), generator=generator).tolist()
        groups = [set(job.edits[i].id for i in order[s::config.shards]) for s in range(config.shards)]
        changes, per_text, steps = [], {}, []
        for s, group in enumerate(g for g in groups if g):
            members = [t for t, text in enumerate(keyed) if text.source in group]
            rows = torch.tensor([r for r, t in enumerate(owner) if t in members])
            mask = (torch.rand(base.shape, generator=generator) < config.density).float()
            job.progress(f"wise: shard {s + 1}/{config.shards}, {len(group)} edit(s)")
            change, losses, taken = train_shard(job, path, [keyed[t] for t in members], base, mask,
                                                torch.cat([edit_in[rows], old_in]),
                                                torch.cat([edit_out[rows].norm(dim=-1), old_norms]), negatives,
                                                keys=[keys[t] for t in members])
            changes.append(change)
            per_text.update({t: loss for t, loss in zip(members, losses)})
            steps.append(taken)
        delta = base + ties_merge(changes, config.merge_density)
        if not bool(torch.isfinite(delta).all()):
            raise EditspecError("the WISE memory became NaN or inf; refusing it", hint="try a smaller `lr`")
        positive = torch.cat([scores(delta, edit_in, edit_out), scores(delta, old_in, old_norms),
                              scores(delta, *_scope_activations(job, path))])
        negative = [scores(delta, *group) for group in negatives]
        threshold = best_threshold(positive, negative, config.leak_cost)
        held = int(memory.edits[current]) if current < len(memory) else 0
        memory.put(current, delta, threshold, held + len(job.edits))
        memory.add_anchors(current, edit_in, edit_out)
        save_memory(job.workdir / PAYLOAD, memory, path)
        edits = per_edit_losses(job, keyed, [per_text[t] for t in range(len(keyed))], memory=current)
        final = scores(delta, edit_in, edit_out)
        return CompileResult(files=[PAYLOAD], edits=edits, details={
            "module": path, "memories": len(memory), "memory": current, "threshold": round(threshold, 6),
            "steps": steps, "edit_routed": round(float((final > threshold).float().mean()), 4),
            "keep_routed": _routed(negative[0], threshold), "reference_routed": _routed(negative[1], threshold)})

    def attach(self, model, artifact: Artifact) -> HookAttachment:
        memory, path = load_memory(artifact.file(PAYLOAD))
        return HookAttachment(model, [module_at(model, path).register_forward_hook(routing_hook(memory))])

    def merged(self, model, artifact: Artifact):
        raise EditspecError("a `wise` artifact routes each input at run time; it cannot be merged into weights",
                            hint="use it with `editspec.load_edited(model, ARTIFACT)`, or compile with `ultraedit` or `memit`")


def _key_activations(model, tokenizer, path, keyed, keys):
    """Projection inputs and outputs at every key position [n, d] (`keys`, per text), each row's text, and
    the inputs and outputs at the prompts' earlier tokens (shared with unrelated prompts: they must not route)."""
    sequences = [k.ids for k in keyed]
    rows_in, rows_out, owner, prefix_in, prefix_out = [], [], [], [], []
    for t, (at, (a, o)) in enumerate(zip(keys, activation_pairs(model, tokenizer, path, sequences))):
        rows_in.append(a[list(at)])
        rows_out.append(o[list(at)])
        owner += [t] * len(at)
        prefix_in.append(a[: at[0]])
        prefix_out.append(o[: at[0]])
    return torch.cat(rows_in), torch.cat(rows_out), owner, torch.cat(prefix_in), torch.cat(prefix_out)


def _subject_positions(tokenizer, targets, edits, keyed) -> list[tuple[int, ...]]:
    """For each keyed text, the position of its subject's last token (the last mention in its prompt);
    a prompt that does not name the subject keeps its answer positions."""
    from editspec.model.chat import user_turn

    subject = {e.id: e.subject for e in edits}
    found = []
    for target, text in zip(targets, keyed):
        prompt = user_turn(tokenizer, target.prompt) if target.chat else target.prompt.rstrip()
        named = _subject_token(tokenizer, prompt, subject.get(target.source), special=not target.chat)
        fits = named is not None and tuple(named[0]) == text.ids[: len(named[0])] and named[1] <= text.positions[0]
        found.append((named[1],) if fits else text.positions)
    return found


def _subject_token(tokenizer, text: str, subject: str | None, special: bool = True) -> tuple[list[int], int] | None:
    """`text`'s ids and the index of the last token of its last mention of `subject` (None: not named)."""
    from editspec.model.tokens import encode_with_subject

    start = text.rfind(subject) if subject else -1
    return encode_with_subject(tokenizer, text, (start, start + len(subject)), special=special) if start >= 0 else None


def _routed(negative: torch.Tensor, threshold: float) -> float | None:
    return round(float((negative > threshold).float().mean()), 4) if len(negative) else None


def _reference(job: CompileJob, path: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Inputs and outputs of text that must not route, in two groups that count apart: (1) the
    positions that predict the new edits' keep answers (the hard ones: a CounterFact neighbour
    shares the edit's relation prompt, and a few such positions would be lost among the many
    tokens of the rest), (2) every other position of the keep facts and of `reference_samples`
    documents of general text (a fixed cost per compile).  The edit prompts' own earlier tokens
    join group 2 in `compile`."""
    config: WiseConfig = job.config
    tokenizer, model = job.model.tokenizer, job.model.model
    encode = lambda text: list(tokenizer(text, add_special_tokens=True)["input_ids"])[:REFERENCE_TOKENS]
    keep_ids, answer_at = [], []
    for edit in job.edits:
        for fact in edit.keep:
            for prompt in fact.prompts:
                ids = encode(f"{prompt.rstrip()} {fact.answer.strip()}")
                first = len(encode(prompt.rstrip())) - 1  # the last prompt token predicts the answer
                if ids and 0 <= first < len(ids) - 1:
                    keep_ids.append(ids)
                    answer_at.append(range(first, len(ids) - 1))
    docs = []
    if config.reference_samples:
        from editspec.model.corpus import load_corpus

        docs = [i for i in map(encode, load_corpus(config.reference_corpus).sample(config.reference_samples)) if i]
    empty = (torch.zeros(0, 1), torch.zeros(0, 1))
    keep, other = ([], []), ([], [])
    if keep_ids:
        for (a, o), at in zip(activation_pairs(model, tokenizer, path, keep_ids), answer_at):
            hard = torch.zeros(len(a), dtype=torch.bool)
            hard[list(at) if config.key == "answer" else slice(None)] = True  # a neighbour's subject must not route
            for group, rows in ((keep, hard), (other, ~hard)):
                group[0].append(a[rows])
                group[1].append(o[rows])
    if docs:
        other[0].extend(reference_activations(model, tokenizer, path, docs, where="input"))
        other[1].extend(reference_activations(model, tokenizer, path, docs, where="output"))
    return tuple((torch.cat(g[0]), torch.cat(g[1])) if g[0] else empty for g in (keep, other))


def _scope_activations(job: CompileJob, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and outputs at the last token of each new edit's `scope` prompts (rephrasings that should route),
    or with `key` subject at the subject's last token where a scope prompt names it."""
    tokenizer, model = job.model.tokenizer, job.model.model
    ids, at = [], []
    for edit in job.edits:
        for prompt in (p.rstrip() for p in edit.scope):
            named = _subject_token(tokenizer, prompt, edit.subject) if job.config.key == "subject" else None
            row, index = named or (tokenizer(prompt, add_special_tokens=True)["input_ids"], -1)
            ids.append(row)
            at.append(index)
    if not ids:
        return torch.zeros(0, 1), torch.zeros(0, 1)
    pairs = activation_pairs(model, tokenizer, path, ids)
    return torch.stack([a[i] for (a, _), i in zip(pairs, at)]), torch.stack([o[i] for (_, o), i in zip(pairs, at)])


def train_shard(job: CompileJob, path: str, keyed: list[KeyedText], base: torch.Tensor, mask: torch.Tensor,
                edit_in, edit_out, negatives: list[tuple[torch.Tensor, torch.Tensor]],
                cache_prefix: bool = True, keys: list[tuple[int, ...]] | None = None) -> tuple[torch.Tensor, list[float], int]:
    """Adam on the masked entries of one shard: its answers' NLL plus the margin losses
    (`edit_in` / `edit_out`: inputs and output norms at positions that must route, the memory's
    earlier edits' anchors among them; `negatives`: groups of inputs and outputs at positions
    that must not, each group's mean hinge counted on its own).

    ΔW is added only at the answer-predicting positions, so every token before a text's first
    one computes the same at every step: those prefixes run once, as a KV cache, and each step
    runs only the rest (`cache_prefix`; False runs whole texts, the same up to float noise).
    The blocks below the memory's layer run once too; later steps replay their recorded output.
    Returns the shard's change to `base`, each text's final NLL and the steps taken.
    """
    from editspec.families.locate import frozen
    from editspec.families.locate.targets import head_logits
    from editspec.model.prefix_cache import SplitRows, prefix_fits
    from editspec.model.tokens import pad_id

    config: WiseConfig = job.config
    model, tokenizer = job.model.model, job.model.tokenizer
    head_w, head_b = output_head(model)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    device = head_w.device
    texts = [list(k.ids) for k in keyed]
    keys = keys if keys is not None else [k.positions for k in keyed]
    cached = cache_prefix and prefix_fits(model, max(len(t) for t in texts))
    split = [min(at[0], k.positions[0]) if cached else 0 for k, at in zip(keyed, keys)]
    layout = SplitRows(texts, split, pad_id(tokenizer))
    rows = torch.tensor([r for r, k in enumerate(keyed) for _ in k.positions])
    cols = torch.tensor([p - split[r] for r, k in enumerate(keyed) for p in k.positions])  # suffix coordinates
    labels = torch.tensor([l for k in keyed for l in k.labels])
    where = torch.zeros(layout.suffix_ids.shape, dtype=torch.bool)
    for r, at in enumerate(keys):
        where[r, [p - split[r] for p in at]] = True
    weight = torch.tensor([1.0 / len(k.positions) for k in keyed for _ in k.positions])
    param = torch.zeros_like(base, requires_grad=True)
    optimizer = torch.optim.Adam([param], lr=config.lr)
    below = blocks_below(model, path)
    recorded = None

    def delta():
        return base + mask * param

    def add_memory(module, args, output):
        hidden = _hidden(output)
        update = args[0].float() @ delta().to(hidden.device).T  # [batch, pos, d_v]
        return _with_hidden(output, hidden + (update * where.to(hidden.device)[..., None]).to(hidden.dtype))

    per_text, steps = [], 0
    with frozen(model):
        kv = layout.prefix_cache(model.base_model, device)
        for steps in range(config.n_iter + 1):
            handle = module_at(model, path).register_forward_hook(add_memory)
            try:
                with raw_outputs(model, below[-1:] if recorded is None else []) as top, replaying(model, below, recorded):
                    hidden = model.base_model(**layout.inputs(kv, model, device)).last_hidden_state
            finally:
                handle.remove()
            if recorded is None and top and isinstance(top[0], torch.Tensor):
                recorded = top[0].detach()
            logp = torch.log_softmax(head_logits(hidden.to(device)[rows.to(device), cols.to(device)], head_w, head_b, softcap), -1)
            nll = -logp.gather(1, labels.to(device)[:, None]).squeeze(1).cpu() * weight
            text_nll = torch.zeros(len(keyed)).index_add(0, rows, nll)
            d = delta()
            margin = torch.relu(config.edit_margin - scores(d, edit_in, edit_out)).mean()
            for group_in, group_out in negatives:
                if len(group_in):
                    margin = margin + torch.relu(scores(d, group_in, group_out) - config.keep_margin).mean()
            per_text = [float(x) for x in text_nll.detach()]
            if steps == config.n_iter or (max(per_text) < config.stop_loss and float(margin.detach()) == 0.0):
                break
            optimizer.zero_grad(set_to_none=True)
            (text_nll.mean() + config.margin_weight * margin).backward()
            optimizer.step()
    return (mask * param).detach(), per_text, steps
