"""Reports of a verification: a terminal table, JSON, JUnit XML (for CI) and Markdown (for a PR).

Every format names the protocol of each number and points failures at the spec line that
declared them.

Example::

    print(terminal(report))
    Path("verify.xml").write_text(junit(report))
    Path("summary.md").write_text(markdown(report))
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from editspec.verify.answers import why_failed
from editspec.verify.engine import Report
from editspec.verify.judge import CheckResult, kept_by_basis

_MAX_TEXT = 60


def _short(text: str, width: int = _MAX_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def expected_text(r: CheckResult) -> str:
    """What the check expects, as its kind renders it ("Rome over Paris", "not Klingon", "<= 0.05")."""
    from editspec.verify.kinds import kind_of

    return kind_of(r.check).expected(r.check)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _total_rows(report: Report) -> list[list[str]]:
    """One row per (metric, protocol); side by side (a column per protocol) when a metric has several."""
    totals = list(report.totals.values())
    per_metric: dict[str, dict[str, object]] = {}
    for t in totals:
        per_metric.setdefault(t.metric, {})[t.protocol] = t
    if all(len(p) == 1 for p in per_metric.values()):
        rows = [["metric", "protocol", "value", "passed"]]
        return rows + [[t.metric, t.protocol, f"{t.value:.3f}", f"{t.passed}/{t.count}"] for t in totals]
    protocols = list(dict.fromkeys(t.protocol for t in totals))
    rows = [["metric", *protocols]]
    for metric, mine in per_metric.items():
        rows.append([metric, *(f"{mine[p].value:.3f} ({mine[p].passed}/{mine[p].count})" if p in mine else "-"
                               for p in protocols)])
    return rows


def _unread_failures(report: Report) -> list[str]:
    """`metric[protocol]` of each failing alongside check (chat) that no expectation reads."""
    return [f"{r.check.metric}[{r.check.protocol}]" for r in report.results
            if r.check.alongside and not r.passed and not any(v.reads(r.check) for v in report.verdicts)]


def terminal(report: Report, *, show_passed: bool = True) -> str:
    """The report as plain text: checks, totals per metric and protocol, expectations.

    Each failing check and expectation starts with its spec `file:line`.
    """
    lines = [f"verify {report.spec} on {report.model or 'model'} ({report.edited})"
             + (" [baseline from cache]" if report.baseline_cached else "")]
    rows = [["", "check", "metric", "protocol", "prompt", "expected", "got"]]
    for r in report.results:
        if r.passed and not show_passed:
            continue
        rows.append(["ok" if r.passed else "FAIL", r.check.id, r.check.metric, r.check.protocol,
                     _short(r.check.prompt, 40), _short(expected_text(r), 40), _short(r.got, 30)])
    lines += [""] + _table(rows)
    failures = [r for r in report.results if not r.passed]
    if failures:
        lines += ["", "failures:"]
        lines += [f"  {r.check.location}: {r.check.id} ({r.check.metric}, {r.check.protocol}): "
                  f"expected {_short(expected_text(r))}, got {_short(r.got)}"
                  + (f" [{why}]" if (why := why_failed(r.scores)) else "") for r in failures]
    lines += ["", "totals (never averaged across protocols):"] + ["  " + x for x in _table(_total_rows(report))]
    split = kept_by_basis(report.results)
    if split:
        lines.append("  locality[chat] by what the unedited reply said: "
                     + ", ".join(f"{basis} {passed}/{count}" for basis, (passed, count) in split.items())
                     + " (keep answer: the unedited model knew the fact)")
    if report.verdicts:
        lines += ["", "expectations:"]
        for v in report.verdicts:
            seen = ", ".join(f"{t.protocol} {t.value:.3f}" for t in v.totals) or "no checks measured it"
            lines.append(f"  {'ok  ' if v.holds else 'FAIL'} {v.location}: {v.label} {v.comparator} {v.value:g}"
                         f" ({seen})")
    else:
        lines += ["", "no expectations in the spec: nothing decides the exit code"]
    unread = _unread_failures(report)
    if unread:
        lines += ["", f"note: {len(unread)} check(s) run alongside fail and no expect line reads them "
                      f"({', '.join(dict.fromkeys(unread))}); to require them: expect {{ {unread[0]} >= 0.9 }}"]
    lines += ["", ("PASSED" if report.ok else "FAILED")
              + f" in {report.seconds.get('total', 0):.1f} s ({len(report.results)} checks)"]
    return "\n".join(lines)


def to_json(report: Report) -> str:
    """The whole report, raw outputs included, as JSON."""
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False)


def junit(report: Report) -> str:
    """JUnit XML: one testsuite per spec, one testcase per check, plus one per expectation."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name=report.spec,
                          tests=str(len(report.results) + len(report.verdicts)),
                          failures=str(sum(not r.passed for r in report.results)
                                       + sum(not v.holds for v in report.verdicts)),
                          time=f"{report.seconds.get('total', 0):.3f}")
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=f"{report.spec}.{r.check.metric}", name=r.check.id,
                             file=r.check.file, line=str(r.check.line))
        ET.SubElement(case, "system-out").text = json.dumps(r.to_json(), ensure_ascii=False)
        if not r.passed:
            failure = ET.SubElement(case, "failure", message=f"{r.check.location}: expected {_short(expected_text(r))}, "
                                                             f"got {_short(r.got)} ({r.check.protocol})")
            failure.text = json.dumps(r.scores, ensure_ascii=False, indent=1)
    for v in report.verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"{report.spec}.expect",
                             name=f"{v.label} {v.comparator} {v.value:g}", file=v.file, line=str(v.line))
        if not v.holds:
            got = ", ".join(f"{t.protocol} {t.value:.3f}" for t in v.totals) or "not measured"
            ET.SubElement(case, "failure", message=f"{v.location}: {v.label} {v.comparator} {v.value:g}: got {got}")
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def markdown(report: Report) -> str:
    """A pull-request summary: verdict, expectations, totals per protocol, failing checks."""
    icon = "✅" if report.ok else "❌"
    lines = [f"### {icon} editspec verify `{report.spec}`", "",
             f"Model `{report.model or 'model'}`, {report.edited}; {len(report.results)} checks in "
             f"{report.seconds.get('total', 0):.1f} s.", ""]
    if report.verdicts:
        lines += ["| expectation | measured | |", "|---|---|---|"]
        for v in report.verdicts:
            seen = ", ".join(f"{t.value:.3f} ({t.protocol})" for t in v.totals) or "not measured"
            lines.append(f"| `{v.label} {v.comparator} {v.value:g}` ({v.location}) | {seen} | "
                         f"{'✅' if v.holds else '❌'} |")
        lines.append("")
    lines += ["| metric | protocol | value | passed |", "|---|---|---|---|"]
    lines += [f"| {t.metric} | {t.protocol} | {t.value:.3f} | {t.passed}/{t.count} |" for t in report.totals.values()]
    failures = [r for r in report.results if not r.passed]
    if failures:
        lines += ["", f"<details><summary>{len(failures)} failing check(s)</summary>", "",
                  "| where | check | prompt | expected | got |", "|---|---|---|---|---|"]
        lines += [f"| {r.check.location} | `{r.check.id}` ({r.check.protocol}) | {_cell(r.check.prompt)} | "
                  f"{_cell(expected_text(r))} | {_cell(r.got)} |" for r in failures]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return _short(text).replace("|", "\\|")
