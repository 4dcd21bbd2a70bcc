"""Compiled artifacts: a directory with a manifest, the IR and the backend's payload.

```
build/leadership.memit/
  manifest.json        schema_version, editspec_version, spec + IR hash, model + weights hash,
                       backend + full config, seed, per-edit ids and spans, payload hash, timings
  ir.json              the spec's IR, exactly what was compiled
  delta.safetensors    white-box: low-rank factors per module (or adapter/, plugin/)
```

Artifacts are read with `read_artifact`, which refuses a directory that is not one, or one
written by a newer editspec, loudly; the manifest is a typed `Manifest` (editspec.build.manifest),
written by `write_manifest` and read here only.

    >>> artifact = read_artifact("build/capitals.rome")   # doctest: +SKIP
    >>> artifact.backend, len(artifact.edit_ids)           # doctest: +SKIP
    ('rome', 5)
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from editspec.build.manifest import ARTIFACT_SCHEMA_VERSION, Manifest
from editspec.errors import EditspecError
MANIFEST = "manifest.json"
IR_FILE = "ir.json"
DELTAS = "delta.safetensors"
ADAPTER_DIR = "adapter"
PLUGIN_DIR = "plugin"


@dataclass(frozen=True)
class Artifact:
    """A compiled artifact on disk: its `path` and validated `manifest`."""

    path: Path
    manifest: Manifest = field(repr=False)

    @property
    def backend(self) -> str:
        return self.manifest.backend.name

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.backend.config

    @property
    def model(self) -> dict[str, Any] | None:
        """`{"name", "path", "weights_hash", "model_type"}` of the model it was compiled for."""
        return self.manifest["model"]

    @property
    def edit_ids(self) -> list[str]:
        return [edit.id for edit in self.manifest.edits]

    @property
    def payload_hash(self) -> str:
        return self.manifest.payload.hash

    @cached_property
    def spec(self):
        """The IR that was compiled (an `editspec.ir.Spec`)."""
        from editspec.ir import Spec

        return Spec.from_json((self.path / IR_FILE).read_text(encoding="utf-8"))

    def file(self, name: str) -> Path:
        """A payload file, or an `EditspecError` naming what is missing."""
        path = self.path / name
        if not path.exists():
            raise EditspecError(f"artifact {self.path} has no `{name}`",
                                hint="it is incomplete or was made by another backend; compile it again")
        return path


def read_artifact(path: str | os.PathLike | Artifact) -> Artifact:
    """The artifact in directory `path` (an `Artifact` passes through)."""
    if isinstance(path, Artifact):
        return path
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise EditspecError(f"no artifact at {path}", hint="compile one with `editspec compile SPEC --backend B -o DIR`")
    if not manifest_path.is_file():
        raise EditspecError(f"{path} is not an editspec artifact (no {MANIFEST})",
                            hint="compile one with `editspec compile SPEC --backend B -o DIR`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EditspecError(f"cannot read {manifest_path}: {error}") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != ARTIFACT_SCHEMA_VERSION:
        newer = isinstance(version, int) and version > ARTIFACT_SCHEMA_VERSION
        raise EditspecError(
            f"{path} has artifact schema version {version}; this editspec reads version {ARTIFACT_SCHEMA_VERSION}",
            hint="upgrade editspec" if newer else "compile the spec again with this editspec",
        )
    try:
        return Artifact(path, Manifest.model_validate(manifest))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise EditspecError(f"{manifest_path} is not a valid manifest: `{where}`: {first['msg']}",
                            hint="it was edited by hand or written by another tool; compile the spec again") from None


def write_manifest(workdir: Path, manifest: Manifest) -> None:
    """Write `manifest` as `manifest.json` in canonical JSON (the only writer of manifests)."""
    (workdir / MANIFEST).write_text(canonical_json(manifest.to_json_data()), encoding="utf-8")


def payload_hash(root: Path, files: Iterable[str]) -> str:
    """SHA-256 over the payload: every file (directories recursively) by relative path and bytes."""
    from editspec.cache import sha256_file

    digest = hashlib.sha256()
    for name in sorted(_expand(root, files)):
        digest.update(f"{name}\0{sha256_file(root / name)}\n".encode())
    return digest.hexdigest()


def _expand(root: Path, files: Iterable[str]) -> list[str]:
    found = []
    for name in files:
        path = root / name
        if path.is_dir():
            found += [p.relative_to(root).as_posix() for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            found.append(Path(name).as_posix())
        else:
            raise EditspecError(f"the backend listed `{name}` in its payload but did not write it")
    return found


def canonical_json(data: Any) -> str:
    """Sorted keys, two-space indent, a final newline: stable bytes for manifests."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
