"""Black-box editing: plugins that change what an API model answers inside each edit's scope.

    >>> import openai
    >>> from editspec.blackbox import EditedClient
    >>> client = EditedClient(openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x"),
    ...                       "build/leadership.retrieval")                      # doctest: +SKIP
    >>> client.chat.completions.create(model="m", messages=[...])                # doctest: +SKIP

This package is the public face of black-box editing; the machinery lives in
`editspec.families.plugin` (memory, router, templates) and `editspec.serve` (client, proxy).
Names import lazily, so importing the settings (for `editspec check`) needs neither torch nor openai.
"""
from editspec.lazy import lazy_names  # noqa: E402

_LAZY = {"EditedClient": "editspec.serve.client", "Plugin": "editspec.families.plugin.plugin",
         "load_plugin": "editspec.families.plugin.plugin", "verify_api": "editspec.verify.api"}

__getattr__ = lazy_names(__name__, _LAZY)

__all__ = sorted(_LAZY)
