"""Retrieval's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from editspec.families.plugin.settings import PluginConfig
from editspec.build.backend import Capabilities


# A prompt plugin carries facts, not likelihood or erasure goals.
CAPABILITIES = Capabilities(white_box=False, batch=True, sequential=True, reversible=True)


class RetrievalConfig(PluginConfig):
    """Retrieval: top-k edit descriptors in an LTE-style prompt (docs/methods/retrieval.md), behind the router."""
