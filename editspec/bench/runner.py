"""Compile and verify one spec with several backends and compare them in one table.

The model is loaded once and shared: every white-box compile starts from the unedited weights
(compile never changes them; verification attaches the edit and reverts it, and the bench
checks the weights are bit-identical after each backend).  Black-box plugins (`ike`,
`retrieval`) are verified with the `generate` protocol through an OpenAI-compatible API: the
loaded model served in-process on 127.0.0.1, or `upstream`.  A backend that cannot run is
recorded with its reason and the others still run.  The renderers live in `editspec.bench.render`.

Example::

    result = run_bench("specs/examples/first.edit", ["rome", "ike"])
    print(text(result))          # from editspec.bench.render
    result.exit_code             # 0 all passed, 1 an expectation failed, 2 a backend could not run
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from editspec.errors import EditspecError, did_you_mean
from editspec.ir import Spec
from editspec.model.loading import ModelOptions

MEMORY_NOTE = ("peak MB: the most resident memory (RSS) this process held during the backend's compile and "
               "verify, above its level just before; sampled every 20 ms, with the shared model already loaded")
SAMPLE_SECONDS = 0.02


@dataclass
class BackendRun:
    """One backend's row: what happened, its totals per (metric, protocol), its costs."""

    backend: str
    white_box: bool
    status: str = "error"          # "passed" | "failed" (an expectation failed) | "error" (could not run)
    reason: str = ""
    artifact: str | None = None
    totals: list[dict] = field(default_factory=list)   # {metric, protocol, value, passed, count}
    failed_expectations: list[str] = field(default_factory=list)
    compile_s: float | None = None
    verify_s: float | None = None
    peak_mb: float | None = None
    skipped_checks: int = 0
    built_on: str | None = None    # the locked artifact an incremental compile built on (compile_s is of the added edits)
    kept_by_basis: dict = field(default_factory=dict)  # chat locality {basis: [passed, count]}, verify.judge.kept_by_basis

    def value(self, protocol: str, metric: str) -> float | None:
        """The mean score of `metric` under `protocol`, or None when this backend did not measure it."""
        for t in self.totals:
            if t["protocol"] == protocol and t["metric"] == metric:
                return t["value"]
        return None

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class BenchResult:
    """Every backend's run on one spec and model, in the order they were asked for."""

    spec: str
    model: str
    seed: int
    protocol: str | None
    runs: list[BackendRun]
    out: str
    upstream: str | None = None
    baseline_s: float | None = None
    memory_note: str = MEMORY_NOTE

    def columns(self) -> list[tuple[str, str]]:
        """(protocol, metric) pairs measured by any backend, grouped by protocol, in first-seen order."""
        order: dict[str, list[str]] = {}
        for run in self.runs:
            for t in run.totals:
                metrics = order.setdefault(t["protocol"], [])
                if t["metric"] not in metrics:
                    metrics.append(t["metric"])
        return [(protocol, metric) for protocol, metrics in order.items() for metric in metrics]

    @property
    def exit_code(self) -> int:
        """2 when a backend could not run, else 1 when an expectation failed, else 0."""
        statuses = {run.status for run in self.runs}
        return 2 if "error" in statuses else 1 if "failed" in statuses else 0

    def to_json(self) -> dict:
        return {"spec": self.spec, "model": self.model, "seed": self.seed, "protocol": self.protocol,
                "upstream": self.upstream, "out": self.out, "baseline_s": self.baseline_s,
                "memory_note": self.memory_note, "exit_code": self.exit_code,
                "columns": [{"protocol": p, "metric": m} for p, m in self.columns()],
                "runs": [run.to_json() for run in self.runs]}


class PeakMemory:
    """Samples this process's resident memory in a thread; `.peak_mb` is the peak above the start.

    >>> with PeakMemory() as memory:
    ...     block = bytearray(50 * 2**20)
    >>> memory.peak_mb is None or memory.peak_mb >= 0
    True
    """

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval, self.start, self.peak = interval, None, None
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = resident_bytes()
        if self.start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_bytes() or 0)

    def __exit__(self, *exc) -> None:
        if self.start is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, resident_bytes() or 0)

    @property
    def peak_mb(self) -> float | None:
        return None if self.start is None else (self.peak - self.start) / 2**20


