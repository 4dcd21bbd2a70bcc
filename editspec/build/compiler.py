"""Compile a spec with a backend into an artifact directory, atomically.

The compiler owns everything around a backend: the spec, the config (the spec's `backend`
block, then `--set` overrides), the model, sequential editing on a previous artifact, and
writing the artifact under a temporary name that is renamed into place only when complete.

    >>> artifact = compile_spec("specs/examples/capitals.edit", "rome", out="build/capitals.rome")  # doctest: +SKIP
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pydantic import BaseModel, ValidationError

from editspec import __version__
from editspec.build.artifact import IR_FILE, MANIFEST, Artifact, payload_hash, read_artifact, write_manifest
from editspec.build.backend import Backend, CompileJob
from editspec.build.manifest import (
    BackendRecord, BasedOn, EditRecord, Manifest, ModelRecord, PayloadRecord, SpecRecord,
)
from editspec.build.support import left_out, unsupported_parts
from editspec.errors import Diagnostic, EditspecError, did_you_mean, error_at
from editspec.ir import BackendSettings, Range, Spec

if TYPE_CHECKING:
    from editspec.model.loading import ModelOptions


def compile_spec(
    spec: Spec | str | os.PathLike, backend: str | None = None, *, model: Any = None,
    out: str | os.PathLike | None = None, overrides: Mapping[str, str] | None = None, seed: int = 0,
    on: str | os.PathLike | Artifact | None = None, incremental: bool = True,
    locked_at: str | os.PathLike | None = None, model_options: ModelOptions | None = None,
    device: str | None = None, device_map: str | None = None, dtype: str | None = None,
    progress: Callable[[str], None] | None = None, warn: Callable[[Diagnostic], None] | None = None,
) -> Artifact:
    """Compile `spec` with `backend` and return the written artifact.

    `backend` defaults to the spec's only `backend` block.  `model` is a known name, a
    checkpoint directory, a .gguf file, an already loaded `editspec.model.loading.LoadedModel`,
    or None (the spec's `model`, else the default).  `overrides` are `--set` pairs (values in the
    spec language: `4..8`, `[1, 2]`, `0.5`).  `on` is a previous artifact of the same backend:
    only edits it lacks are compiled, on top of it (on its model, unless `model` is given), and
    the new artifact holds both.  Without `on`, when `incremental` and `editspec.lock` beside the
    spec shows that the artifact at `out` is current except for added edits, that artifact is
    built on the same way.  `out` defaults to `build/<spec>.<backend>`.  `locked_at` is the
    artifact path looked up in the lock instead of `out` (verify and bench compile elsewhere,
    on top of the artifact `editspec compile` keeps at the default path).  `model_options`
    (an `editspec.model.loading.ModelOptions`) says where and how the model is loaded; the
    `device` / `device_map` / `dtype` keywords are the same, one at a time.  Spec parts the
    backend does not compile reach `warn` as warnings at their line (default: `progress`).
    """
    from editspec.cache import atomic_dir
    from editspec.build.registry import get_backend
    from editspec.lang.resolve import load_spec

    from editspec.model.loading import ModelOptions, load_model_for

    options = ModelOptions.of(model_options, device=device, device_map=device_map, dtype=dtype)
    say = progress or (lambda message: None)
    warn = warn or (lambda diagnostic: say(diagnostic.render()))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    backend = backend or only_backend(spec)
    impl: Backend = get_backend(backend).backend_class()()
    config = build_config(impl.config_class, spec.backend(backend), overrides or {}, backend)
    for diagnostic in unsupported_parts(spec, backend, impl.capabilities):
        warn(diagnostic)
    if on is None and incremental and not overrides:
        on = _locked_base(spec, backend, locked_at if locked_at is not None else out, model, say)
    previous = _previous(on, impl, spec) if on is not None else None
    known = set(previous.edit_ids) if previous else set()
    edits = tuple(edit for edit in spec.edits if edit.id not in known)
    if previous is not None and not edits:
        raise EditspecError(f"every edit of {spec.source} is already in {previous.path}; nothing to compile",
                            hint="add edits to the spec, or compile without --on")
    if model is None and previous is not None and previous.model is not None:
        from editspec.build.attach import load_artifact_model

        say(f"loading model {previous.model['name']} (as in {previous.path})")
        loaded = load_artifact_model(previous, **options.kwargs())
    else:
        loaded = load_model_for(spec, model, options, say) if impl.needs_model else None
    timings["load_model"] = time.perf_counter() - started
    if previous is not None and loaded is not None and previous.model.get("weights_hash") != loaded.weights_hash:
        raise EditspecError(f"{previous.path} was compiled for another model ({previous.model.get('name')})",
                            hint="compile on the same model, or without --on")
    out = Path(out) if out is not None else default_output(spec, backend)
    _refuse_to_overwrite(out)
    with atomic_dir(out) as workdir:
        job = CompileJob(spec=spec, edits=edits, model=loaded, config=config, seed=seed, workdir=workdir,
                         previous=previous, progress=say)
        _seed_everything(seed)
        mark = time.perf_counter()
        job.prepared = impl.prepare(job)
        timings["prepare"] = time.perf_counter() - mark
        mark = time.perf_counter()
        if previous is not None and loaded is not None and impl.attach_previous:
            job.attachment = impl.attach(loaded.model, previous)
        try:
            result = impl.compile(job)
        finally:
            if job.attachment is not None:
                job.attachment.revert()
        timings["compile"] = time.perf_counter() - mark
        (workdir / IR_FILE).write_text(spec.to_json() + "\n", encoding="utf-8")
        timings["total"] = time.perf_counter() - started
        manifest = _manifest(spec, impl, config, seed, loaded, previous, edits, result, workdir, timings)
        write_manifest(workdir, manifest)
    say(f"wrote {out} ({contents(manifest, len(edits))} in {timings['total']:.1f} s)")
    return read_artifact(out)


def only_backend(spec: Spec) -> str:
    """The backend of a spec's only `backend` block: the default when none is named."""
    names = [block.name for block in spec.backends]
    if len(names) == 1:
        return names[0]
    hint = f"the spec configures {', '.join(names)}" if names else "e.g. --backend rome"
    raise EditspecError("which backend? pass --backend", hint=hint)


