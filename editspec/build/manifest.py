"""The artifact manifest: editspec's versioned contract with everything that reads an artifact.

`manifest.json` records what was compiled (spec and IR hash), for which model (weights hash),
how (backend, full config, capabilities, seed), each edit with its source span and stage, what
the backend left out, the payload's files and hash, and timings.  It is written and read only in
`editspec.build.artifact`, validated on the way in; `manifest_schema()` is its JSON Schema
(`editspec ir --manifest-schema`), kept in `docs/manifest.schema.json`.

    >>> artifact.manifest.backend.name, artifact.manifest.edits[0].stage   # doctest: +SKIP
    ('rome', 1)
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from editspec.build.backend import Capabilities

ARTIFACT_SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Mapping-style reading, as of the JSON (`manifest["backend"]["name"]`), for scripts and
    # tests written against manifest.json; editspec's own code reads attributes.
    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields and key not in (self.model_extra or {}):
            raise KeyError(key)
        return _plain(getattr(self, key))

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return key in type(self).model_fields or key in (self.model_extra or {})


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class SpecRecord(_Record):
    """The spec that was compiled."""

    source: str = Field(description="The root spec file, as given to compile.")
    files: list[str] = Field(description="Every file the spec read (imports, preserve files).")
    ir_hash: str = Field(description="The IR's content hash (`editspec ir --hash`).")


class ModelRecord(_Record):
    """The model the artifact was compiled for (none for black-box plugins)."""

    name: str
    path: str
    weights_hash: str = Field(description="SHA-256 over the model's weight files.")
    model_type: str | None = Field(None, description="The checkpoint's `config.model_type`.")


class BackendRecord(_Record):
    """The backend, its full config (defaults included) and its capabilities."""

    name: str
    config: dict[str, Any]
    capabilities: Capabilities


class EditRecord(_Record):
    """One compiled edit: its id, fact and source span, the stage (`--on` count) that added it,
    and whatever numbers the backend logged for it (layer, loss, steps, ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    relation: str
    subject: str
    target: str
    span: dict[str, Any] | None = Field(None, description="Where the edit is declared (file, line, column).")
    stage: int = Field(1, ge=1, description="1 for a first compile, one more for each `--on`.")


class LeftOut(_Record):
    """A spec part the backend does not compile (a warning at its line was given)."""

    kind: Literal["edits", "canonical", "forget"]
    name: str
    line: int


class BasedOn(_Record):
    """The earlier artifact a sequential compile (`--on`) built on."""

    path: str
    payload_hash: str


class PayloadRecord(_Record):
    """The payload files (relative to the artifact) and their SHA-256 over names and bytes."""

    files: list[str]
    hash: str


class Manifest(_Record):
    """Everything `manifest.json` holds.  Unknown fields are refused: a newer editspec bumps
    `schema_version`, which `read_artifact` checks first."""

    schema_version: Literal[1] = ARTIFACT_SCHEMA_VERSION
    editspec_version: str
    spec: SpecRecord
    model: ModelRecord | None
    backend: BackendRecord
    seed: int
    edits: list[EditRecord]
    based_on: BasedOn | None = None
    payload: PayloadRecord
    details: dict[str, Any] = Field(default_factory=dict, description="What the backend reports (trained sources, router...).")
    left_out: list[LeftOut] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per compile phase.")
    versions: dict[str, str] = Field(default_factory=dict, description="Python, torch and transformers versions.")

    def to_json_data(self) -> dict[str, Any]:
        """The manifest as JSON data, exactly as written to disk."""
        return self.model_dump(mode="json")


def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema."""
    return Manifest.model_json_schema()
