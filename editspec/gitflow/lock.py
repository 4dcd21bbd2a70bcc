"""`editspec.lock`: which artifact was compiled from which spec, and whether it is still current.

The lock lives next to the specs (one per folder) and is meant for git: per artifact it records
the spec, its IR hash, its edits (id, relation, subject), the model, the backend's full config
(and any `--set` overrides), and the payload hash.  Artifacts themselves usually stay out of git;
the lock says what they should be.

`artifact_status` compares a lock entry with the spec and the artifact as they are now and says
whether the artifact is current, and if not, why and what to do: only added edits can be
compiled on top of the old artifact (`compile --on`); a removed or changed edit needs a compile
from the base model.

Example:
    >>> path = record_artifact("build/capitals.rome")                       # doctest: +SKIP
    >>> [s.state for s in lock_status(path)]                               # doctest: +SKIP
    ['current']
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from editspec.errors import EditspecError

LOCK_FILE = "editspec.lock"
LOCK_VERSION = 1


def read_lock(path: str | os.PathLike) -> dict[str, Any]:
    """The lock's data (an empty lock when the file does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return {"lock_version": LOCK_VERSION, "artifacts": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EditspecError(f"cannot read {path}: {error}", hint="it is JSON; fix or delete it, then lock again") from None
    if data.get("lock_version") != LOCK_VERSION:
        raise EditspecError(f"{path} has lock version {data.get('lock_version')!r}; this editspec reads {LOCK_VERSION}",
                            hint="delete it and record the artifacts again with `editspec lock`")
    return data


