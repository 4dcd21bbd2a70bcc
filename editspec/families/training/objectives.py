"""A spec as training objectives, for the backends that train (ft, sense, grace, melo).

Torch-free: this only decides *what* is trained, from the IR.

| spec | objective |
|---|---|
| `edit r(s) -> o` | `good`: the target after each filled prompt (and `scope` prompts with `scope=True`); with `chat`, also as the reply to each question (else the prompt) as a user turn |
| canonical `example p -> a` | `good` on the example |
| canonical `... over b` | `contrast`: `softplus(NLL(a) - NLL(b))`, the answer beats the contrast |
| `forget { prompt p; never x }` | `bad`: `x` after `p` pushed below a probability threshold |
| edit and canonical `keep` | anchors: KL to the unedited model on `prompt + answer` (`held`: those of edits not trained now); with `chat`, also each keep question as a user turn (`chat_anchors`, `held_chat`) |
| `preserve` texts and files | anchors (KL), and the `budget` the trainer must stay within, watched on a held-out share (`split_preserve`) |

    >>> objectives = spec_objectives(spec, spec.edits)          # doctest: +SKIP
    >>> [t.kind for t in objectives.targets]                    # doctest: +SKIP
    ['good', 'good', 'contrast', 'bad']
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from editspec import ir
from editspec.model.chat import chat_questions
from editspec.errors import EditspecError, error_at

Kind = Literal["good", "bad", "contrast"]


@dataclass(frozen=True)
class Target:
    """One teacher-forced continuation to make likely (`good`), unlikely (`bad`), or beat `foil`."""

    prompt: str
    answer: str
    kind: Kind
    source: str  # the id of the edit, canonical example or erasure it comes from
    foil: str | None = None
    chat: bool = False  # `prompt` is a user message, answered after the chat template's assistant header


@dataclass(frozen=True)
class Objectives:
    """What to train: `targets`; what to hold: `anchors` (KL texts); `preserve` texts and `budget`.

    `anchors` are the keep facts of what this compile trains (its edits, rehearsed edits and
    canonical examples); `held` the keep facts of the spec's other edits, which a sequential
    compile must hold too but which are least at risk from the edits it trains.
    """

    targets: tuple[Target, ...]
    anchors: tuple[str, ...] = ()
    preserve: tuple[str, ...] = ()
    budget: ir.Budget | None = None
    sources: dict[str, str] = field(default_factory=dict)  # source id -> "edit" / "canonical" / "forget"
    held: tuple[str, ...] = ()
    # With `chat`: the keep facts as they are asked in chat (user messages; the unedited model's
    # reply to each is anchored), those of what is trained now and those of the other edits.
    chat_anchors: tuple[str, ...] = ()
    held_chat: tuple[str, ...] = ()


def edit_targets(edit: ir.Edit, *, scope: bool = False, chat: bool = False) -> list[Target]:
    """`good` targets for one edit: its filled prompts (and scope prompts), or an error at its line.

    With `chat`, the edit is also trained as it is asked in chat: each of its questions (else
    its first prompt) as a user message, the target as the start of the reply.

    >>> [t.prompt for t in edit_targets(edit, chat=True)]       # doctest: +SKIP
    ['The CEO of Twitter is', 'Who is the CEO of Twitter?']
    """
    prompts = list(edit.prompts) + (list(edit.scope) if scope else [])
    if not prompts:
        raise error_at(edit.span, f"edit `{edit.id}` has no prompt to train on",
                       hint=f"give relation `{edit.relation}` a `prompt \"... {{subject}} ...\"`, or the edit a `scope`")
    targets = [Target(prompt, edit.target, "good", edit.id) for prompt in dict.fromkeys(prompts)]
    if chat:
        targets += [Target(question, edit.target, "good", edit.id, chat=True)
                    for question in chat_questions(edit.questions, prompts[0])]
    return targets


def fact_texts(facts: Sequence[ir.Fact]) -> list[str]:
    """`prompt answer` for every prompt of every fact: text whose distribution must not move."""
    return [f"{prompt.rstrip()} {fact.answer.strip()}" for fact in facts for prompt in fact.prompts]


def fact_questions(fact: ir.Fact, relations: dict[str, ir.Relation]) -> list[str]:
    """The user messages a keep fact is asked by in chat, as verify's `chat` protocol asks them:
    its relation's `question` templates filled in, else its prompts.

    >>> fact_questions(fact, {"capital": relation})          # doctest: +SKIP
    ['What is the capital of Canada?']
    """
    relation = relations.get(fact.relation) if getattr(fact, "relation", None) else None
    questions = [q.replace("{subject}", fact.subject) for q in relation.questions] \
        if relation is not None and getattr(fact, "subject", None) is not None else []
    return list(dict.fromkeys(q for q in questions if q.strip())) or list(dict.fromkeys(fact.prompts))


def chat_fact_messages(facts: Sequence[ir.Fact], relations: dict[str, ir.Relation]) -> list[str]:
    """Every chat question of every fact, in order (see `fact_questions`)."""
    return [question for fact in facts for question in fact_questions(fact, relations)]


def spec_objectives(spec: ir.Spec, edits: Sequence[ir.Edit], *, scope: bool = False,
                    whole_spec: bool = True, rehearsed: Sequence[ir.Edit] = (), chat: bool = False) -> Objectives:
    """The objectives for compiling `edits` of `spec`.

    With `whole_spec` (a first compile) canonical examples and `forget` blocks are trained too;
    a sequential compile (`--on`) trains only the new edits, and keeps every anchor.
    `rehearsed` earlier edits are trained again beside the new ones (see `rehearsal`).
    `chat` adds every edit's chat-form targets (`edit_targets`) and the keep facts' chat
    questions as anchors (`chat_anchors`, `held_chat`): trained to answer in chat, the model must
    also go on answering its neighbours in chat as it did.
    """
    targets: list[Target] = []
    sources: dict[str, str] = {}
    anchors: list[str] = []
    relations = {r.name: r for r in getattr(spec, "relations", ())} if chat else {}
    messages: list[str] = []
    for edit in edits:
        targets += edit_targets(edit, scope=scope, chat=chat)
        sources[edit.id] = "edit"
        anchors += fact_texts(edit.keep)
        messages += chat_fact_messages(edit.keep, relations) if chat else []
    for edit in rehearsed:
        targets += edit_targets(edit, scope=scope, chat=chat)
        sources[edit.id] = "rehearsed"
        anchors += fact_texts(edit.keep)
        messages += chat_fact_messages(edit.keep, relations) if chat else []
    for example in spec.canonical:
        anchors += fact_texts(example.keep)
        messages += chat_fact_messages(example.keep, relations) if chat else []
        if whole_spec:
            targets.append(Target(example.prompt, example.answer, "good", example.id))
            if example.over:
                targets.append(Target(example.prompt, example.answer, "contrast", example.id, foil=example.over))
            sources[example.id] = "canonical"
    if whole_spec:
        for erasure in spec.forget:
            targets += [Target(prompt, never, "bad", erasure.id) for prompt in erasure.prompts for never in erasure.never]
            sources[erasure.id] = "forget"
    preserve, budget = preserve_texts(spec)
    if not targets:
        raise EditspecError(f"{spec.source} has nothing to train: no edits, canonical examples or forget blocks",
                            hint="add an `edit`, a `canonical` example or a `forget` block")
    anchors = list(dict.fromkeys(anchors))
    own = set(anchors)
    earlier = (text for edit in spec.edits if edit.id not in sources for text in fact_texts(edit.keep))
    held = [text for text in dict.fromkeys(earlier) if text not in own]
    messages = list(dict.fromkeys(messages))
    asked = set(messages)
    earlier_asked = (m for edit in spec.edits if edit.id not in sources and chat
                     for m in chat_fact_messages(edit.keep, relations))
    held_chat = [m for m in dict.fromkeys(earlier_asked) if m not in asked]
    return Objectives(tuple(targets), tuple(anchors), tuple(preserve), budget, sources, tuple(held),
                      tuple(messages), tuple(held_chat))


def rehearsal(spec: ir.Spec, new: Sequence[ir.Edit], count: int, seed: int) -> list[ir.Edit]:
    """Up to `count` of the spec's edits that are not `new`, drawn by `seed` (in spec order).

    The draw depends on the seed and on how many edits the spec has, so successive sequential
    compiles rehearse different earlier edits, and the same compile always the same ones.

    >>> rehearsal(spec, spec.edits[-1:], 8, seed=0)                # doctest: +SKIP
    [Edit(id='e1', ...), ...]
    """
    fresh = {edit.id for edit in new}
    earlier = [edit for edit in spec.edits if edit.id not in fresh]
    if len(earlier) <= count:
        return earlier
    chosen = set(random.Random(f"{seed}:{len(spec.edits)}").sample(range(len(earlier)), count))
    return [edit for i, edit in enumerate(earlier) if i in chosen]


def preserve_texts(spec: ir.Spec) -> tuple[list[str], ir.Budget | None]:
    """Every `preserve` text and file document, and the tightest budget declared (if any)."""
    from editspec.model.corpus import split_documents

    texts: list[str] = []
    budget = None
    for block in spec.preserve:
        texts += [t for t in block.texts if t.strip()]
        for name in block.resolved_files:
            try:
                texts += split_documents(Path(name).read_text(encoding="utf-8"))
            except OSError as error:
                raise error_at(block.span, f"cannot read preserve file {name}: {error.strerror}") from None
        if block.budget is not None and (budget is None or block.budget.value < budget.value):
            budget = block.budget
    return texts, budget


def split_preserve(texts: Sequence[str], holdout: float) -> tuple[list[str], list[str]]:
    """`texts` as (anchored, watched): KL anchors for training, and the budget check's own texts.

    About `holdout` of the texts, spread evenly over them, are watched and not anchored, so the
    budget is measured on text the trainer was not pulled towards.  With fewer than two texts,
    or `holdout` 0, every text is both anchored and watched.

    >>> split_preserve(["a", "b", "c", "d"], 0.5)
    (['a', 'c'], ['b', 'd'])
    >>> split_preserve(["a"], 0.5)
    (['a'], ['a'])
    """
    texts = list(texts)
    if len(texts) < 2 or holdout <= 0:
        return texts, texts
    held = [int((i + 1) * holdout) > int(i * holdout) for i in range(len(texts))]
    if not any(held):
        held[-1] = True
    return ([t for t, h in zip(texts, held) if not h], [t for t, h in zip(texts, held) if h])