def resident_bytes() -> int | None:
    """This process's resident set size now (Linux /proc, else psutil), or None when unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(ImportError):
        import psutil

        return psutil.Process().memory_info().rss
    return None


def split_overrides(pairs: Mapping[str, str], backends: Sequence[str]) -> dict[str, dict[str, str]]:
    """`--set` pairs per backend: `rome.layer=5` sets one backend, `layer=5` every backend having `layer`.

    >>> split_overrides({"rome.layer": "5", "top_k": "2"}, ["rome", "retrieval"])
    {'rome': {'layer': '5'}, 'retrieval': {'top_k': '2'}}
    """
    from editspec.build.registry import get_backend

    fields = {name: set(get_backend(name).config_class().model_fields) for name in backends}
    chosen: dict[str, dict[str, str]] = {name: {} for name in backends}
    for key, value in pairs.items():
        head, dot, rest = key.partition(".")
        if dot:
            if head not in chosen:
                raise EditspecError(f"--set {key}: `{head}` is not one of --backends ({', '.join(backends)})")
            if rest not in fields[head]:
                raise EditspecError(f"--set {key}: backend `{head}` has no setting `{rest}`",
                                    hint=did_you_mean(rest, fields[head]))
            chosen[head][rest] = value
            continue
        takers = [name for name in backends if key in fields[name]]
        if not takers:
            raise EditspecError(f"--set {key}: none of {', '.join(backends)} has a setting `{key}`",
                                hint=did_you_mean(key, set().union(*fields.values()))
                                or "see `editspec backends` for each backend's settings")
        for name in takers:
            chosen[name][key] = value
    return chosen


def weights_fingerprint(model) -> dict[str, float]:
    """A cheap fingerprint of every parameter (its sum), to catch an edit leaking into the shared model."""
    import torch

    with torch.no_grad():
        return {name: float(p.detach().double().sum()) for name, p in model.named_parameters()}


def run_bench(spec: str | os.PathLike | Spec, backends: Sequence[str], *, model=None,
              out: str | os.PathLike | None = None, overrides: Mapping[str, str] | None = None, seed: int = 0,
              protocol: str | None = None, upstream: str | None = None, api_model: str = "default",
              device: str | None = None, device_map: str | None = None, dtype: str | None = None,
              progress: Callable[[str], None] | None = None, incremental: bool = True,
              model_options: ModelOptions | None = None) -> BenchResult:
    """Compile and verify `spec` with each of `backends`; artifacts go to `out/<backend>`.

    `model` is a name, a path, a loaded `LoadedModel` or None (the spec's `model`, else the
    default).  `overrides` are `--set` pairs (see `split_overrides`).  `protocol` applies to
    white-box backends; black-box ones are always verified with `generate`.  With `upstream`
    (an OpenAI-compatible base URL, model name `api_model`) black-box plugins are verified
    against that API instead of the local model.  When `incremental` and the lock beside the
    spec shows that `editspec compile`'s artifact of a backend is current except for added edits,
    that backend compiles only those, on top of it (its row says `built on`), as `compile` would.
    `model_options` (or the `device` / `device_map` / `dtype` keywords) say how the model loads.
    """
    from editspec.model.loading import LoadedModel, load_model_for
    from editspec.build.registry import get_backend
    from editspec.lang.resolve import load_spec

    say = progress or (lambda message: None)
    if not backends:
        raise EditspecError("no backends to compare", hint="e.g. --backends rome,memit,ike")
    if len(set(backends)) != len(backends):
        raise EditspecError(f"a backend is named twice in {','.join(backends)}")
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    white = {name: get_backend(name).backend_class().capabilities.white_box for name in backends}
    settings = split_overrides(overrides or {}, backends)
    out = Path(out) if out is not None else Path("build") / "bench" / Path(spec.source).stem

    options = ModelOptions.of(model_options, device=device, device_map=device_map, dtype=dtype)

    def load() -> LoadedModel:
        return load_model_for(spec, model, options, say)

    needs_model = any(white.values()) or upstream is None
    loaded = load() if needs_model else None
    result = BenchResult(spec=spec.source, model=loaded.name if loaded else f"{api_model} at {upstream}", seed=seed,
                         protocol=protocol, runs=[], out=str(out), upstream=upstream)
    if any(white.values()):
        result.baseline_s = _warm_baseline(spec, loaded, protocol, seed, say)
    with contextlib.ExitStack() as stack:
        api = _api(stack, loaded, upstream, api_model, say) if not all(white.values()) else None
        for index, name in enumerate(backends, 1):
            tag = f"[{index}/{len(backends)}] {name}"
            say(f"{tag}: compiling")
            before = weights_fingerprint(loaded.model) if loaded is not None and white[name] else None
            run = _run_one(spec, name, white[name], loaded, out / name, settings[name], seed, protocol, api,
                           lambda message, tag=tag: say(f"{tag}: {message}"), incremental)
            if before is not None and weights_fingerprint(loaded.model) != before:
                run.status, run.reason = "error", ("the shared model's weights changed during this backend's compile "
                                                   "or verify (an edit leaked); the model was reloaded for the rest")
                loaded = load_model_for(spec, loaded.path, options)
            result.runs.append(run)
            say(f"{tag}: {_summary(run)}")
    return result


def _warm_baseline(spec: Spec, loaded, protocol: str | None, seed: int, say) -> float:
    """Compute (or read) the unedited observations once, so no backend's verify time includes them."""
    from editspec.verify.engine import baseline, checks_for

    started = time.perf_counter()
    # The checks verify will run on this model, chat ones included, so the cached baseline is theirs.
    checks = checks_for(spec, loaded.tokenizer, protocol=protocol, model_name=loaded.name)
    _, cached = baseline(checks, loaded.model, loaded.tokenizer, weights_hash=loaded.weights_hash, seed=seed)
    seconds = time.perf_counter() - started
    say(f"unedited baseline {'read from the cache' if cached else 'computed'} in {seconds:.1f} s (shared by every backend)")
    return round(seconds, 3)


