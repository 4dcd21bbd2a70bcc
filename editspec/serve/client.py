"""`EditedClient`: an OpenAI client that applies a black-box plugin to its requests.

A drop-in for `client.chat.completions.create(...)` and `client.completions.create(...)`
(streaming too, since the response is the wrapped client's own).  When an edit applies, the
last user message (or the prompt) is rewritten before the call; otherwise the call goes to
the wrapped client exactly as made.  Everything else (`models`, `embeddings`, ...) is the
wrapped client's.  Works with `openai.AsyncOpenAI` too: `create` then returns its coroutine.

>>> import openai
>>> client = EditedClient(openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x"),
...                       "build/leadership.retrieval")                    # doctest: +SKIP
>>> client.chat.completions.create(model="smollm2-135m", temperature=0,
...     messages=[{"role": "user", "content": "Who is the CEO of Twitter?"}])  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any


class _Create:
    """`create()` of one endpoint, with the plugin applied to the keyword named `field`."""

    def __init__(self, owner: "EditedClient", endpoint: Any, rewrite: str, field: str):
        self._owner, self._endpoint, self._rewrite, self._field = owner, endpoint, rewrite, field

    def create(self, **kwargs):
        """The wrapped `create(**kwargs)`, with the request rewritten when an edit applies."""
        changed = getattr(self._owner.plugin, self._rewrite)({self._field: kwargs.get(self._field)})
        if changed is not None:
            body, applied = changed
            kwargs = {**kwargs, self._field: body[self._field]}
            self._owner.last_applied = applied
        else:
            self._owner.last_applied = []
        return self._endpoint.create(**kwargs)

    def __getattr__(self, name: str):
        return getattr(self._endpoint, name)


class _Chat:
    def __init__(self, owner: "EditedClient"):
        self.completions = _Create(owner, owner.client.chat.completions, "rewrite_chat", "messages")

    def __getattr__(self, name: str):
        return getattr(self.completions._owner.client.chat, name)


class EditedClient:
    """Wraps an `openai.OpenAI` (or `AsyncOpenAI`) client with the plugin of `artifact`.

    `artifact` is an `ike` or `retrieval` artifact directory, an `Artifact`, or a loaded
    `Plugin`.  `last_applied` lists the edit ids the most recent call applied (per client,
    so use one client per thread when that matters).
    """

    def __init__(self, client: Any, artifact: Any):
        from editspec.families.plugin.plugin import load_plugin

        self.client = client
        self.plugin = load_plugin(artifact)
        self.last_applied: list[str] = []
        self.chat = _Chat(self)
        self.completions = _Create(self, client.completions, "rewrite_completion", "prompt")

    def __getattr__(self, name: str):
        return getattr(self.client, name)
