"""A black-box plugin: the edit memory, the scope router and the prompt template, on disk and live.

`plugin/` inside an `ike` or `retrieval` artifact holds:

```
memory.jsonl             one record per edit (new fact, prompts, keep facts)
embeddings.safetensors   MiniLM embeddings of each edit's key prompts
router.json              kind, threshold τ, mention bonus, top-k, calibration figures
template.jinja           the Jinja2 prompt template (default or the user's)
```

`Plugin.rewrite_chat` / `rewrite_completion` take an OpenAI request body and return the body
to send upstream, or None when no edit applies: the caller then sends the original bytes.
An `ike` plugin with `chat_turns` gives chat requests its demonstrations as earlier turns
(`Plugin.chat_exchange`) instead of one rewritten user message.

>>> plugin = load_plugin("build/leadership.retrieval")             # doctest: +SKIP
>>> plugin.rewrite_completion({"model": "m", "prompt": "Twitter's CEO is"})["prompt"][:10]  # doctest: +SKIP
'Please ack'
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from editspec.families.plugin import demos
from editspec.families.plugin.memory import EditMemory
from editspec.families.plugin.prompts import TEMPLATE_FILE, ike_chat_user, render
from editspec.families.plugin.router import Match, ScopeRouter, calibration_scores, query_vectors, youden_threshold
from editspec.errors import EditspecError

ROUTER_FILE = "router.json"
KINDS = ("ike", "retrieval")


@dataclass
class Plugin:
    """A loaded plugin; thread-safe for concurrent requests (the embedder serialises itself)."""

    kind: str
    memory: EditMemory
    router: ScopeRouter
    template: str
    top_k: int
    demonstrations: int
    seed: int
    embedder: Any
    chat_turns: bool = False   # ike: chat requests get the demonstrations as earlier turns

    # -- deciding and rendering ----------------------------------------------------------
    def route(self, text: str, vectors: np.ndarray | None = None) -> tuple[list[Match], np.ndarray | None]:
        """The edits that apply to `text` (best first, at most `top_k`) and every record's score.

        `vectors` are `query_vectors(embedder, [text])[0]` when the caller already has them.
        """
        if not self.may_apply(text):
            return [], None
        vectors = query_vectors(self.embedder, [text], fast=True)[0] if vectors is None else vectors
        scores, mentioned = self.router.scores(vectors, text)
        return self.router.matches(scores, mentioned, self.top_k), scores

    def may_apply(self, text: str) -> bool:
        """Whether an edit could apply to `text` at all; False means `route` finds nothing
        without embedding it (no edits, a blank text, or one that names no edited subject while
        the threshold needs the mention bonus: `ScopeRouter.can_match`)."""
        return bool(len(self.memory)) and bool(text.strip()) and self.router.can_match(text)

    def augment(self, text: str, vectors: np.ndarray | None = None) -> tuple[str, list[Match]] | None:
        """The prompt that carries the applicable edits for `text`, or None when none applies.

        >>> plugin.augment("The capital of France is")     # doctest: +SKIP
        """
        matches, scores = self.route(text, vectors)
        if not matches:
            return None
        records = self.memory.records
        if self.kind == "retrieval":
            prompt = render(self.template, query=text, facts=[records[m.record]["fact"] for m in matches],
                            records=[records[m.record] for m in matches])
        else:
            primary, shown = self._demonstrations(text, matches, scores)
            prompt = render(self.template, query=text, fact=primary["fact"], demonstrations=shown,
                            facts=[records[m.record]["fact"] for m in matches])
        return prompt, matches

    def _demonstrations(self, text: str, matches: Sequence[Match], scores: np.ndarray) -> tuple[dict, list[dict]]:
        """IKE: the applying edit's record and the demonstrations shown for `text`, nearest last,
        ending with that edit's own copy demonstration (seeded by the plugin seed and `text`)."""
        records = self.memory.records
        primary = records[matches[0].record]
        ranked = np.argsort(-scores, kind="stable")[:self.demonstrations].tolist()
        shown = demos.demonstrations(records, ranked, count=self.demonstrations, seed=self.seed, query=text)
        shown.append(demos.copy_demonstration(primary))
        return primary, shown

    def chat_exchange(self, text: str, vectors: np.ndarray | None = None) -> tuple[list[dict], list[Match]] | None:
        """IKE for chat: the demonstrations as exchanges, then the last user turn, or None when
        no edit applies to `text`.

        Each demonstration is a user turn (its fact, then its prompt) and an assistant turn (its
        answer), least similar first; the last user turn carries the applying edit's fact and
        `text`.  The same demonstrations, in the same order, as `augment` renders for completions.
        """
        matches, scores = self.route(text, vectors)
        if not matches:
            return None
        primary, shown = self._demonstrations(text, matches, scores)
        turns: list[dict] = []
        for d in shown:
            turns += [{"role": "user", "content": ike_chat_user(d["fact"], d["prompt"])},
                      {"role": "assistant", "content": d["answer"]}]
        turns.append({"role": "user", "content": ike_chat_user(primary["fact"], text)})
        return turns, matches

    def edit_ids(self, matches: Sequence[Match]) -> list[str]:
        return [self.memory.records[m.record]["id"] for m in matches]

    # -- OpenAI request bodies -----------------------------------------------------------
    def routed_text(self, body: dict, chat: bool) -> str | None:
        """The one text a request is routed by (the last user message, or a single string
        prompt), so a server can embed many requests' texts in one batch; None otherwise."""
        if not chat:
            prompt = body.get("prompt")
            return prompt if isinstance(prompt, str) else None
        messages = body.get("messages")
        last = _last_user(messages) if isinstance(messages, list) else None
        return None if last is None else message_text(messages[last].get("content"))

    def rewrite_completion(self, body: dict, vectors: np.ndarray | None = None) -> tuple[dict, list[str]] | None:
        """The completions body with each in-scope prompt rewritten, and the edit ids applied.

        `vectors`: `query_vectors` of a single string prompt, when the caller has them.
        """
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return None  # token-id prompts cannot be routed by text: sent as they are
        applied: list[str] = []
        changed = list(prompts)
        for index, text in enumerate(prompts):
            found = self.augment(text, vectors if isinstance(prompt, str) else None)
            if found:
                changed[index] = found[0]
                applied += [i for i in self.edit_ids(found[1]) if i not in applied]
        if not applied:
            return None
        new = dict(body)
        new["prompt"] = changed[0] if isinstance(prompt, str) else changed
        return new, applied

    def rewrite_chat(self, body: dict, vectors: np.ndarray | None = None) -> tuple[dict, list[str]] | None:
        """The chat body with its last user message rewritten when an edit applies to it.

        For `ike` with `chat_turns`, that message is replaced by the demonstration exchanges and
        a last user turn (`chat_exchange`); the messages before it (system prompt, the caller's
        own history) come first, unchanged.  `vectors`: `query_vectors` of that message's text,
        when the caller has them.
        """
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        last = _last_user(messages)
        if last is None:
            return None
        text = message_text(messages[last].get("content"))
        if text is None:
            return None
        if self.kind == "ike" and self.chat_turns:
            found = self.chat_exchange(text, vectors)
        else:
            found = self.augment(text, vectors)
            found = found and ([{"content": found[0]}], found[1])
        if not found:
            return None
        turns, matches = found
        new = dict(body)
        new["messages"] = copy.deepcopy(messages)
        # The caller's own message keeps its other fields (role, a name); only its content changes.
        turns[-1] = dict(new["messages"][last], content=turns[-1]["content"])
        new["messages"][last:last + 1] = turns
        return new, self.edit_ids(matches)


