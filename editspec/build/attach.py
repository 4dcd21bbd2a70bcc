"""Using artifacts: attach one to a model in memory (and take it off again), or load its model.

    >>> import editspec
    >>> loaded = editspec.load_artifact_model("build/capitals.rome")     # doctest: +SKIP
    >>> edited = editspec.load_edited(loaded, "build/capitals.rome")     # doctest: +SKIP
    >>> ...                                                              # run edited.model
    >>> edited.revert()          # the exact inverse: the weights are bit-identical again
"""
from __future__ import annotations

import os
from typing import Any

from editspec.build.artifact import Artifact, read_artifact
from editspec.build.backend import Attachment, Backend
from editspec.errors import EditspecError


def backend_of(artifact: Artifact) -> Backend:
    """The backend object that compiled `artifact` (it must be installed)."""
    from editspec.build.registry import get_backend

    return get_backend(artifact.backend).backend_class()()


def load_edited(model: Any, artifact: str | os.PathLike | Artifact) -> Attachment:
    """Attach `artifact` to `model` in memory; `.revert()` on the result is its exact inverse.

    `model` is an `editspec.model.loading.LoadedModel` (its weights hash is checked against the
    artifact's) or a HuggingFace model object (its `model_type` is checked).  The result's
    `.model` is the model to run; use it as a context manager to revert on exit.
    """
    from editspec.model.loading import LoadedModel

    artifact = read_artifact(artifact)
    module = model.model if isinstance(model, LoadedModel) else model
    expected = artifact.model or {}
    if isinstance(model, LoadedModel):
        if expected.get("weights_hash") and expected["weights_hash"] != model.weights_hash:
            raise EditspecError(
                f"{artifact.path} was compiled for {expected.get('name')}, not for {model.name}",
                hint="load the model the artifact names (`editspec.load_artifact_model`), or compile again",
            )
    else:
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        if expected.get("model_type") and model_type and model_type != expected["model_type"]:
            raise EditspecError(f"{artifact.path} was compiled for a `{expected['model_type']}` model, "
                                f"not a `{model_type}` one")
    return backend_of(artifact).attach(module, artifact)


def load_artifact_model(artifact: str | os.PathLike | Artifact, model: str | os.PathLike | None = None, **options):
    """Load the (unedited) model `artifact` was compiled for, or `model` when given.

    The name is tried first (a known model is fetched into the cache if needed), then the
    path recorded at compile time.  `options` go to `editspec.model.loading.load_model`.
    """
    from editspec.model.loading import KNOWN_MODELS, load_model

    artifact = read_artifact(artifact)
    record = artifact.model
    if record is None:
        raise EditspecError(f"{artifact.path} is a `{artifact.backend}` artifact: it does not belong to a local model")
    if model is None:
        model = record["name"] if record["name"] in KNOWN_MODELS else record["path"]
    loaded = load_model(model, **options)
    if loaded.weights_hash != record["weights_hash"]:
        raise EditspecError(f"{artifact.path} was compiled for other weights than {loaded.name}'s",
                            hint=f"it names {record['name']} at {record['path']}; pass that model with --model")
    return loaded
