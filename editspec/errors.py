"""Diagnostics: every user-facing problem is an `EditspecError` carrying positioned messages.

The CLI turns these into `file:line:col: error: message`, the source line, a caret and a
hint, and exit code 2.  Nothing else in editspec prints errors or picks exit codes.
"""
from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass, field
from typing import Iterable, Sequence


class Outcome(enum.IntEnum):
    """What a command reports back to `editspec.cli`, which alone turns it into the exit code.

    OK: it ran and everything held; FAILED: it ran but a check, expectation or formatting rule
    failed; ERROR: it could not run (raised as `EditspecError` where there is one message to show).
    """

    OK = 0
    FAILED = 1
    ERROR = 2


@dataclass(frozen=True)
class Location:
    """A point in a source file (1-based line and column), optionally spanning to an end."""

    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One message about the user's input.  `severity` is "error", "warning" or "note"."""

    message: str
    location: Location | None = None
    hint: str | None = None
    severity: str = "error"
    source_line: str | None = None

    def render(self, color: bool = False) -> str:
        """The compiler-style text: position, message, source line, caret, hint."""
        red, bold, cyan, reset = ("\x1b[31m", "\x1b[1m", "\x1b[36m", "\x1b[0m") if color else ("",) * 4
        head = f"{self.severity}: {self.message}"
        if color:
            head = f"{red if self.severity == 'error' else cyan}{bold}{self.severity}:{reset}{bold} {self.message}{reset}"
        lines = [f"{self.location}: {head}" if self.location else head]
        if self.location and self.source_line is not None:
            text = self.source_line.rstrip("\n").expandtabs(1)
            lines.append(f"  {text}")
            start = max(self.location.column - 1, 0)
            width = 1
            if self.location.end_line == self.location.line and self.location.end_column:
                width = max(self.location.end_column - self.location.column, 1)
            width = max(min(width, len(text) - start), 1)
            lines.append("  " + " " * start + "^" + "~" * (width - 1))
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class EditspecError(Exception):
    """The one root exception for mistakes in the user's input or environment.

    Holds one or more diagnostics; `str()` renders them all.
    """

    def __init__(self, diagnostics: Diagnostic | str | Sequence[Diagnostic], *, hint: str | None = None):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics, hint=hint)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__(self.render())

    def render(self, color: bool = False) -> str:
        return "\n".join(d.render(color) for d in self.diagnostics)


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to a misspelt `word`, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A hint such as "did you mean `ceo`?" listing the known names when nothing is close."""
    candidates = sorted(set(candidates))
    best = suggest(word, candidates)
    if best:
        return f"did you mean `{best}`?"
    if candidates:
        shown = ", ".join(f"`{c}`" for c in candidates[:12])
        return f"known: {shown}" + (" …" if len(candidates) > 12 else "")
    return None


def diagnostic_at(span, message: str, hint: str | None = None, severity: str = "error") -> Diagnostic:
    """A `Diagnostic` pointing at an IR node's `span`, with its source line when readable.

    >>> print(diagnostic_at(block.span, "rome does not compile canonical examples", severity="warning").render())  # doctest: +SKIP
    """
    source = None
    try:
        with open(span.file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if number == span.line:
                    source = line
                    break
    except (OSError, UnicodeDecodeError):
        pass
    location = Location(span.file, span.line, span.column, span.end_line, span.end_column)
    return Diagnostic(message, location, hint=hint, source_line=source, severity=severity)


def error_at(span, message: str, hint: str | None = None) -> EditspecError:
    """An `EditspecError` pointing at an IR node's `span`, with its source line when readable.

    Later stages (compile, verify) use it so that a problem still points at the spec line.

    >>> raise error_at(edit.span, "the subject does not occur in the prompt")  # doctest: +SKIP
    """
    return EditspecError(diagnostic_at(span, message, hint))
