"""The backend registry: built-in backends and third-party ones from the `editspec.backends`
entry-point group.  Entries name their classes by import path, so looking up a backend's
settings (for `editspec check`) never imports torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache

from editspec.errors import EditspecError, did_you_mean


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend lives: `config` and `backend` are "module:attribute" paths."""

    name: str
    config: str
    backend: str
    summary: str

    def config_class(self):
        return _import(self.config)

    def backend_class(self):
        return _import(self.backend)

    def capabilities(self):
        """What the backend compiles, from its settings module's `CAPABILITIES` (torch-free)
        when it declares them there, else from the backend class."""
        module = importlib.import_module(self.config_class().__module__)
        declared = getattr(module, "CAPABILITIES", None)
        return declared if declared is not None else self.backend_class().capabilities


# The backend names of editspec's design.  `check` accepts settings for one of these even when
# it is not installed yet (it cannot check them); `compile` refuses it with a clear error.
DESIGNED_BACKENDS = ("rome", "memit", "alphaedit", "ultraedit", "ft", "sense", "melo", "grace", "wise", "ike",
                     "retrieval")

# Built-in backends are listed here once they are real (a backend that is not real yet is not
# registered).
_BUILTIN: list[BackendEntry] = [
    BackendEntry("rome", "editspec.backends.rome:RomeConfig", "editspec.backends.rome.backend:RomeBackend",
                 "one rank-one update per fact at one MLP layer (R-ROME by default)"),
    BackendEntry("memit", "editspec.backends.memit:MemitConfig", "editspec.backends.memit.backend:MemitBackend",
                 "many facts in one batch, spread over several MLP layers"),
    BackendEntry("alphaedit", "editspec.backends.alphaedit:AlphaEditConfig",
                 "editspec.backends.alphaedit.backend:AlphaEditBackend",
                 "MEMIT with null-space-projected updates, for sequential batches (--on)"),
    BackendEntry("ultraedit", "editspec.backends.ultraedit:UltraEditConfig",
                 "editspec.backends.ultraedit.backend:UltraEditBackend",
                 "training-free lifelong edits: one forward-backward, a closed-form ridge update, running statistics"),
    BackendEntry("ft", "editspec.backends.ft.config:FtConfig", "editspec.backends.ft.backend:FtBackend",
                 "fine-tuning with KL to the unedited model: a LoRA adapter (peft), or full MLP updates"),
    BackendEntry("grace", "editspec.backends.grace.config:GraceConfig", "editspec.backends.grace.backend:GraceBackend",
                 "a codebook of keys with deferral radii at one layer; inputs outside every radius run unedited"),
    BackendEntry("melo", "editspec.backends.melo.config:MeloConfig", "editspec.backends.melo.backend:MeloBackend",
                 "routed LoRA blocks, one per edit batch; inputs outside every edit cluster run unedited"),
    BackendEntry("wise", "editspec.backends.wise.config:WiseConfig", "editspec.backends.wise.backend:WiseBackend",
                 "side memories at one MLP, routed by an activation margin; edits trained in shards that are merged"),
    BackendEntry("sense", "editspec.backends.sense.config:SenseConfig", "editspec.backends.sense.backend:SenseBackend",
                 "sense fine-tuning: a few Backpack senses, or the most relevant MLP value vectors, with KL"),
    BackendEntry("ike", "editspec.backends.ike.config:IkeConfig", "editspec.backends.ike:IkeBackend",
                 "API models: in-context demonstrations of the edits, behind a scope router"),
    BackendEntry("retrieval", "editspec.backends.retrieval.config:RetrievalConfig",
                 "editspec.backends.retrieval:RetrievalBackend",
                 "API models: retrieved edit facts in an LTE-style prompt, behind a scope router"),
]


def _import(path: str):
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def register(entry: BackendEntry, table: dict[str, BackendEntry]) -> None:
    """Add `entry` to `table`, refusing duplicate or non-lowercase names."""
    if entry.name != entry.name.lower() or not entry.name.replace("_", "").isalnum():
        raise ValueError(f"backend name {entry.name!r} must be lowercase letters, digits and _")
    if entry.name in table:
        raise ValueError(f"backend {entry.name!r} is registered twice")
    table[entry.name] = entry


@lru_cache(maxsize=1)
def backends() -> dict[str, BackendEntry]:
    """Every registered backend by name (built-ins first, then entry points)."""
    table: dict[str, BackendEntry] = {}
    for entry in _BUILTIN:
        register(entry, table)
    from importlib.metadata import entry_points

    for point in entry_points(group="editspec.backends"):
        entry = point.load()
        if isinstance(entry, BackendEntry):
            register(entry, table)
    return table


def get_backend(name: str) -> BackendEntry:
    """The entry for `name`, or an EditspecError suggesting the nearest registered name."""
    table = backends()
    if name not in table:
        hint = did_you_mean(name, table) or "no backends are installed"
        raise EditspecError(f"unknown backend `{name}`", hint=hint)
    return table[name]