def _locked_base(spec: Spec, backend: str, out, model, say) -> Path | None:
    """The locked artifact at `out` that this compile can build on (`editspec.lock`), or None.

    A caller's model counts only when it is the one that artifact was compiled for.
    """
    from editspec.gitflow.lock import incremental_base

    if not spec.source or (model is not None and not hasattr(model, "weights_hash")):
        return None
    base = incremental_base(spec.source, backend, out if out is not None else default_output(spec, backend))
    if base is None:
        return None
    if model is not None and read_artifact(base).model.get("weights_hash") != model.weights_hash:
        return None
    say(f"{base} is current except for added edits: compiling only those, on top of it (--fresh to rebuild)")
    return base


def contents(manifest: Manifest | Mapping, edits: int | None = None) -> str:
    """What an artifact holds, for messages: "2 edit(s)", "0 edit(s), 10 canonical example(s)".

    `edits` defaults to every edit of the artifact; canonical examples and forget blocks are
    counted where the backend trained them (its details' `trained` sources).
    """
    trained = list((manifest.get("details") or {}).get("trained", {}).values())
    counts = [(trained.count("canonical"), "canonical example"), (trained.count("forget"), "forget block")]
    edits = len(manifest["edits"]) if edits is None else edits
    return ", ".join([f"{edits} edit(s)"] + [f"{n} {noun}(s)" for n, noun in counts if n])


def _refuse_to_overwrite(out: Path) -> None:
    # The artifact replaces `out` whole; never let that delete a directory that is not one.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise EditspecError(f"{out} exists and is not an editspec artifact; refusing to replace it",
                            hint="choose another directory with -o")


def default_output(spec: Spec, backend: str) -> Path:
    """`build/<spec file stem>.<backend>`, relative to the working directory."""
    return Path("build") / f"{Path(spec.source).stem}.{backend}"


