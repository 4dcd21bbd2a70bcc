"""`editspec apply`: an artifact merged into a standalone HuggingFace checkpoint.

    >>> write_edited_checkpoint("build/capitals.rome", "build/smollm2-capitals")  # doctest: +SKIP
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from editspec.build.artifact import MANIFEST, read_artifact
from editspec.errors import EditspecError

PROVENANCE = "editspec-artifact.json"


def write_edited_checkpoint(artifact, output: str | os.PathLike, *, model=None, device=None, device_map=None,
                            dtype=None, progress: Callable[[str], None] | None = None,
                            model_options=None) -> Path:
    """Load the artifact's model, fold the artifact in, and save it to `output` atomically.

    `output` must not be the base model's directory; the base model's files are only read.
    `model_options` (an `editspec.model.loading.ModelOptions`) or the `device` / `device_map` /
    `dtype` keywords say how the model loads.
    """
    from editspec.cache import atomic_dir
    from editspec.build.attach import backend_of, load_artifact_model
    from editspec.model.loading import ModelOptions

    options = ModelOptions.of(model_options, device=device, device_map=device_map, dtype=dtype)

    say = progress or (lambda message: None)
    artifact = read_artifact(artifact)
    backend = backend_of(artifact)
    if not backend.capabilities.white_box:
        raise EditspecError(f"`{artifact.backend}` artifacts do not change weights, so there is nothing to apply",
                            hint="serve them in front of the model with `editspec serve`")
    output = Path(output)
    _refuse_to_overwrite(output)
    say(f"loading {artifact.model['name']}")
    loaded = load_artifact_model(artifact, model, **options.kwargs())
    if output.resolve() == Path(loaded.path).resolve():
        raise EditspecError("the output is the base model's directory; the base model is never modified",
                            hint="choose a new directory with -o")
    edited = backend.merged(loaded.model, artifact)
    say(f"writing {output}")
    with atomic_dir(output) as work:
        edited.save_pretrained(work)
        loaded.tokenizer.save_pretrained(work)
        shutil.copyfile(artifact.path / MANIFEST, work / PROVENANCE)
    return output


def _refuse_to_overwrite(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not (output / PROVENANCE).is_file():
        raise EditspecError(f"{output} exists and is not an editspec checkpoint; refusing to replace it",
                            hint="choose a new directory with -o")
