"""Verify a spec on a model: the unedited baseline (cached), the edited run, the verdicts.

One engine (`run`) for every model: it takes observers (`editspec.verify.observers`: a local
model, its chat template, an API) and runs each kind of check (`editspec.verify.kinds`) on
them; `verify` is the local model's entry point, `editspec.verify.api.verify_api` the API's.

The baseline is the unedited model's observations, computed before any edit is attached
(EasyEdit #643: a "baseline" taken after an in-place edit is no baseline) and cached under
``cache_dir("verify", "baselines")``, keyed by the model's weights hash, the check set's content
hash, the protocols and the seed.  A model without a weights hash is never cached.

Example::

    loaded = load_model()
    report = verify(load_spec("specs/examples/capitals.edit"), loaded.model, loaded.tokenizer,
                    weights_hash=loaded.weights_hash, attach=lambda m: load_edited(m, "build/capitals.rome"))
    report.exit_code       # 0 when every expectation holds, else 1
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

from editspec import __version__, ir
from editspec.cache import atomic_write, cache_dir
from editspec.ir import stable_hash
from editspec.errors import EditspecError
from editspec.verify.checks import CHAT_TOKENS, FACT_METRICS, Check, checks_hash, derive_checks
from editspec.verify.judge import (CheckResult, Verdict, expectation_verdicts, judge, kept_by_basis,
                                   metric_totals)
from editspec.verify.kinds import observe_all, references
from editspec.verify.observers import LocalObserver, Observer
from editspec.model.chat import chat_enabled, has_chat_template

# Bump when observations change meaning, so old cached baselines are not trusted.
BASELINE_FORMAT = 2


@dataclass
class Report:
    """Everything a verification found: per-check results, totals per metric and protocol, verdicts."""

    spec: str
    model: str
    edited: str
    results: list[CheckResult]
    verdicts: list[Verdict]
    baseline_cached: bool = False
    seconds: dict = field(default_factory=dict)

    @property
    def totals(self):
        return metric_totals(self.results)

    @property
    def ok(self) -> bool:
        return all(v.holds for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        """0 when every expectation (and preserve budget) holds, 1 when one fails."""
        return 0 if self.ok else 1

    def to_json(self) -> dict:
        return {
            "spec": self.spec, "model": self.model, "edited": self.edited, "ok": self.ok,
            "baseline_cached": self.baseline_cached, "seconds": self.seconds,
            "totals": [{"metric": t.metric, "protocol": t.protocol, "value": t.value, "passed": t.passed,
                        "count": t.count} for t in self.totals.values()],
            "expectations": [v.to_json() for v in self.verdicts],
            "chat_locality_by_basis": {basis: {"passed": passed, "count": count}
                                       for basis, (passed, count) in kept_by_basis(self.results).items()},
            "checks": [r.to_json() for r in self.results],
        }


def baseline_key(weights_hash: str, checks: list[Check], seed: int) -> str:
    """The cache key of a baseline: model weights, what the checks measure, protocols, seed."""
    protocols = sorted({c.protocol for c in checks})
    return stable_hash({"format": BASELINE_FORMAT, "weights": weights_hash, "checks": checks_hash(checks),
                        "protocols": protocols, "seed": seed})


def _baseline_path(checks: list[Check], model, tokenizer, weights_hash: str | None, seed: int) -> Path | None:
    if not weights_hash:
        return None
    # The same weights in another dtype or on another kind of device score (slightly) differently.
    parameter = next(model.parameters())
    where = f"{weights_hash}:{parameter.dtype}:{parameter.device.type}"
    if any(c.protocol == "chat" for c in checks):  # the template is part of what a chat check asks
        where += ":" + stable_hash(getattr(tokenizer, "chat_template", None))
    return cache_dir("verify", "baselines") / f"{baseline_key(where, checks, seed)}.json"


def _cached(path: Path | None, compute: Callable[[], dict]) -> tuple[dict[str, dict], bool]:
    """Observations read from `path`, else computed (and written there); and whether they were read."""
    if path is not None:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if data.get("format") == BASELINE_FORMAT:
                return data["observations"], True
    seen = compute()
    if path is not None:
        with atomic_write(path, "w") as handle:
            json.dump({"format": BASELINE_FORMAT, "editspec": __version__, "observations": seen}, handle)
    return seen, False


def baseline(checks: list[Check], model, tokenizer, *, weights_hash: str | None, seed: int = 0,
             batch_size: int = 32) -> tuple[dict[str, dict], bool]:
    """The unedited model's observations and whether they came from the cache.

    `model` must be unedited.  With a `weights_hash` the observations are read from, or
    written to, the baseline cache.
    """
    observer = LocalObserver(model, tokenizer, seed=seed, batch_size=batch_size)
    return _cached(_baseline_path(checks, model, tokenizer, weights_hash, seed), lambda: observe_all(checks, observer))


def run(spec: ir.Spec, checks: list[Check], base: Observer,
        edited: Callable[[], ContextManager[Observer]] | None = None, *, cache: Path | None = None,
        model_name: str = "", edited_name: str = "") -> Report:
    """The verification engine: `checks` observed on the unedited `base` and on `edited`, judged, reported.

    `edited()` is entered once, after the baseline (and the references the kinds keep of the
    unedited model) are taken, and yields the observer of the edited model; None verifies
    the unedited model.  Checks `base` cannot observe (an API has no log-probabilities) are
    left out and, for a `partial` observer, counted in `seconds["skipped_checks"]`.  With a
    `cache` path the baseline is read from, or written to, it.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    usable = [c for c in checks if base.supports(c)]
    unedited, cached = _cached(cache, lambda: observe_all(usable, base))
    timings["baseline"] = time.perf_counter() - started
    refs = references(usable, base)
    if edited is None:
        seen = observe_all(usable, base, refs) if refs else unedited
    else:
        mark = time.perf_counter()
        with edited() as observer:
            timings["attach"] = time.perf_counter() - mark
            seen = observe_all(usable, observer, refs)
    timings["edited"] = time.perf_counter() - started - timings["baseline"]
    results = [judge(c, seen[c.id], unedited[c.id], base.tokenizer) for c in usable]
    timings["total"] = time.perf_counter() - started
    seconds: dict = {k: round(v, 3) for k, v in timings.items()}
    if base.partial:
        seconds["skipped_checks"] = len(checks) - len(usable)
    return Report(spec=spec.source, model=model_name, edited=edited_name or ("unedited" if edited is None else "edited"),
                  results=results, verdicts=expectation_verdicts(spec, results), baseline_cached=cached,
                  seconds=seconds)


