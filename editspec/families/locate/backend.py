"""The backend classes ROME, MEMIT, AlphaEdit (and UltraEdit) share: spec edits in, low-rank deltas out.

Each method only says which layers need statistics and how to turn requests into deltas;
everything else lives here once: edit → request (with diagnostics at the spec line),
statistics and context templates from the unedited model, the `delta.safetensors` payload
(earlier stages first, for `--on`), and attaching an artifact to a model reversibly.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from editspec.build.artifact import DELTAS, Artifact
from editspec.build.backend import Backend, Capabilities, CompileJob, CompileResult
from editspec.model.deltas import AppliedDeltas, apply_deltas, load_deltas, save_deltas
from editspec.errors import EditspecError, error_at
from editspec.ir import Edit

from .common import EditResult
from .requests import EditRequest

# Per-fact numbers worth keeping in the manifest (tensors and subjects are left out).
_LOGGED = ("layer", "denominator", "delta_norm", "loss", "nll", "steps", "final_loss")


class DeltaBackend(Backend):
    """Base of every backend whose payload is low-rank weight deltas (`delta.safetensors`).

    Each compile appends its stage's deltas after the previous artifact's (for `--on`), and
    attaching applies them all in order, reversibly and bit-exactly.
    """

    capabilities = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)

    def save_stage(self, job: CompileJob, deltas: Sequence) -> None:
        """Write the previous artifact's deltas (if any), then `deltas`, to the workdir's payload."""
        earlier = load_deltas(job.previous.file(DELTAS))[0] if job.previous is not None else []
        save_deltas([*earlier, *deltas], job.workdir / DELTAS, metadata={"backend": self.name})

    def attach(self, model, artifact: Artifact) -> AppliedDeltas:
        deltas, _ = load_deltas(artifact.file(DELTAS))
        return apply_deltas(model, deltas)


class LocateBackend(DeltaBackend):
    """Base of the locate-then-edit backends; subclasses set `stats_layers` and `edit`."""

    def stats_layers(self, config, model) -> list[int]:
        """The layers whose second moments C the method reads."""
        raise NotImplementedError

    def edit(self, job: CompileJob, requests: Sequence[EditRequest]) -> EditResult:
        """The deltas for `requests` on `job.model` (with any previous artifact attached)."""
        raise NotImplementedError

    # -- shared machinery --------------------------------------------------------------------
    def prepare(self, job: CompileJob) -> dict[str, Any]:
        from editspec.model.chat import chat_enabled
        from editspec.model.stats import second_moments

        loaded, config = job.model, job.config
        layers = self.stats_layers(config, loaded.model)
        job.progress(f"second-moment statistics for layer(s) {', '.join(map(str, layers))}")
        stats = second_moments(loaded, layers=layers, samples=config.mom2_samples, corpus=config.mom2_corpus)
        share = config.mom2_chat
        if share and chat_enabled(loaded.tokenizer, config.chat):
            job.progress(f"chat-form statistics ({share:g} of C) for layer(s) {', '.join(map(str, layers))}")
            chat_documents = chat_corpus(loaded.tokenizer, config.mom2_corpus, config.mom2_samples)
            chat = second_moments(loaded, layers=layers, samples=len(chat_documents), corpus=chat_documents)
            stats = {layer: (1 - share) * stats[layer] + share * chat[layer] for layer in layers}
        templates = sampled_templates(loaded, config.context_template_counts, config.template_seed)
        return {"stats": stats, "templates": templates}

    def compile(self, job: CompileJob) -> CompileResult:
        requests = edit_requests(job.edits, job.model.tokenizer)
        job.progress(f"computing {self.name} updates for {len(requests)} edit(s)")
        result = self.edit(job, requests)
        self.save_stage(job, result.deltas)
        return CompileResult(files=[DELTAS, *self.extra_files(job)], edits=_edit_logs(job.edits, result),
                             details={"layers": [_plain(log) for log in result.layers]})

    def extra_files(self, job: CompileJob) -> list[str]:
        """Payload files besides the deltas that `edit` wrote into the workdir."""
        return []

    def held_keep(self, job: CompileJob) -> dict[str, Any]:
        """The spec's keep facts for the update to hold in place, as ``keep`` (`keep_texts`) and
        ``keep_share`` (`keep_share`) arguments; no texts when the config's `preserve_keep` is off
        (or the method has no such setting)."""
        from editspec.model.chat import chat_enabled

        config, tokenizer = job.config, job.model.tokenizer
        if not getattr(config, "preserve_keep", False):
            return {"keep": None, "keep_share": 1.0}
        chat = chat_enabled(tokenizer, config.chat)
        reply_tokens = getattr(config, "keep_reply_tokens", 0) if chat else 0
        if reply_tokens:
            job.progress(f"{self.name}: the unedited model's chat replies to the keep questions (up to {reply_tokens} tokens)")
        keep = keep_texts(job.edits, job.spec.relations, tokenizer, chat=chat,
                          replies=_reply_reader(job.model.model, tokenizer, reply_tokens) if reply_tokens else None,
                          reply_weight=getattr(config, "keep_reply_weight", 1.0))
        share = keep_share(job.edits)
        job.progress(f"{self.name}: {len(keep)} keep text(s) held in place"
                     + (f", each at {share:.3g} of keep_weight (more keep facts than edits)" if share < 1 else ""))
        return {"keep": keep, "keep_share": share}


def keep_share(edits: Sequence[Edit]) -> float:
    """The fraction of `keep_weight` each kept key counts: 1 while the edits have at most one keep
    fact each, else edits / keep facts, so the keep facts together weigh what one per edit would.

    Held keys add to the solve's preserved moment; ten keep facts an edit at full weight (CounterFact's
    neighbourhoods) outweigh the edits themselves (docs/methods/locate.md#keep-facts-held).
    """
    facts = sum(len(edit.keep) for edit in edits)
    return min(1.0, len(edits) / facts) if facts else 1.0


def chat_corpus(tokenizer, source: str | None, samples: int):
    """The documents raw statistics read (`samples` of `mom2_corpus`, else of the packaged
    corpus), each written as a chat exchange."""
    from editspec.model.chat import chat_conversation
    from editspec.model.corpus import Corpus, load_corpus

    corpus = load_corpus(source)
    return Corpus.from_documents([chat_conversation(tokenizer, d) for d in corpus.sample(samples)],
                                 name=f"{corpus.name} as chat")


def edit_requests(edits: Sequence[Edit], tokenizer) -> list[EditRequest]:
    """One request per edit (its relation's first prompt, and its questions), or an error at the edit's line."""
    from editspec.model.tokens import target_token_ids

    requests = []
    for edit in edits:
        if not edit.prompts:
            raise error_at(edit.span, f"edit `{edit.id}` has no prompt to edit at",
                           hint=f"give relation `{edit.relation}` a `prompt \"... {{subject}} ...\"`: "
                           "locate-then-edit backends edit the subject inside a prompt")
        prompt = edit.prompts[0]
        if edit.subject not in prompt:
            raise error_at(edit.span, f"the subject {edit.subject!r} does not occur in the prompt {prompt!r}",
                           hint=f"relation `{edit.relation}`'s prompt must contain `{{subject}}`")
        try:
            target_token_ids(tokenizer, prompt, edit.target)
            if edit.old:
                target_token_ids(tokenizer, prompt, edit.old)
            requests.append(EditRequest(prompt.replace(edit.subject, "{}", 1), edit.subject, edit.target,
                                        target_true=edit.old, paraphrases=edit.paraphrases,
                                        questions=edit.questions))
        except EditspecError as error:
            raise error_at(edit.span, error.diagnostics[0].message, error.diagnostics[0].hint) from None
    return requests


def keep_texts(edits: Sequence[Edit], relations, tokenizer, *, chat: bool = False,
               replies=None, reply_weight: float = 1.0) -> list[tuple]:
    """The `keep` facts of `edits` as ``(ids, positions)`` texts whose keys an update should leave alone.

    Each keep prompt with its answer, teacher-forced, at every position before the answer's
    last token (every MLP output there reaches the kept answer's prediction); with `chat`, each
    keep question (its relation's `question` templates, else its prompts, as verify asks them)
    as a user turn through the chat template, at every position from the message on (the system
    turn every chat text shares is left out).  `replies`, when given, maps those messages to the
    unedited model's reply ids (`_reply_reader`): each turn is then followed by a text
    ``(turn + reply, the reply's positions, reply_weight)``, so the positions that write the reply
    are held too, each key counting `reply_weight` of a turn's (`keep_reply_tokens`, `keys_at`).
    """
    from editspec.model.chat import chat_questions, user_turn
    from editspec.model.tokens import target_token_ids

    by_name = {r.name: r for r in relations}
    parts: list[list[int] | str] = []  # raw texts (ids) and chat messages, in the order they are held
    for edit in edits:
        for fact in edit.keep:
            for prompt in fact.prompts:
                head = list(tokenizer(prompt.rstrip(), add_special_tokens=True)["input_ids"])
                parts.append(head + target_token_ids(tokenizer, prompt, fact.answer))
            if chat:
                relation = by_name.get(fact.relation) if fact.relation else None
                questions = [q.replace("{subject}", fact.subject) for q in relation.questions] \
                    if relation is not None and fact.subject is not None else []
                parts += [m for m in chat_questions(questions, fact.prompts[0] if fact.prompts else "") if m.strip()]
    messages = list(dict.fromkeys(p for p in parts if isinstance(p, str)))
    said = dict(zip(messages, replies(messages))) if replies is not None and messages else {}
    texts, seen = [], set()
    for part in parts:
        if isinstance(part, str):
            text = user_turn(tokenizer, part)
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            start = min(len(tokenizer(text[: text.rfind(part)], add_special_tokens=False)["input_ids"]), len(ids) - 1)
            _add_text(texts, seen, ids, range(start, len(ids)))
            if said.get(part):
                _add_text(texts, seen, ids + said[part], range(len(ids), len(ids) + len(said[part])), reply_weight)
        else:
            _add_text(texts, seen, part, range(len(part) - 1))
    return texts


def _reply_reader(model, tokenizer, tokens: int):
    """Messages -> `model`'s greedy chat reply ids to each, at most `tokens` of them: the model the
    compile starts from (unedited, or with `--on` the earlier stages attached), as the held keys are
    read on it.  A reply's last position is held too: it says the end of the turn, or the next token."""
    from editspec.model.continuation import chat_replies

    def read(messages):
        return [reply for _, reply, _ in chat_replies(model, tokenizer, messages, max_new_tokens=tokens)]
    return read


def _add_text(texts, seen, ids, positions, weight: float = 1.0):
    key = tuple(ids)
    if key not in seen and len(ids) > 1:
        seen.add(key)
        texts.append((ids, list(positions)) if weight == 1.0 else (ids, list(positions), weight))


def sampled_templates(loaded, counts, seed: int) -> list[list[str]]:
    """Context templates sampled once from the unedited model, cached by its weights hash."""
    from editspec.cache import cache_dir
    from editspec.model.tokens import context_templates

    key = hashlib.sha256(json.dumps([loaded.weights_hash, [list(c) for c in counts], seed]).encode()).hexdigest()
    return context_templates(loaded.model, loaded.tokenizer, counts, seed=seed,
                             cache_file=cache_dir("templates") / f"{key[:32]}.json")


def _edit_logs(edits: Sequence[Edit], result: EditResult) -> list[dict]:
    logs = []
    for position, fact in enumerate(result.facts):
        edit = edits[fact.get("index", position)]
        logs.append({"id": edit.id, **{k: _plain(fact[k]) for k in _LOGGED if k in fact}})
    return logs


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if _plain(v) is not None}
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return None  # tensors and other objects stay out of the manifest
