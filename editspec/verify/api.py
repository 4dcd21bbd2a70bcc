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

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from editspec.verify.checks import derive_checks
from editspec.verify.engine import Report
from editspec.verify.judge import expectation_verdicts, judge
from editspec.verify.observe import GENERATE_SLACK

_API_METRICS = {"efficacy", "generalization", "locality", "portability", "hard_negatives", "forget"}


def max_tokens_for(answers) -> int:
    """Tokens to generate for a forget check: a generous bound on the longest string, plus slack.

    Without the model's tokenizer, two tokens per word (and one per four characters) bound it.
    """
    longest = max((max(2 * len(a.split()), len(a) // 4 + 1) for a in answers), default=1)
    return longest + GENERATE_SLACK


def verify_api(spec: Any, upstream: str, *, artifact: Any = None, model: str = "default",
               api_key: str | None = None, workers: int = 8, timeout: float = 300.0) -> Report:
    """Run the spec's checks with the `generate` protocol against `upstream` (a base URL).

    `artifact` is an `ike` / `retrieval` artifact (or a loaded plugin); None verifies the
    upstream unedited.  `api_key` defaults to `$OPENAI_API_KEY` (or a placeholder for local
    servers).  Requests run `workers` at a time, greedy (temperature 0).
    """
    import openai

    from editspec.serve.client import EditedClient
    from editspec.lang.resolve import load_spec

    started = time.perf_counter()
    spec = spec if not isinstance(spec, (str, os.PathLike)) else load_spec(spec)
    every = derive_checks(spec, protocol="generate")
    checks = [c for c in every if c.metric in _API_METRICS and c.protocol == "generate"]
    key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
    direct = openai.OpenAI(base_url=upstream, api_key=key, timeout=timeout)
    edited = EditedClient(direct, artifact) if artifact is not None else direct

    def ask(client, check) -> dict:
        answer = client.completions.create(model=model, prompt=check.prompt, temperature=0,
                                           max_tokens=check.max_new_tokens or max_tokens_for(check.answers))
        return {"generated": answer.choices[0].text}

    with ThreadPoolExecutor(workers) as pool:
        base = list(pool.map(lambda c: ask(direct, c), checks))
        seen = list(pool.map(lambda c: ask(edited, c), checks)) if artifact is not None else base
    results = [judge(c, s, b) for c, s, b in zip(checks, seen, base)]
    seconds = {"total": round(time.perf_counter() - started, 3), "skipped_checks": len(every) - len(checks)}
    name = getattr(artifact, "path", artifact)
    return Report(spec=spec.source, model=f"{model} at {upstream}", edited=str(name) if name else "unedited",
                  results=results, verdicts=expectation_verdicts(spec, results), seconds=seconds)