def _last_user(messages: list) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1)
                 if isinstance(messages[i], dict) and messages[i].get("role") == "user"), None)


def message_text(content: Any) -> str | None:
    """The text of a chat message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(content):
            return "\n".join(parts)
    return None  # images or other parts: not routed, sent unchanged


# -- writing and reading ------------------------------------------------------------------

def write_plugin(folder: Path, *, kind: str, records: Sequence[dict], template: str, embedder,
                 threshold: float | None, default_threshold: float, mention_bonus: float, top_k: int,
                 demonstrations: int, seed: int, chat_turns: bool = False) -> dict:
    """Embed `records`, calibrate the router and write the plugin files; returns router.json's data."""
    memory = EditMemory.from_records(records, embedder)
    positives, negatives = calibration_scores(memory, embedder, mention_bonus=mention_bonus)
    tau = threshold if threshold is not None else youden_threshold(positives, negatives, default_threshold)
    settings = {
        "kind": kind, "threshold": tau, "threshold_source": "setting" if threshold is not None else
        ("calibrated" if positives and negatives else "default"),
        "mention_bonus": mention_bonus, "top_k": top_k, "demonstrations": demonstrations, "seed": seed,
        "chat_turns": chat_turns,
        "embedder": embedder.name,
        "calibration": {"positives": len(positives), "negatives": len(negatives),
                        "hit_rate": _rate(positives, tau), "false_positive_rate": _rate(negatives, tau)},
    }
    memory.save(folder)
    (folder / TEMPLATE_FILE).write_text(template, encoding="utf-8", newline="\n")
    (folder / ROUTER_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return settings


def _rate(scores: Sequence[float], tau: float) -> float | None:
    return round(sum(s >= tau for s in scores) / len(scores), 4) if scores else None


def load_plugin(artifact: Any, *, embedder=None) -> Plugin:
    """The plugin of an `ike` or `retrieval` artifact (a path or an `Artifact`).

    >>> load_plugin("build/leadership.ike").kind       # doctest: +SKIP
    'ike'
    """
    from editspec.build.artifact import PLUGIN_DIR

    if isinstance(artifact, Plugin):
        return artifact
    return open_plugin(plugin_artifact(artifact).file(PLUGIN_DIR), embedder=embedder)


def plugin_artifact(artifact: Any):
    """The `Artifact` at `artifact` (a path or an `Artifact`), refused unless it holds a plugin.

    Cheap (reads the manifest only), so a server can refuse a wrong artifact before it loads.
    """
    from editspec.build.artifact import read_artifact

    artifact = read_artifact(artifact) if isinstance(artifact, (str, os.PathLike)) else artifact
    if artifact.backend not in KINDS:
        raise EditspecError(f"{artifact.path} was compiled with `{artifact.backend}`, a white-box backend",
                            hint="compile with `--backend ike` or `--backend retrieval` for API models, "
                            "or use `editspec apply` for a local model")
    return artifact


def open_plugin(folder: Path, *, embedder=None) -> Plugin:
    """The plugin stored in a `plugin/` folder (`load_plugin` checks the artifact first).

    `embedder` must be the one the plugin was compiled with; default: MiniLM.
    """
    settings = json.loads((folder / ROUTER_FILE).read_text(encoding="utf-8"))
    memory = EditMemory.load(folder)
    if embedder is None:
        from editspec.model.embed import load_embedder

        embedder = load_embedder()
    router = ScopeRouter(memory, threshold=settings["threshold"], mention_bonus=settings["mention_bonus"])
    return Plugin(kind=settings["kind"], memory=memory, router=router,
                  template=(folder / TEMPLATE_FILE).read_text(encoding="utf-8"), top_k=settings["top_k"],
                  demonstrations=settings["demonstrations"], seed=settings["seed"], embedder=embedder,
                  # artifacts compiled before the setting existed rewrite the last user message
                  chat_turns=settings.get("chat_turns", False))