def _api(stack: contextlib.ExitStack, loaded, upstream: str | None, api_model: str, say) -> tuple[str, str]:
    """(base URL, model name) of the API that black-box plugins are verified through."""
    if upstream is not None:
        return upstream, api_model
    from editspec.serve.http import serve_in_background
    from editspec.serve.model_server import create_model_app

    url = stack.enter_context(serve_in_background(create_model_app(loaded)))
    say(f"serving {loaded.name} at {url} for the black-box backends")
    return url, loaded.name


def _run_one(spec: Spec, name: str, white_box: bool, loaded, out: Path, overrides: dict, seed: int,
             protocol: str | None, api, say, incremental: bool = True) -> BackendRun:
    from editspec.build.compiler import compile_spec, default_output

    run = BackendRun(backend=name, white_box=white_box)
    try:
        with PeakMemory() as memory:
            mark = time.perf_counter()
            artifact = compile_spec(spec, name, model=loaded, out=out, overrides=overrides, seed=seed, progress=say,
                                    incremental=incremental,
                                    locked_at=default_output(spec, name) if spec.source else None)
            run.compile_s, run.artifact = time.perf_counter() - mark, str(artifact.path)
            based_on = artifact.manifest.based_on
            run.built_on = based_on.path if based_on is not None else None
            say("verifying")
            mark = time.perf_counter()
            report = _verify(spec, artifact, loaded, seed, protocol, api, white_box)
            run.verify_s = time.perf_counter() - mark
        run.peak_mb = memory.peak_mb
    except EditspecError as error:
        run.reason = str(error)
        return run
    except Exception as error:  # one backend's crash must not lose the others' rows
        run.reason = (f"internal error: {type(error).__name__}: {error} "
                      f"(`editspec --debug compile ... --backend {name}` shows a traceback)")
        return run
    run.totals = [{"metric": t.metric, "protocol": t.protocol, "value": t.value, "passed": t.passed,
                   "count": t.count} for t in report.totals.values()]
    run.failed_expectations = [f"{v.location}: {v.label} {v.comparator} {v.value:g}" for v in report.verdicts
                               if not v.holds]
    run.skipped_checks = int(report.seconds.get("skipped_checks", 0))
    from editspec.verify.judge import kept_by_basis

    run.kept_by_basis = {basis: list(tally) for basis, tally in kept_by_basis(report.results).items()}
    run.status = "passed" if report.ok else "failed"
    return run


def _verify(spec: Spec, artifact, loaded, seed: int, protocol: str | None, api, white_box: bool):
    if white_box:
        from editspec.verify.session import verify_spec

        return verify_spec(spec, artifact=artifact.path, model=loaded, seed=seed, protocol=protocol, progress=None)
    from editspec.verify.api import verify_api

    url, api_model = api
    return verify_api(spec, url, artifact=artifact, model=api_model)


def _summary(run: BackendRun) -> str:
    if run.status == "error":
        return "could not run: " + run.reason.splitlines()[0]
    memory = f", peak +{run.peak_mb:.0f} MB" if run.peak_mb is not None else ""
    built = f", built on {run.built_on}" if run.built_on else ""
    return f"{run.status} (compile {run.compile_s:.1f} s{built}, verify {run.verify_s:.1f} s{memory})"