def checks_for(spec: ir.Spec, tokenizer, *, protocol: str | None = None, chat: str = "auto",
               max_new_tokens: int = CHAT_TOKENS, model_name: str = "") -> list[Check]:
    """The checks `verify` runs on a local model with this tokenizer (chat ones when it has a template).

    An expectation that names `chat` on a model without a chat template stops here, at its line.
    """
    if not has_chat_template(tokenizer):
        asking = next((e for e in spec.expect if e.protocol == "chat"), None)
        if asking is not None:
            raise EditspecError(f"{asking.span.file}:{asking.span.line}: `{asking.label}` needs an instruct model, "
                                f"and the tokenizer of {model_name or 'this model'} has no chat template",
                                hint="verify a model with a chat template, or drop the `[chat]` expectation")
    return derive_checks(spec, protocol=protocol, chat=chat_enabled(tokenizer, chat), max_new_tokens=max_new_tokens)


def verify(spec: ir.Spec, model, tokenizer, *, attach: Callable | None = None, weights_hash: str | None = None,
           protocol: str | None = None, seed: int = 0, batch_size: int = 32, model_name: str = "",
           edited_name: str = "", chat: str = "auto", max_new_tokens: int = CHAT_TOKENS,
           metrics: Sequence[str] | None = None) -> Report:
    """Run every check of `spec` on a local `model` with the edit from `attach` (None: the unedited model).

    `attach(model)` must return a context manager (an `Attachment`) whose `.model` is the
    edited model and whose exit restores the base weights; the baseline is taken before it.
    For a tokenizer with a chat template, `chat="auto"` adds the `chat` protocol's fact checks
    beside the default ones (replies of at most `max_new_tokens`); `chat="off"` leaves them out.
    `metrics` keeps only the checks of those metrics (e.g. `FACT_METRICS`).

    >>> verify(spec, model, tokenizer).exit_code   # unedited: efficacy fails  # doctest: +SKIP
    1
    """
    checks = checks_for(spec, tokenizer, protocol=protocol, chat=chat, max_new_tokens=max_new_tokens,
                        model_name=model_name)
    if metrics is not None:
        checks = [c for c in checks if c.metric in metrics]

    @contextlib.contextmanager
    def attached():
        with attach(model) as attachment:
            edited = getattr(attachment, "model", None) or model
            yield LocalObserver(edited, tokenizer, seed=seed, batch_size=batch_size)

    return run(spec, checks, LocalObserver(model, tokenizer, seed=seed, batch_size=batch_size),
               attached if attach is not None else None,
               cache=_baseline_path(checks, model, tokenizer, weights_hash, seed), model_name=model_name,
               edited_name=edited_name)


def chat_results(spec: ir.Spec, model, tokenizer, *, attach: Callable | None = None, weights_hash: str | None = None,
                 max_new_tokens: int = CHAT_TOKENS, batch_size: int = 32) -> list[CheckResult]:
    """The fact checks of `spec` under the `chat` protocol only: one `CheckResult` per question asked.

    What a benchmark needs to score chat efficacy / generalization / locality / portability
    (`result.check.metric`, `result.passed`, `result.scores["generated"]` and
    `["unedited_generated"]`); `attach` as for `verify`.

    >>> results = chat_results(spec, loaded.model, loaded.tokenizer, attach=lambda m: load_edited(loaded, art))  # doctest: +SKIP
    >>> sum(r.passed for r in results if r.check.metric == "efficacy")                                      # doctest: +SKIP
    19
    """
    return verify(spec, model, tokenizer, attach=attach, weights_hash=weights_hash, protocol="chat",
                  max_new_tokens=max_new_tokens, batch_size=batch_size, metrics=FACT_METRICS).results
