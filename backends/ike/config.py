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
    chat_turns: bool = Field(
        True, description="Chat requests get the demonstrations as earlier turns, each a user turn (new fact and "
        "prompt) and an assistant turn (its answer), before a last user turn with the edit's new fact and the "
        "question; false: the last user message is replaced by the one-text prompt of `template`, as completions "
        "are (docs/methods/ike.md#chat-requests).")
