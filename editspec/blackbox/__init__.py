"""Black-box editing: plugins that change what an API model answers inside each edit's scope.

    >>> import openai
    >>> from editspec.blackbox import EditedClient
    >>> client = EditedClient(openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x"),
    ...                       "build/leadership.retrieval")                      # doctest: +SKIP
    >>> client.chat.completions.create(model="m", messages=[...])                # doctest: +SKIP

Names import lazily, so importing the settings (for `editspec check`) needs neither torch nor openai.
"""
_LAZY = {"EditedClient": "editspec.blackbox.client", "Plugin": "editspec.blackbox.plugin",
         "load_plugin": "editspec.blackbox.plugin"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
