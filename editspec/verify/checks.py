"""The checks a spec implies: one small record per prompt, derived from the IR, never written by hand.

| metric | from | default protocol |
|---|---|---|
| efficacy | an edit's prompts | `compare` against `was` (else `teacher_forced`) |
| generalization | scope prompts and relation paraphrases | as efficacy |
| locality | an edit's `keep` facts | `compare` against the edit's new object, and agreement with the unedited model |
| portability | an edit's `implies` facts | `teacher_forced` |
| canonical | a canonical example (`over`) and its `check p >= ...` lines | `compare`, `logprob` |
| hard_negatives | a canonical example's `keep` facts | `compare` against the example's answer, and agreement |
| forget | each erasure prompt | `logprob` (every `never` string unlikely) and `generate` (none produced) |
| preserve | each `preserve` block | `loss_increase` or `kl` against the unedited model |
| fluency | the spec's prompts, sampled | `ngram_entropy` |

`protocol=` overrides the protocol of the fact checks (efficacy, generalization, locality,
portability): `generate` is the one for API models; it generates `max_new_tokens` freely and
judges the first sentence (WILD-style: an answer that appears and is then taken back fails).
`chat=True` (the engine sets it when the tokenizer has a chat template) runs every fact check
a second time under the `chat` protocol,
*alongside* the default one: the relation's `question` templates where it has them, else the
prompts themselves, sent as a user turn, the reply judged as free generation is.
Alongside checks have ids `<node>/<metric>/chat/<i>`
and are measured and reported, but an unqualified expectation (`efficacy >= 0.9`) keeps its
meaning and reads only the default protocol; `efficacy[chat] >= 0.9` reads the chat checks.

Each kind of check derives its own (`editspec.verify.kinds`); this module holds the record,
the fact checks' passes (`Plan`) and `prompt_checks`, which the prompt-asking kinds share.

Example::

    checks = derive_checks(load_spec("specs/examples/capitals.edit"))
    [c.id for c in checks][:2]   # ['capital-australia-…/efficacy/0', 'capital-australia-…/efficacy/1']
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from editspec import ir
from editspec.errors import EditspecError
from editspec.ir import stable_hash
from editspec.lang.metrics import PROTOCOLS

# Thresholds the spec language has no place for; every report prints them with the check.
FORGET_MAX_P = 0.05          # a forbidden string is "likely" at P >= 1/20 (Hewitt's company task)
LOGPROB_DEFAULT_P = 0.2      # `--protocol logprob` on fact checks: p >= 1/5 (Hewitt's country task)
DEFAULT_LOSS_INCREASE = 0.01  # a preserve block without a budget: loss may rise by 1%
FLUENCY_PROMPTS = 8          # at most this many prompts are sampled for fluency
FLUENCY_SAMPLES = 8          # at least this many samples: fewer prompts are each sampled more often
FLUENCY_TOKENS = 50          # tokens sampled per fluency prompt (top-k 5, seeded)
FLUENCY_DROP = 0.9           # without a fluency expectation: at least 90% of the unedited entropy

CHAT_TOKENS = 48             # tokens of a chat reply (or a free generation): enough for a sentence

FACT_METRICS = ("efficacy", "generalization", "locality", "portability")
GENERATIVE = ("chat", "generate")  # fact protocols judged on free text, with foils as "must not appear"


@dataclass(frozen=True)
class Check:
    """One thing the verifier measures on one prompt, with the spec line that declared it.

    `answers` are the expected answer and its aliases; `foils` what it must beat (`compare`)
    or must not say (`chat`: an edit's `was` object, or for locality the edit's new object);
    `agree` asks the model's answer to match the unedited model's (locality, hard negatives).
    `alongside` marks a check run beside the default protocol (chat on an instruct model),
    which unqualified expectations do not read; `max_new_tokens` bounds a chat reply or a fact
    check's free generation (`generate`; forget checks generate a little past their strings).
    """

    id: str
    metric: str
    protocol: str
    file: str
    line: int
    column: int
    prompt: str = ""
    answers: tuple[str, ...] = ()
    foils: tuple[str, ...] = ()
    agree: bool = False
    comparator: str = ">="
    threshold: float | None = None
    texts: tuple[str, ...] = field(default=(), repr=False)
    prompts: tuple[str, ...] = field(default=(), repr=False)
    alongside: bool = False
    max_new_tokens: int | None = None

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def key(self) -> dict:
        """What the check measures (no source position): the input of the baseline cache key."""
        data = asdict(self)
        for name in ("file", "line", "column"):
            data.pop(name)
        return data


def checks_hash(checks: list[Check]) -> str:
    """A content hash of a check set (positions excluded), for the baseline cache."""
    return stable_hash([c.key() for c in checks])


def fact_protocol(override: str | None, has_foil: bool) -> str:
    if override:
        return override
    return "compare" if has_foil else "teacher_forced"


@dataclass(frozen=True)
class Plan:
    """How one pass over the fact checks runs: its protocol (None: the default) and whether it is alongside."""

    protocol: str | None = None
    alongside: bool = False
    max_new_tokens: int = CHAT_TOKENS
    main: str | None = None      # the main pass's protocol, which an alongside pass does not repeat

    def suffix(self, metric: str) -> str:
        return f"{metric}/{self.protocol}" if self.alongside else metric


def prompt_checks(metric: str, node_id: str, span: ir.Span, prompts, answers, foils, *, agree=False,
                 plan: _Plan = Plan()) -> list[Check]:
    protocol = fact_protocol(plan.protocol, bool(foils))
    if plan.alongside and (protocol == fact_protocol(plan.main, bool(foils)) or (protocol == "compare" and not foils)):
        return []  # already measured by the main pass, or nothing to compare against
    threshold = LOGPROB_DEFAULT_P if protocol == "logprob" else None
    keeps_foils = protocol == "compare" or protocol in GENERATIVE
    tokens = plan.max_new_tokens if protocol in GENERATIVE else None
    return [
        Check(id=f"{node_id}/{plan.suffix(metric)}/{i}", metric=metric, protocol=protocol, file=span.file,
              line=span.line, column=span.column, prompt=prompt, answers=tuple(answers),
              foils=tuple(foils) if keeps_foils else (), agree=agree, threshold=threshold,
              alongside=plan.alongside, max_new_tokens=tokens)
        for i, prompt in enumerate(prompts)
    ]


def derive_checks(spec: ir.Spec, *, protocol: str | None = None, chat: bool = False,
                  max_new_tokens: int = CHAT_TOKENS) -> list[Check]:
    """Every check the spec implies, in spec order; `protocol` overrides the fact checks' protocol.

    With `chat`, the fact checks also run under the `chat` protocol, alongside (unless
    `protocol` is already `chat`); so do they under any protocol an expectation names
    (`efficacy[generate] >= 0.8`).  `max_new_tokens` bounds each chat reply.

    >>> [c.metric for c in derive_checks(load_spec("specs/examples/leadership.edit"))][:3]  # doctest: +SKIP
    ['efficacy', 'generalization', 'generalization']
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise EditspecError(f"unknown protocol `{protocol}`", hint="one of " + ", ".join(PROTOCOLS))
    if max_new_tokens < 1:
        raise EditspecError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    named = [e.protocol for e in spec.expect if e.protocol and e.metric in FACT_METRICS]
    extra = dict.fromkeys([*(["chat"] if chat else []), *named])
    plans = [Plan(protocol, max_new_tokens=max_new_tokens)]
    plans += [Plan(p, alongside=True, max_new_tokens=max_new_tokens, main=protocol) for p in extra if p != protocol]
    from editspec.verify.kinds import derive_all

    return derive_all(spec, plans)
