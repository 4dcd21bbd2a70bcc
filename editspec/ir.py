"""The Spec IR: frozen, versioned, JSON-serialisable data that every backend and the verifier read.

Every node carries the `Span` of the source that declared it, so any later error or failed
check can point back at that line.  Ids and the spec hash are derived from content only (never
from positions), so moving a declaration or reformatting a file changes neither.

Example:
    >>> from editspec import load_spec
    >>> spec = load_spec("specs/examples/leadership.edit")      # doctest: +SKIP
    >>> spec.edits[0].prompts[0]                                  # doctest: +SKIP
    'The CEO of Twitter is'
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer

SCHEMA_VERSION = 1


class Node(BaseModel):
    """Base of every IR node: immutable and strict about its fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Span(Node):
    """Where a node was declared: file path as given to the loader, 1-based line and column."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int


class Located(Node):
    span: Span = Field(description="The source that declared this node.")


class Relation(Located):
    """A family of prompt templates; `{subject}` marks where the subject goes."""

    name: str
    prompts: tuple[str, ...] = ()
    paraphrases: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()


class Fact(Located):
    """A prompt and the answer that must follow it (aliases count as the same answer).

    `relation` and `subject` are set when the fact was written as `rel("subject") -> ...`;
    `prompts` then holds every prompt template of the relation, filled in.
    """

    id: str
    prompts: tuple[str, ...]
    answer: str
    aliases: tuple[str, ...] = ()
    relation: str | None = None
    subject: str | None = None


class Edit(Located):
    """Rewrite `relation(subject)` to `target` (with `aliases`); `old` is what it was."""

    id: str
    relation: str
    subject: str
    target: str
    aliases: tuple[str, ...] = ()
    old: str | None = None
    prompts: tuple[str, ...] = Field(description="The relation's prompt templates, filled in.")
    paraphrases: tuple[str, ...] = Field(description="The relation's paraphrases, filled in.")
    questions: tuple[str, ...] = Field(description="The relation's questions, filled in (chat/API).")
    scope: tuple[str, ...] = Field(default=(), description="Extra in-scope prompts of this edit.")
    keep: tuple[Fact, ...] = Field(default=(), description="Locality: facts that must not change.")
    implies: tuple[Fact, ...] = Field(default=(), description="Portability: consequences that should follow.")


class CanonicalCheck(Located):
    """A likelihood threshold on a held-out phrasing: `p(answer | prompt) >= threshold`."""

    id: str
    statistic: str = Field(description="What is compared, e.g. `p` (probability of the answer).")
    comparator: Literal[">=", "<="]
    threshold: float
    threshold_text: str = Field(description="The threshold as written, e.g. `1/5`.")
    fact: Fact


class CanonicalExample(Located):
    """Hewitt et al.: one example of the behaviour to generalise, with checks and hard negatives."""

    id: str
    name: str
    prompt: str
    answer: str
    over: str | None = Field(default=None, description="The continuation the answer must beat.")
    checks: tuple[CanonicalCheck, ...] = ()
    keep: tuple[Fact, ...] = Field(default=(), description="Hard negatives that must not change.")


class Erasure(Located):
    """The model must produce none of `never` after any of `prompts`."""

    id: str
    name: str
    prompts: tuple[str, ...]
    never: tuple[str, ...]


class Budget(Located):
    """How far general behaviour may drift: `loss_increase` (a fraction) or `kl` (nats/token)."""

    metric: Literal["loss_increase", "kl"]
    comparator: Literal["<="] = "<="
    value: float


class Preservation(Located):
    """General text whose behaviour must not drift, and the budget for it."""

    texts: tuple[str, ...] = ()
    files: tuple[str, ...] = Field(default=(), description="Paths relative to the declaring spec, as written.")
    resolved_files: tuple[str, ...] = Field(default=(), description="The same files, resolved for reading.")
    budget: Budget | None = None


class Expectation(Located):
    """A threshold the verifier enforces on one metric (`efficacy >= 0.9`), or on its total under one
    protocol (`efficacy[chat] >= 0.9`)."""

    metric: str
    protocol: str | None = Field(
        default=None, description="The protocol whose total must meet the threshold (e.g. `chat`); unset: "
        "every total of the metric under its default protocols.")
    comparator: Literal[">=", "<="]
    value: float

    @model_serializer(mode="wrap")
    def _unset_protocol_left_out(self, handler):
        # An unqualified expectation serialises (and hashes) exactly as before protocols existed.
        data = handler(self)
        if data.get("protocol") is None:
            data.pop("protocol", None)
        return data

    @property
    def label(self) -> str:
        """How the spec names what is measured: `efficacy` or `efficacy[chat]`."""
        return f"{self.metric}[{self.protocol}]" if self.protocol else self.metric


class Range(Node):
    """An inclusive integer range such as `4..8`."""

    kind: Literal["range"] = "range"
    start: int
    end: int

    def values(self) -> list[int]:
        return list(range(self.start, self.end + 1))


Scalar = Union[bool, int, float, str]
ListItem = Union[Scalar, Range, tuple[Union[Scalar, Range], ...]]
SettingValue = Union[Scalar, Range, tuple[ListItem, ...]]  # lists nest at most two deep


class Setting(Located):
    key: str
    value: SettingValue


class BackendSettings(Located):
    """`backend NAME { key value ... }`: settings for one backend, overridable with `--set`."""

    name: str
    settings: tuple[Setting, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {s.key: s.value for s in self.settings}


class Spec(Node):
    """A whole spec: the root file with its imports resolved and merged."""

    schema_version: int = SCHEMA_VERSION
    source: str = Field(description="The root spec file, as given.")
    files: tuple[str, ...] = Field(description="Every file read: the root first, then imports.")
    model: str | None = None
    relations: tuple[Relation, ...] = ()
    edits: tuple[Edit, ...] = ()
    canonical: tuple[CanonicalExample, ...] = ()
    forget: tuple[Erasure, ...] = ()
    preserve: tuple[Preservation, ...] = ()
    expect: tuple[Expectation, ...] = ()
    backends: tuple[BackendSettings, ...] = ()

    # -- serialisation -------------------------------------------------------------------
    def to_json(self, *, indent: int | None = 2) -> str:
        """The canonical JSON form: sorted keys, stable across runs and machines."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Spec":
        """Read the JSON form back; refuses other schema versions loudly."""
        data = json.loads(text)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            from editspec.errors import EditspecError

            raise EditspecError(
                f"IR schema version {version!r} is not supported (this editspec reads version {SCHEMA_VERSION})",
                hint="recompile the spec with this version of editspec",
            )
        return cls.model_validate(data)

    def content(self) -> dict[str, Any]:
        """The JSON data without source spans or file names: what the spec *means*."""
        return strip_locations(self.model_dump(mode="json"))

    def content_hash(self) -> str:
        """A stable hash of the spec's meaning (positions and file names excluded)."""
        return stable_hash(self.content())

    def backend(self, name: str) -> BackendSettings | None:
        return next((b for b in self.backends if b.name == name), None)


_LOCATION_KEYS = {"span", "source", "files", "resolved_files"}


def strip_locations(data: Any) -> Any:
    """Drop spans and file paths from IR JSON data, recursively."""
    if isinstance(data, dict):
        return {k: strip_locations(v) for k, v in data.items() if k not in _LOCATION_KEYS}
    if isinstance(data, list):
        return [strip_locations(v) for v in data]
    return data


def stable_hash(data: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace, UTF-8)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the Spec IR."""
    schema = Spec.model_json_schema()
    schema["$id"] = f"https://editspec.dev/schema/spec-v{SCHEMA_VERSION}.json"
    return schema