def build_config(config_class: type[BaseModel], block: BackendSettings | None, overrides: Mapping[str, str],
                 backend: str) -> BaseModel:
    """The backend's config from the spec's `backend` block, then `--set` overrides.

    A bad value points at its spec line, or names the `--set` option it came from.
    """
    values: dict[str, Any] = {}
    spans: dict[str, Any] = {}
    for setting in block.settings if block else ():
        values[setting.key] = _plain(setting.value)
        spans[setting.key] = setting.span
    for key, text in overrides.items():
        values[key] = parse_setting_value(text)
        spans.pop(key, None)
    fields = config_class.model_fields
    for key in values:
        if key not in fields:
            message = f"backend `{backend}` has no setting `{key}`"
            hint = did_you_mean(key, fields)
            raise error_at(spans[key], message, hint) if key in spans else EditspecError(f"--set {key}: {message}", hint=hint)
    try:
        return config_class(**values)
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        message = f"backend `{backend}` setting `{key}`: {first['msg']}"
        hint = fields[key].description if key in fields else None
        if key in spans:
            raise error_at(spans[key], message, hint) from None
        raise EditspecError(f"--set {key}: {first['msg']}", hint=hint) from None


def parse_setting_value(text: str) -> Any:
    """A `--set` value read as the spec language reads a setting (`5`, `4..8`, `[1, 2]`, `true`).

    Anything the language does not read as a value is taken as a plain string (`r-rome`).
    """
    from editspec.lang.lower import lower
    from editspec.lang.syntax import parse

    try:
        decls = lower(parse(f"backend x {{ key {text} }}\n", "--set"))
    except EditspecError:
        return text
    if decls.diagnostics or not decls.backends or len(decls.backends[0].settings) != 1:
        return text
    return _plain(decls.backends[0].settings[0].value)


def _plain(value: Any) -> Any:
    if isinstance(value, Range):
        return value.values()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _previous(on, impl: Backend, spec: Spec) -> Artifact:
    previous = read_artifact(on)
    if previous.backend != impl.name:
        raise EditspecError(f"{previous.path} was compiled with `{previous.backend}`, not `{impl.name}`",
                            hint=f"compile with --backend {previous.backend}, or without --on")
    if not impl.capabilities.sequential:
        raise EditspecError(f"`{impl.name}` cannot add edits to an earlier artifact", hint="compile without --on")
    current = {edit.id for edit in spec.edits}
    removed = [edit for edit in previous.manifest.edits if edit.id not in current]
    if removed:
        listed = ", ".join(f"`{edit.id}`" for edit in removed[:5]) + (" ..." if len(removed) > 5 else "")
        raise EditspecError(
            f"{len(removed)} edit(s) of {previous.path} are no longer in the spec (removed or changed): {listed}",
            hint="a removed or changed edit cannot be undone sequentially; compile from the base model (without --on)",
        )
    return previous


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _manifest(spec: Spec, impl: Backend, config: BaseModel, seed: int, loaded, previous: Artifact | None,
              edits, result, workdir: Path, timings: dict[str, float]) -> Manifest:
    logs = {entry["id"]: entry for entry in result.edits}
    earlier = list(previous.manifest.edits) if previous else []
    stage = 1 + max((e.stage for e in earlier), default=0)
    records = earlier + [
        EditRecord(id=edit.id, relation=edit.relation, subject=edit.subject, target=edit.target,
                   span=edit.span.model_dump(), stage=stage,
                   **{k: v for k, v in logs.get(edit.id, {}).items() if k != "id"})
        for edit in edits]
    return Manifest(
        editspec_version=__version__,
        spec=SpecRecord(source=spec.source, files=list(spec.files), ir_hash=spec.content_hash()),
        model=_model_record(loaded),
        backend=BackendRecord(name=impl.name, config=config.model_dump(mode="json"), capabilities=impl.capabilities),
        seed=seed,
        edits=records,
        based_on=BasedOn(path=str(previous.path), payload_hash=previous.payload_hash) if previous else None,
        payload=PayloadRecord(files=sorted(result.files), hash=payload_hash(workdir, result.files)),
        details=result.details,
        left_out=left_out(spec, impl.capabilities),
        timings={k: round(v, 3) for k, v in timings.items()},
        versions=_versions(),
    )


def _model_record(loaded) -> ModelRecord | None:
    if loaded is None:
        return None
    config = getattr(loaded.model, "config", None)
    return ModelRecord(name=loaded.name, path=str(loaded.path), weights_hash=loaded.weights_hash,
                       model_type=getattr(config, "model_type", None))


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers"):
        module = sys.modules.get(package)
        if module is not None:
            versions[package] = getattr(module, "__version__", "?")
    return versions
