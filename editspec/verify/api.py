"""Verify a spec through an OpenAI-compatible API: the verifier's `generate` protocol, over HTTP.

The unedited answers come from the upstream as it is; the edited ones through the plugin (the
same rewriting the proxy does), so the report says what callers of `editspec serve` will see.
Checks the API cannot express (likelihood thresholds, preservation loss, fluency sampling)
are left out and counted in `report.seconds["skipped_checks"]`, never silently passed.

>>> report = verify_api("specs/examples/leadership.edit", "http://127.0.0.1:8000/v1",
...                     artifact="build/lead.retrieval")                     # doctest: +SKIP
>>> report.exit_code                                                        # doctest: +SKIP
0
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

from editspec.verify.checks import derive_checks
from editspec.verify.engine import Report, run
from editspec.verify.observers import ApiObserver


def verify_api(spec: Any, upstream: str, *, artifact: Any = None, model: str = "default",
               api_key: str | None = None, workers: int = 8, timeout: float = 300.0) -> Report:
    """Run the spec's checks with the `generate` protocol against `upstream` (a base URL).

    `artifact` is an `ike` / `retrieval` artifact (or a loaded plugin); None verifies the
    upstream unedited.  `api_key` defaults to `$OPENAI_API_KEY` (or a placeholder for local
    servers).  Requests run `workers` at a time, greedy (temperature 0).  The same engine as a
    local verify runs the checks (`editspec.verify.engine.run`) on two `ApiObserver`s: the
    upstream as it is, and the upstream through the plugin; an expectation naming `chat` asks
    through `/v1/chat/completions`.
    """
    import openai

    from editspec.lang.resolve import load_spec
    from editspec.serve.client import EditedClient

    spec = spec if not isinstance(spec, (str, os.PathLike)) else load_spec(spec)
    key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
    direct = openai.OpenAI(base_url=upstream, api_key=key, timeout=timeout)
    base = ApiObserver(direct, model, workers=workers)
    edited = None
    if artifact is not None:
        through = ApiObserver(EditedClient(direct, artifact), model, workers=workers)
        edited = lambda: contextlib.nullcontext(through)  # noqa: E731
    name = getattr(artifact, "path", artifact)
    return run(spec, derive_checks(spec, protocol="generate"), base, edited, model_name=f"{model} at {upstream}",
               edited_name=str(name) if name else "unedited")
