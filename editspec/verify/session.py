"""Verify a spec file end to end: pick the model, the edit (an artifact, a fresh compile, or none), run.

This is what `editspec verify` and the pytest plugin call.

Example::

    report = verify_spec("specs/examples/capitals.edit", artifact="build/capitals.rome")
    report = verify_spec("specs/examples/capitals.edit", backend="rome", overrides={"layer": "5"})
    report = verify_spec("specs/examples/capitals.edit", no_edit=True)     # the unedited baseline
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from editspec.errors import EditspecError
from editspec.ir import Spec
from editspec.model.loading import ModelOptions
from editspec.verify.checks import CHAT_TOKENS
from editspec.verify.engine import Report, verify


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def verify_spec(spec: str | os.PathLike | Spec, *, artifact: str | os.PathLike | None = None,
                backend: str | None = None, no_edit: bool = False, model=None,
                overrides: Mapping[str, str] | None = None, seed: int = 0, protocol: str | None = None,
                device: str | None = None, device_map: str | None = None, dtype: str | None = None,
                progress: Callable[[str], None] | None = _say, chat: str = "auto",
                max_new_tokens: int = CHAT_TOKENS, incremental: bool = True,
                model_options: ModelOptions | None = None) -> Report:
    """Verify `spec` with exactly one of `artifact`, `backend` (compile first) or `no_edit`.

    `model` is a name, a path or an already loaded `editspec.model.loading.LoadedModel` (reused, so
    the pytest plugin loads each model once).  Default: the artifact's model, else the spec's
    `model`, else smollm2-135m.  `chat` and `max_new_tokens` are `editspec.verify.verify`'s.
    With `backend`, the compile goes to a temporary directory; when `incremental` and the lock
    beside the spec shows that `editspec compile`'s artifact (`build/<spec>.<backend>`) is current
    except for added edits, only those are compiled, on top of it, as `compile` would.
    `model_options` (or the `device` / `device_map` / `dtype` keywords) say how the model loads.
    """
    from editspec.model.loading import load_model_for
    from editspec.lang.resolve import load_spec

    say = progress or (lambda message: None)
    chosen = [name for name, on in (("--artifact", artifact is not None), ("--backend", backend is not None),
                                    ("--no-edit", no_edit)) if on]
    if len(chosen) != 1:
        raise EditspecError("say what to verify: " + ("give only one of " + ", ".join(chosen) if chosen else
                            "an artifact, a backend to compile with, or the unedited model"),
                            hint="--artifact DIR, --backend B, or --no-edit")
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    options = ModelOptions.of(model_options, device=device, device_map=device_map, dtype=dtype)

    def load(name):
        return load_model_for(spec, name, options, say)

    common = dict(protocol=protocol, seed=seed, chat=chat, max_new_tokens=max_new_tokens)
    if artifact is not None:
        return _verify_artifact(spec, artifact, model, say=say, options=options, common=common)
    loaded = load(model)
    if no_edit:
        return verify(spec, loaded.model, loaded.tokenizer, weights_hash=loaded.weights_hash, model_name=loaded.name,
                      edited_name="unedited", **common)
    from editspec.build.compiler import compile_spec, default_output
    from editspec.build.attach import load_edited

    with tempfile.TemporaryDirectory(prefix="editspec-verify-") as tmp:
        compiled = compile_spec(spec, backend, model=loaded, out=Path(tmp) / "artifact", overrides=overrides or {},
                                seed=seed, progress=say, incremental=incremental,
                                locked_at=default_output(spec, backend) if spec.source else None)
        return verify(spec, loaded.model, loaded.tokenizer, attach=lambda _: load_edited(loaded, compiled),
                      weights_hash=loaded.weights_hash, model_name=loaded.name,
                      edited_name=f"compiled with {backend}", **common)


def _verify_artifact(spec: Spec, artifact, model, *, say, options, common) -> Report:
    from editspec.build.artifact import read_artifact
    from editspec.build.attach import load_artifact_model, load_edited
    from editspec.model.loading import LoadedModel

    art = read_artifact(artifact)
    if art.model is None:
        raise EditspecError(f"{art.path} is a black-box `{art.backend}` artifact; without --upstream, verify checks weight edits",
                            hint="verify it through an API: add --upstream URL (an OpenAI-compatible endpoint, e.g. `editspec serve-model`)")
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        say(f"loading the model of {art.path}")
        loaded = load_artifact_model(art, model, **options.kwargs())
    spec_hash = art.manifest.spec.ir_hash
    if spec_hash and spec_hash != spec.content_hash():
        say(f"note: {art.path} was compiled from another spec than {spec.source}; verifying it against this one")
    return verify(spec, loaded.model, loaded.tokenizer, attach=lambda _: load_edited(loaded, art),
                  weights_hash=loaded.weights_hash, model_name=loaded.name,
                  edited_name=f"{art.backend} artifact {art.path}", **common)
