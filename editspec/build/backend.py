"""What a backend is: a name, a described config, capabilities, `compile()` and `attach()`.

A backend is mostly settings (docs/adding-a-backend.md).  The compiler
(`editspec.build.compiler`) does everything around it: loading the spec and model, building the
config from the spec's `backend` block and `--set` overrides, applying a previous artifact, and
writing the artifact atomically.  The backend only turns edits into payload files inside
`job.workdir`.

Example, the smallest useful backend::

    class Nothing(Backend):
        name = "nothing"
        config_class = NothingConfig
        capabilities = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)
        # edits only: canonical and forget blocks get a warning at their line (editspec.build.support)

        def compile(self, job):
            return CompileResult(files=[])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from editspec.errors import EditspecError

if TYPE_CHECKING:
    from editspec.build.artifact import Artifact
    from editspec.ir import Edit, Spec
    from editspec.model.loading import LoadedModel


class Capabilities(BaseModel):
    """What a backend can do; printed by `editspec compile --help` and stored in manifests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    white_box: bool = Field(description="Edits the model's weights (or adds modules to it); needs a local model.")
    batch: bool = Field(description="Edits many facts in one computation.")
    sequential: bool = Field(description="`--on PREVIOUS` adds new edits to an earlier artifact.")
    reversible: bool = Field(description="The edit can be removed exactly (`Attachment.revert`).")
    edits: bool = Field(True, description="Compiles `edit` and `edits` declarations (facts to rewrite).")
    canonical: bool = Field(False, description="Compiles `canonical` blocks (behaviour taught from examples).")
    forget: bool = Field(False, description="Compiles `forget` blocks (strings pushed out of the model).")

    def compiles(self, kind: str) -> bool:
        """Whether a spec part of `kind` ("edits", "canonical", "forget") reaches the payload."""
        return bool(getattr(self, kind))


@dataclass
class CompileJob:
    """Everything a backend's `compile()` gets.

    `edits` are the edits to compile now: all of the spec's, or with `--on` only the new ones.
    `previous` is then the earlier artifact and `attachment` that artifact attached to `model`
    (for backends whose `attach_previous` is true; the compiler reverts it afterwards).  The
    backend writes its payload under `workdir` and lists the files it wrote in its result.
    """

    spec: "Spec"
    edits: tuple["Edit", ...]
    model: "LoadedModel | None"
    config: Any
    seed: int
    workdir: Path
    previous: "Artifact | None" = None
    attachment: "Attachment | None" = None
    prepared: dict[str, Any] = field(default_factory=dict)  # what `prepare()` returned
    progress: Callable[[str], None] = lambda message: None


@dataclass
class CompileResult:
    """What `compile()` wrote (`files`, relative to the workdir) and what is worth logging."""

    files: list[str]
    edits: list[dict] = field(default_factory=list)  # per edit: {"id": ..., numbers}
    details: dict[str, Any] = field(default_factory=dict)


class Attachment:
    """An artifact attached to a model in memory; `revert()` undoes it exactly.

    Use as a context manager to revert on exit.  `model` is the model to run (the same
    object for weight edits; a wrapper for adapter backends).
    """

    model: Any

    def revert(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.revert()


class Backend:
    """Base class of every backend.  Subclasses set the class attributes and `compile()`."""

    name: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    capabilities: ClassVar[Capabilities]
    needs_model: ClassVar[bool] = True
    # Whether `compile()` runs with the previous artifact attached (`job.attachment`).  A memory
    # that is rebuilt whole from the previous artifact's files sets this False.
    attach_previous: ClassVar[bool] = True

    def prepare(self, job: CompileJob) -> dict[str, Any]:
        """Work that must see the *unedited* model (statistics, sampled templates).

        Called before a previous artifact is attached; the result reaches `compile()` as
        `job.prepared`.
        """
        return {}

    def compile(self, job: CompileJob) -> CompileResult:  # pragma: no cover - interface
        raise NotImplementedError

    def attach(self, model: Any, artifact: "Artifact") -> Attachment:
        """Apply `artifact` to `model` (an nn.Module) in memory, reversibly."""
        raise EditspecError(
            f"`{self.name}` artifacts do not change a model's weights",
            hint="a black-box artifact is used through `editspec serve` or `editspec.blackbox.EditedClient`",
        )

    def merged(self, model: Any, artifact: "Artifact") -> Any:
        """`model` with `artifact` folded in for good, ready for `save_pretrained` (`editspec apply`)."""
        return self.attach(model, artifact).model
