"""IKE's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from pydantic import Field

from editspec.families.plugin.settings import PluginConfig
from editspec.build.backend import Capabilities


# A prompt plugin carries facts, not likelihood or erasure goals.
CAPABILITIES = Capabilities(white_box=False, batch=True, sequential=True, reversible=True)


class IkeConfig(PluginConfig):
    """IKE: in-context demonstrations of copy, update and retain (docs/methods/ike.md)."""

    demonstrations: int = Field(
        16, ge=0, le=64, description="Demonstrations before the query, copy:update:retain = 1:3:4; each lengthens "
        "the prompt (the paper uses 32; docs/methods/ike.md).")
