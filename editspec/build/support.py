"""What a backend leaves out of a spec, said once and the same way for every backend.

A backend declares in its `Capabilities` which parts of a spec it compiles (edits, canonical
blocks, forget blocks).  Every part it does not compile gets a warning at its spec line, from
`editspec check --backend B` before compiling and from `compile` itself; nothing is dropped
silently, and the artifact's manifest lists what was left out.

    >>> for warning in unsupported_parts(spec, "rome", capabilities):  # doctest: +SKIP
    ...     print(warning.render())
    specs/examples/erasure.edit:12:1: warning: `rome` does not compile forget blocks; `forget "phone"` is left out
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from editspec.errors import Diagnostic, diagnostic_at

if TYPE_CHECKING:
    from editspec.build.backend import Capabilities
    from editspec.ir import Spec

# Spec part -> how it is named in messages.
_PARTS = {"edits": "edits", "canonical": "canonical blocks", "forget": "forget blocks"}


def nodes_of(spec: "Spec", kind: str) -> list:
    """The IR nodes of one spec part: its edits, canonical blocks or forget blocks."""
    return list({"edits": spec.edits, "canonical": spec.canonical, "forget": spec.forget}[kind])


def unsupported_parts(spec: "Spec", backend: str, capabilities: "Capabilities") -> list[Diagnostic]:
    """A warning at the line of every spec part `backend` does not compile."""
    warnings = []
    for kind, plural in _PARTS.items():
        if capabilities.compiles(kind):
            continue
        for node in nodes_of(spec, kind):
            warnings.append(diagnostic_at(
                node.span, f"`{backend}` does not compile {plural}; {_describe(kind, node)} is left out",
                hint=_hint(kind), severity="warning"))
    return warnings


def backends_compiling(kind: str) -> list[str]:
    """The registered backends that compile spec parts of `kind`."""
    from editspec.build.registry import backends

    return [name for name, entry in backends().items() if entry.capabilities().compiles(kind)]


def _hint(kind: str) -> str:
    able = backends_compiling(kind)
    where = f"compile it with {' or '.join(able)}" if able else "no installed backend compiles it"
    return f"{where}; verify still checks it"


def left_out(spec: "Spec", capabilities: "Capabilities") -> list[dict]:
    """The manifest's record of what was not compiled: kind, name and spec line of each part."""
    return [{"kind": kind, "name": _name(kind, node), "line": node.span.line}
            for kind in _PARTS if not capabilities.compiles(kind) for node in nodes_of(spec, kind)]


def _name(kind: str, node) -> str:
    return node.id if kind == "edits" else node.name


def _describe(kind: str, node) -> str:
    if kind == "edits":
        return f"edit `{node.id}`"
    return f"{'canonical' if kind == 'canonical' else 'forget'} \"{node.name}\""