def write_lock(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    from editspec.build.artifact import canonical_json
    from editspec.cache import atomic_write

    with atomic_write(path, "w") as handle:
        handle.write(canonical_json(dict(data)))


def record_artifact(artifact, *, spec: str | os.PathLike | None = None,
                    overrides: Mapping[str, Any] | None = None) -> Path:
    """Record a compiled artifact in the lock next to its spec; returns the lock's path.

    `spec` defaults to the source named in the artifact's manifest (relative to the current
    folder, as it was given to `compile`).  `overrides` are the `--set` values it was compiled
    with, so that `status` does not report them as a change.
    """
    from editspec.build.artifact import read_artifact

    artifact = read_artifact(artifact)
    manifest = artifact.manifest
    spec_path = Path(spec if spec is not None else manifest.spec.source)
    if not spec_path.is_file():
        raise EditspecError(f"cannot find the spec {spec_path} that {artifact.path} was compiled from",
                            hint="run from the folder you compiled in, or name the spec with --spec")
    lock_path = spec_path.parent / LOCK_FILE
    data = read_lock(lock_path)
    key = _relative(artifact.path, lock_path.parent)
    data["artifacts"][key] = {
        "spec": _relative(spec_path, lock_path.parent),
        "backend": artifact.backend,
        "sequential": manifest.backend.capabilities.sequential,
        "config": manifest.backend.config,
        "overrides": dict(overrides or {}),
        "model": {k: (manifest["model"] or {}).get(k) for k in ("name", "weights_hash")},
        "spec_model": artifact.spec.model,
        "ir_hash": manifest.spec.ir_hash,
        "edits": [[e.id, e.relation, e.subject] for e in manifest.edits],
        "payload_hash": artifact.payload_hash,
        "editspec_version": manifest.editspec_version,
    }
    write_lock(lock_path, data)
    return lock_path


@dataclass
class ArtifactStatus:
    """Where one locked artifact stands: `state` is current, stale, missing, modified or broken."""

    artifact: str
    spec: str
    backend: str
    state: str
    reasons: list[str] = field(default_factory=list)
    action: str | None = None
    build_on: str | None = None  # the artifact to compile only the added edits on (`compile --on`)

    def to_dict(self) -> dict[str, Any]:
        return dict(artifact=self.artifact, spec=self.spec, backend=self.backend, state=self.state,
                    reasons=self.reasons, action=self.action, build_on=self.build_on)


def lock_status(lock_path: str | os.PathLike, specs: set[str] | None = None) -> list[ArtifactStatus]:
    """The status of every artifact in a lock (only those of `specs`, lock-relative, when given)."""
    lock_path = Path(lock_path)
    data = read_lock(lock_path)
    return [artifact_status(lock_path.parent, key, entry) for key, entry in sorted(data["artifacts"].items())
            if specs is None or entry["spec"] in specs]


def artifact_status(folder: Path, key: str, entry: Mapping[str, Any]) -> ArtifactStatus:
    """Compare one lock entry (artifact `key`, relative to `folder`) with the spec and artifact now."""
    from editspec.lang.resolve import analyse

    spec_path, artifact_dir = Path(os.path.normpath(folder / entry["spec"])), Path(os.path.normpath(folder / key))
    status = ArtifactStatus(artifact=str(artifact_dir), spec=str(spec_path), backend=entry["backend"], state="current")
    if not spec_path.is_file():
        return _set(status, "broken", f"the spec {entry['spec']} no longer exists", "remove the entry from the lock")
    analysis = analyse(str(spec_path))
    if analysis.spec is None:
        return _set(status, "broken", f"the spec has {len(analysis.errors)} error(s)", f"editspec check {spec_path}")
    spec = analysis.spec
    command = f"editspec compile {spec_path} --backend {entry['backend']} -o {artifact_dir}"
    reasons, from_scratch = _spec_changes(spec, entry)
    if not (artifact_dir / "manifest.json").is_file():
        return _set(status, "missing", "the artifact is not built here", command, *reasons)
    from editspec.build.artifact import read_artifact

    try:
        payload = read_artifact(artifact_dir).payload_hash
    except EditspecError as error:
        return _set(status, "broken", error.diagnostics[0].message, command)
    if payload != entry["payload_hash"]:
        return _set(status, "modified", "the artifact's payload is not the one locked (compiled again without "
                    "updating the lock?)", f"editspec lock {artifact_dir}", *reasons)
    if not reasons:
        return status
    if not from_scratch and entry.get("sequential"):
        status.build_on = str(artifact_dir)
        command = f"editspec compile {spec_path} --backend {entry['backend']} --on {artifact_dir} -o {artifact_dir}"
    return _set(status, "stale", *reasons[:1], command, *reasons[1:])


def incremental_base(spec: str | os.PathLike, backend: str, out: str | os.PathLike | None = None) -> Path | None:
    """The locked artifact a new compile of `spec` with `backend` can build on, or None.

    Only when the lock next to the spec has an artifact for it (at `out`, when given) that is
    intact and whose spec has since only gained edits, with the same settings and model, and
    whose backend edits sequentially.  Anything else compiles from the base model.

    Example:
        >>> incremental_base("specs/capitals.edit", "alphaedit")   # doctest: +SKIP
        PosixPath('build/capitals.alphaedit')
    """
    lock_path = Path(spec).parent / LOCK_FILE
    if not lock_path.is_file():
        return None
    wanted = os.path.abspath(out) if out is not None else None
    for status in lock_status(lock_path, {Path(spec).name}):
        if status.backend == backend and status.build_on and (wanted is None or os.path.abspath(status.artifact) == wanted):
            return Path(status.build_on)
    return None


def _set(status: ArtifactStatus, state: str, reason: str, action: str | None, *more: str) -> ArtifactStatus:
    status.state, status.reasons, status.action = state, [reason, *more], action
    return status


def _spec_changes(spec, entry: Mapping[str, Any]) -> tuple[list[str], bool]:
    """Why the artifact no longer matches the spec, and whether that needs the base model."""
    reasons: list[str] = []
    locked = {edit_id: (relation, subject) for edit_id, relation, subject in entry["edits"]}
    current = {edit.id: (edit.relation, edit.subject) for edit in spec.edits}
    gone = [who for edit_id, who in locked.items() if edit_id not in current]
    new = [who for edit_id, who in current.items() if edit_id not in locked]
    changed = sorted(set(gone) & set(new))
    removed = [who for who in gone if who not in changed]
    added = [who for who in new if who not in changed]
    for count, what, which in ((len(changed), "changed", changed), (len(removed), "removed", removed),
                               (len(added), "added", added)):
        if count:
            names = ", ".join(f'{r}("{s}")' for r, s in which[:3]) + (" ..." if count > 3 else "")
            reasons.append(f"{count} edit(s) {what}: {names}")
    from_scratch = bool(changed or removed)
    config_change = _config_change(spec, entry)
    if config_change:
        reasons.append(config_change)
        from_scratch = True
    if spec.model != entry.get("spec_model"):
        reasons.append(f"the spec's model changed: {entry.get('spec_model')} -> {spec.model}")
        from_scratch = True
    if not reasons and spec.content_hash() != entry["ir_hash"]:
        reasons.append("the spec changed outside its edits (checks, expectations or other blocks)")
    return reasons, from_scratch


def _config_change(spec, entry: Mapping[str, Any]) -> str | None:
    from editspec.build.compiler import build_config
    from editspec.build.registry import backends

    registered = backends().get(entry["backend"])
    if registered is None:
        return f"backend `{entry['backend']}` is not installed"
    try:
        config = build_config(registered.config_class(), spec.backend(entry["backend"]),
                              {k: str(v) for k, v in entry.get("overrides", {}).items()}, entry["backend"])
    except EditspecError as error:
        return f"backend settings no longer valid: {error.diagnostics[0].message}"
    now = json.loads(json.dumps(config.model_dump(mode="json")))
    keys = [k for k in dict.fromkeys([*now, *entry["config"]]) if now.get(k) != entry["config"].get(k)]
    if not keys:
        return None
    return "backend settings changed: " + ", ".join(
        f"{k} {json.dumps(entry['config'].get(k))} -> {json.dumps(now.get(k))}" for k in keys[:4])


def find_locks(start: str | os.PathLike) -> list[Path]:
    """Every `editspec.lock` under `start` (hidden folders, virtual environments and build/ skipped)."""
    found = []
    for folder, subfolders, files in os.walk(start):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in {"build", "node_modules", "venv", "__pycache__"})
        if LOCK_FILE in files:
            found.append(Path(folder) / LOCK_FILE)
    return found


def _relative(path: str | os.PathLike, folder: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()
