"""Renderers of a `BenchResult`: a terminal table, Markdown, JSON and a matplotlib bar chart.

Metrics are grouped by protocol and never averaged across protocols; every format says what
the time and memory columns measure.

Example::

    print(text(result))
    Path("bench.md").write_text(markdown(result))
    plot(result, "bench.png")        # needs matplotlib (pip install 'editspec[plot]')
"""
from __future__ import annotations

import json
import os

from editspec.bench.runner import BackendRun, BenchResult
from editspec.errors import EditspecError

MISSING = "—"
VALUES_NOTE = "metric cells: mean score per check (what `expect` compares), by protocol; — = not measured"


def _cells(result: BenchResult, run: BackendRun) -> list[str]:
    values = [run.value(protocol, metric) for protocol, metric in result.columns()]
    cells = [MISSING if v is None else f"{v:.3f}" for v in values]
    costs = [run.compile_s, run.verify_s]
    cells += [MISSING if c is None else f"{c:.2f}" if c < 10 else f"{c:.1f}" for c in costs]
    cells.append(MISSING if run.peak_mb is None else f"{run.peak_mb:.0f}")
    return [run.backend, run.status] + cells


_COSTS = ["compile s", "verify s", "peak MB"]


def _notes(result: BenchResult) -> list[str]:
    baseline = (f"the unedited baseline took {result.baseline_s:.1f} s once, shared"
                if result.baseline_s is not None else "no white-box backend")
    lines = [VALUES_NOTE,
             f"verify s: white-box = the edited pass ({baseline}); black-box = unedited and edited passes "
             f"through the API ({result.upstream or 'the model served in-process'}, generate protocol)",
             result.memory_note]
    built = [f"{r.backend} on {r.built_on}" for r in result.runs if r.built_on]
    if built:
        lines.append("compile s of an incremental compile (the lock showed only added edits) is of the added edits: "
                     + ", ".join(built) + " (--fresh compiles every edit)")
    skipped = [f"{r.backend} {r.skipped_checks}" for r in result.runs if r.skipped_checks]
    if skipped:
        lines.append("checks an API cannot run (likelihood, preserve, fluency), left out: " + ", ".join(skipped))
    return lines


def _problems(result: BenchResult) -> list[tuple[str, str]]:
    out = []
    for run in result.runs:
        if run.status == "error":
            out.append((run.backend, "could not run: " + run.reason))
        for expectation in run.failed_expectations:
            out.append((run.backend, "expectation failed: " + expectation))
    return out


def _title(result: BenchResult) -> str:
    return (f"bench {result.spec} on {result.model}, seed {result.seed}"
            + (f", protocol {result.protocol}" if result.protocol else "") + f" (artifacts in {result.out})")


def text(result: BenchResult) -> str:
    """A plain-text table: one row per backend, metric columns grouped under their protocol.

    Failures and the reasons a backend could not run are listed under the table.
    """
    columns = result.columns()
    header = ["backend", "status"] + [metric for _, metric in columns] + _COSTS
    rows = [header] + [_cells(result, run) for run in result.runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # Widen a protocol group's last column when the protocol name is wider than the group.
    groups: dict[str, list[int]] = {}
    for i, (protocol, _) in enumerate(columns, 2):
        groups.setdefault(protocol, []).append(i)
    for protocol, members in groups.items():
        span = sum(widths[i] for i in members) + 2 * (len(members) - 1)
        widths[members[-1]] += max(0, len(protocol) - span)
    top = [""] * len(header)
    for protocol, members in groups.items():
        top[members[0]] = protocol
    lines = [_title(result), ""]
    group_line = ""
    for i, label in enumerate(top):
        group_line = group_line.ljust(sum(widths[:i]) + 2 * i) + label
    lines.append(group_line.rstrip())
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += [""] + _notes(result)
    problems = _problems(result)
    if problems:
        lines += ["", "problems:"]
        for backend, message in problems:
            first, *rest = message.splitlines()
            lines.append(f"  {backend}: {first}")
            lines += [f"    {line}" for line in rest]
    verdict = {0: "PASSED: every backend ran and met the spec's expectations",
               1: "FAILED: an expectation failed", 2: "ERROR: a backend could not run"}[result.exit_code]
    lines += ["", verdict]
    return "\n".join(lines)


def _md(cell: str) -> str:
    return " ".join(cell.split()).replace("|", "\\|")


def markdown(result: BenchResult) -> str:
    """A Markdown table (GitHub flavour), a metric column per `metric (protocol)`, with the notes."""
    columns = result.columns()
    header = ["backend", "status"] + [f"{metric} ({protocol})" for protocol, metric in columns] + _COSTS
    lines = [f"### {_md(_title(result))}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in _cells(result, run)) + " |" for run in result.runs]
    lines += [""] + [f"- {_md(note)}" for note in _notes(result)]
    problems = _problems(result)
    if problems:
        lines += [""] + [f"- **{backend}**: {_md(message.splitlines()[0])}" for backend, message in problems]
    return "\n".join(lines) + "\n"


def to_json(result: BenchResult) -> str:
    """The whole result (every run's totals with pass counts, costs, reasons) as JSON."""
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or an `EditspecError` saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EditspecError("--plot needs matplotlib, which is not installed",
                            hint="pip install 'editspec[plot]'  (or: pip install matplotlib)") from None
    return plt


def plot(result: BenchResult, path: str | os.PathLike) -> None:
    """A PNG bar chart: each metric (protocol) per backend, and compile/verify seconds per backend.

    Needs matplotlib; without it, an `EditspecError` says how to install it.
    """
    plt = pyplot()
    # Scores in [0, 1] share one axis; fluency entropy and preserve budgets are on other scales (table only).
    columns = [c for c in result.columns()
               if all(v is None or 0 <= v <= 1 for v in (run.value(*c) for run in result.runs))]
    runs = result.runs
    width = 0.8 / max(1, len(runs))
    figure, (scores, costs) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(columns) + 5), 4.5),
                                           gridspec_kw={"width_ratios": [max(1, len(columns)), 2]})
    for k, run in enumerate(runs):
        values = [run.value(protocol, metric) for protocol, metric in columns]
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(columns))]
        label = run.backend + ("" if run.status != "error" else " (could not run)")
        scores.bar(xs, [float("nan") if v is None else v for v in values], width, label=label)  # nan: no bar
    scores.set_xticks(range(len(columns)), [f"{m}\n({p})" for p, m in columns], fontsize=8)
    scores.set_ylim(0, 1.05)
    scores.set_ylabel("mean score")
    left_out = [f"{m} ({p})" for p, m in result.columns() if (p, m) not in columns]
    scores.set_title(f"{os.path.basename(result.spec)} on {result.model}"
                     + (f"\nnot drawn (other scales): {', '.join(left_out)}" if left_out else ""), fontsize=9)
    scores.legend(fontsize=8)
    names = [run.backend for run in runs]
    compile_s = [run.compile_s or 0 for run in runs]
    costs.bar(names, compile_s, label="compile")
    costs.bar(names, [run.verify_s or 0 for run in runs], bottom=compile_s, label="verify")
    costs.set_ylabel("seconds")
    costs.set_title("time", fontsize=10)
    costs.tick_params(axis="x", labelsize=8, rotation=30)
    costs.legend(fontsize=8)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=120)
    except OSError as error:
        raise EditspecError(f"cannot write the plot to {path}: {error.strerror}") from None
    finally:
        plt.close(figure)
