"""Counters, gauges and latency histograms for the two servers, written in Prometheus' text format.

A small writer rather than `prometheus_client`: the servers need three metric kinds with a
few labels each, the text format (version 0.0.4) is a stable page of rules, and the servers
keep one registry per app (tests run several apps in one process, which the client library's
global default registry makes awkward).  Updates take a lock: the model server counts from
its worker threads.

>>> metrics = Registry()
>>> served = metrics.counter("editspec_requests_total", "Requests answered, by route and status.",
...                          ("route", "status"))
>>> served.inc(route="/v1/completions", status="200")
>>> print(metrics.render().splitlines()[2])
editspec_requests_total{route="/v1/completions",status="200"} 1
"""
from __future__ import annotations

import bisect
import math
import threading
from typing import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a cached routing decision (milliseconds) to a long CPU generation (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _escape(value: str, quote: bool = True) -> str:
    value = value.replace("\\", "\\\\").replace("\n", "\\n")
    return value.replace('"', '\\"') if quote else value


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2 ** 53 else repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str], lock: threading.Lock):
        self.name, self.help, self.label_names, self._lock = name, help_text, tuple(labels), lock
        self._values: dict[tuple[str, ...], object] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape(self.help, quote=False)}",
                f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A count that only goes up (requests, retries, edits applied)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0)

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A value read when scraped (requests in flight, waiting, whether the model is loaded)."""

    kind = "gauge"

    def __init__(self, name, help_text, labels, lock, read: Callable[[], float]):
        super().__init__(name, help_text, labels, lock)
        self.read = read

    def lines(self) -> list[str]:
        return [f"{self.name} {_number(float(self.read()))}"]


class Histogram(_Metric):
    """Observed durations in cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name, help_text, labels, lock, buckets: Sequence[float] = LATENCY_BUCKETS):
        super().__init__(name, help_text, labels, lock)
        self.bounds = tuple(sorted(buckets))

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._values.get(key, ([0] * (len(self.bounds) + 1), 0.0))
            counts[bisect.bisect_left(self.bounds, value)] += 1
            self._values[key] = (counts, total + value)

    def lines(self) -> list[str]:
        out = []
        for key, (counts, total) in sorted(self._values.items()):
            running = 0
            for bound, count in zip((*self.bounds, math.inf), counts):
                running += count
                le = 'le="' + _number(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return out


class Registry:
    """The metrics of one server, rendered together for `GET /metrics`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._metrics: list[_Metric] = []

    def _add(self, metric: _Metric):
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labels, self._lock))

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> Gauge:
        return self._add(Gauge(name, help_text, (), self._lock, read))

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help_text, labels, self._lock, buckets))

    def render(self) -> str:
        """Every metric in the text exposition format, ending with a newline."""
        with self._lock:
            lines = [line for metric in self._metrics for line in (*metric.header(), *metric.lines())]
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """What both servers count: requests by route and status, their latency, refusals by reason."""

    def __init__(self, prefix: str):
        self.prefix, self.registry = prefix, Registry()
        self.requests = self.registry.counter(
            f"{prefix}_requests_total", "Requests answered, by route and HTTP status.", ("route", "status"))
        self.latency = self.registry.histogram(
            f"{prefix}_request_duration_seconds", "Time from a request's arrival to the end of its answer, "
            "streamed answers included.", ("route",))
        self.refused = self.registry.counter(
            f"{prefix}_refused_total", "Requests refused before any work: body too large, too many waiting, "
            "not ready, timed out.", ("reason",))

    def watch(self, admission, state) -> None:
        """Gauges read from the guard's turns and the server's state at each scrape."""
        self.registry.gauge(f"{self.prefix}_requests_in_flight", "Requests being worked on.",
                            lambda: admission.active)
        self.registry.gauge(f"{self.prefix}_requests_waiting", "Requests waiting for a turn.",
                            lambda: admission.waiting)
        self.registry.gauge(f"{self.prefix}_ready", "1 while the server takes requests (loaded, not draining).",
                            lambda: float(state.accepting()))

    def render(self) -> str:
        return self.registry.render()
