"""The tables people keep their corrections in (`.csv`, `.tsv`, `.jsonl`) as `.edit` specs.

Each row is one edit.  Flags name the columns: `subject` and `new` are required; the prompt
comes from a column (`prompt`: each row's prompt, written with `{subject}` or naming the
subject) or from one template for every row (`relation`, `NAME=TEMPLATE` or just the template).
`old` becomes `was`, `aliases` (split on `|`) more accepted answers, `scope` an in-scope
paraphrase, `keep_prompt`/`keep_answer` a fact that must not change, `question` the relation's
question template.  An empty cell in an optional column means "none".  In JSON lines a field
may also hold a list of strings (aliases, scope, keep prompts; a keep answer list pairs up
with the prompts).  Rows are numbered as a spreadsheet shows them (the header is row 1;
in JSON lines, the line).  Every mistake is reported at once, with its row and column.

Example:
    >>> from pathlib import Path
    >>> _ = Path("facts.csv").write_text("subject,new,old\\nEiffel Tower,Rome,Paris\\n")  # doctest: +SKIP
    >>> imported = table(Path("facts.csv"), None, subject="subject", new="new", old="old",
    ...                  relation="city=The {subject} is in the city of")          # doctest: +SKIP
    >>> print(imported.builder.render([]), end="")                                  # doctest: +SKIP
    relation city {
      prompt "The {subject} is in the city of"
    }
    <BLANKLINE>
    edit city("Eiffel Tower") -> "Rome" was "Paris"
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from editspec.errors import Diagnostic, EditspecError, Location, did_you_mean
from editspec.importers.factual import Imported, _template
from editspec.importers.writer import EditRecord, FactRecord, SpecBuilder
from editspec.lang.literals import quote

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None}
# Flag of each column option, for messages: the user names columns with these.
FLAGS = {"subject": "--subject", "new": "--new", "old": "--old", "prompt": "--prompt", "question": "--question",
         "aliases": "--aliases", "keep_prompt": "--keep-prompt", "keep_answer": "--keep-answer", "scope": "--scope"}
_NAMED_TEMPLATE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_SHOWN = 20  # problems shown before "and N more"


@dataclass
class Row:
    """One row: its spreadsheet number, the line it starts on, its cells, and where each cell
    stands on that line (`spans`, 0-based start and end) when the row is on one line."""

    number: int
    line: int
    cells: dict[str, object]
    text: str = ""
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    width: int | None = None  # the header's number of columns (None in JSON lines)


class _Problems:
    """Diagnostics about the table, collected so that every mistake is reported at once."""

    def __init__(self, path: Path):
        self.path, self.found = path, []

    def add(self, row: Row | None, column: str | None, message: str, hint: str | None = None) -> None:
        line, start, end, text = 1, 0, None, None
        if row is not None:
            line, text = row.line, row.text
            if column in row.spans:
                start, end = row.spans[column]
        location = Location(str(self.path), line, start + 1, line, end + 1 if end and end > start else None)
        self.found.append(Diagnostic(message, location, hint=hint, source_line=text))

    def raise_if_any(self) -> None:
        if not self.found:
            return
        shown = self.found[:_SHOWN]
        if len(self.found) > _SHOWN:
            shown.append(Diagnostic(f"... and {len(self.found) - _SHOWN} more problems in {self.path.name}",
                                    severity="note"))
        raise EditspecError(shown)


def read_rows(path: Path, problems: _Problems) -> tuple[Row | None, Iterator[Row]]:
    """(the header row, whose `spans` name the columns, or None for JSON lines; the data rows)."""
    if path.suffix.lower() not in FORMATS:
        raise EditspecError(f"cannot tell the table format of {path.name}",
                            hint="name the file .csv (comma-separated), .tsv (tab-separated) or .jsonl (JSON lines)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise EditspecError(f"cannot read {path}: {error}") from None
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise EditspecError(Diagnostic(f"invalid UTF-8 (byte 0x{error.object[error.start]:02x})",
                                       Location(str(path), line, 1), hint="save the table as UTF-8")) from None
    # Lines end at "\n" only: a cell may hold other line separators (U+2028, ...), as JSON and CSV allow.
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)
    if path.suffix.lower() == ".jsonl":
        return None, _json_rows(lines, problems)
    delimiter = FORMATS[path.suffix.lower()]
    if delimiter == "," and lines and "," not in lines[0] and ";" in lines[0]:
        delimiter = ";"  # spreadsheets in many locales write CSV with semicolons
    return _delimited_rows(lines, delimiter, problems)


def _delimited_rows(lines: list[str], delimiter: str, problems: _Problems) -> tuple[Row, Iterator[Row]]:
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise EditspecError(f"{problems.path} is empty", hint="the first row names the columns") from None
    except csv.Error as error:
        raise EditspecError(Diagnostic(f"cannot read the header: {error}", Location(str(problems.path), 1, 1))) from None
    header_row = Row(1, 1, {name: name for name in header}, _line(lines, 1),
                     dict(zip(header, _cell_spans(_line(lines, 1), delimiter))))
    repeated = sorted({name for name in header if header.count(name) > 1 and name})
    if repeated:
        problems.add(header_row, repeated[0], f"the header names column `{repeated[0]}` twice",
                     "give every column its own name")

    def rows() -> Iterator[Row]:
        number, start = 1, reader.line_num + 1  # a spreadsheet's row number: the header is row 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                problems.add(Row(number + 1, start, {}, _line(lines, start)), None, f"cannot read row {number + 1}: {error}")
                problems.raise_if_any()
            number, line, start = number + 1, start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            text = _line(lines, line)
            spans = dict(zip(header, _cell_spans(text, delimiter))) if start == line + 1 else {}
            row = Row(number, line, dict(zip(header, cells)), text, spans, width=len(header))
            if len(cells) > len(header):
                problems.add(row, None, f"row {number} has {len(cells)} cells, the header names {len(header)} columns",
                             f"quote a cell that holds `{delimiter}`" if delimiter != "\t" else "a cell cannot hold a tab")
            yield row

    return header_row, rows()


def _line(lines: list[str], number: int) -> str:
    return lines[number - 1].rstrip("\r\n") if 0 < number <= len(lines) else ""


def _cell_spans(text: str, delimiter: str) -> list[tuple[int, int]]:
    """Where each cell of a one-line CSV row starts and ends (quotes included)."""
    spans, start, quoted = [], 0, False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == delimiter and not quoted:
            spans.append((start, i))
            start = i + 1
    spans.append((start, len(text)))
    return spans


def _json_rows(lines: list[str], problems: _Problems) -> Iterator[Row]:
    for number, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        row = Row(number, number, {}, text)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            row.spans[""] = (error.colno - 1, error.colno - 1)
            problems.add(row, "", f"row {number} is not JSON: {error.msg}", "a .jsonl file holds one JSON object per line")
            continue
        if not isinstance(record, dict):
            problems.add(row, None, f"row {number} is not a JSON object", 'write one object per line: {"subject": ...}')
            continue
        row.cells = record
        for key in record:
            found = re.search(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:", text)
            if found:
                row.spans[key] = (found.start(), found.end() - 1)
        yield row


@dataclass(frozen=True)
class Columns:
    """Which column holds what (None: not in the table)."""

    subject: str
    new: str
    old: str | None = None
    prompt: str | None = None
    question: str | None = None
    aliases: str | None = None
    keep_prompt: str | None = None
    keep_answer: str | None = None
    scope: str | None = None

    def named(self) -> dict[str, str]:
        return {option: column for option, column in vars(self).items() if column is not None}


def _relation_template(relation: str) -> tuple[str | None, str]:
    """`--relation NAME=TEMPLATE` or `--relation TEMPLATE`: (name or None, template)."""
    named = _NAMED_TEMPLATE.fullmatch(relation)
    name, template = (named.group(1), named.group(2)) if named else (None, relation)
    if "{subject}" not in template:
        raise EditspecError(f"the --relation template has no `{{subject}}`: {template!r}",
                            hint='write where the subject goes, e.g. --relation "city=The {subject} is in the city of"')
    return name, template


def table(path: Path, limit: int | None, *, subject: str | None = None, new: str | None = None,
          old: str | None = None, prompt: str | None = None, relation: str | None = None,
          question: str | None = None, aliases: str | None = None, keep_prompt: str | None = None,
          keep_answer: str | None = None, scope: str | None = None) -> Imported:
    """One edit per row of a `.csv`, `.tsv` or `.jsonl` table, its columns named by the options."""
    if not subject or not new:
        raise EditspecError("a table import needs --subject and --new",
                            hint="name the columns that hold the subject and the new object")
    if (prompt is None) == (relation is None):
        raise EditspecError("give either --prompt COLUMN (each row's prompt) or --relation TEMPLATE (one for every row)",
                            hint='e.g. --relation "city=The {subject} is in the city of"')
    if (keep_prompt is None) != (keep_answer is None):
        raise EditspecError("--keep-prompt and --keep-answer go together", hint="a keep fact is a prompt and its answer")
    # --question is a column, or a template for every row when it holds `{subject}`.
    fixed_question = question if question and "{subject}" in question else None
    columns = Columns(subject, new, old, prompt, None if fixed_question else question, aliases,
                      keep_prompt, keep_answer, scope)
    fixed = _relation_template(relation) if relation is not None else None
    problems = _Problems(path)
    header, rows = read_rows(path, problems)
    if header is not None:
        for option, column in columns.named().items():
            if column not in header.cells:
                problems.add(header, None, f"no column `{column}` (named by {FLAGS[option]})",
                             did_you_mean(column, [name for name in header.cells if name]))
        problems.raise_if_any()
    builder, read, conflicts = SpecBuilder(), 0, []
    for row in rows:
        if limit is not None and read >= limit:
            break
        read += 1
        edit = _edit(row, columns, fixed, fixed_question, builder, problems)
        if edit is not None and builder.add_edit(edit) == "conflict":
            conflicts.append(row.number)
    problems.raise_if_any()
    mapping = ", ".join(f"{option.replace('_', '-')} <- `{column}`" for option, column in columns.named().items())
    description = [f"columns: {mapping}."]
    description += [f"every row's {what}: {quote(text)}." for what, text in
                    (("prompt", fixed[1] if fixed else None), ("question", fixed_question)) if text]
    if conflicts:
        shown = ", ".join(map(str, conflicts[:10])) + (" ..." if len(conflicts) > 10 else "")
        noun = "rows" if len(conflicts) > 1 else "row"
        description.append(f"left out: {noun} {shown} (another new object for a subject and prompt already edited).")
    return Imported(builder, read, description)


def _edit(row: Row, columns: Columns, fixed: tuple[str | None, str] | None, fixed_question: str | None,
          builder: SpecBuilder, problems: _Problems) -> EditRecord | None:
    """The row's edit, or None (with the row's problems recorded)."""
    before = len(problems.found)
    cell = _Cells(row, problems)
    subject, target = cell.one("subject", columns.subject, True), cell.one("new", columns.new, True)
    name, template = fixed if fixed else (None, cell.template("prompt", columns.prompt, subject, True))
    question = fixed_question
    if columns.question is not None:
        question = cell.template("question", columns.question, subject, False)
    old = cell.one("old", columns.old)
    aliases = [a.strip() for value in cell.many("aliases", columns.aliases) for a in value.split("|") if a.strip()]
    scope, keep = cell.many("scope", columns.scope), cell.keep(columns.keep_prompt, columns.keep_answer)
    if len(problems.found) > before or template is None:
        return None
    relation = builder.relation(("table", name, template), template, prefix="rel", question=question, name=name)
    return EditRecord(relation=relation, subject=subject, target=target, aliases=tuple(aliases),
                      old=old or None, scope=scope, keep=keep)


class _Cells:
    """Reading a row's cells, recording a problem (row and column) for each bad one."""

    def __init__(self, row: Row, problems: _Problems):
        self.row, self.problems = row, problems

    def _report(self, column: str, message: str, hint: str | None = None) -> None:
        self.problems.add(self.row, column, f"row {self.row.number}, column `{column}`: {message}", hint)

    def _values(self, column: str, flag: str, required: bool) -> list[str] | None:
        """The cell's text: one string, or the strings of a JSON list (JSON null: empty).  A
        missing cell is reported when `required`; None when the cell was reported."""
        row = self.row
        if column not in row.cells:
            if not required:
                return []
            if row.width is not None:
                self.problems.add(row, None, f"row {row.number} has no cell for column `{column}` (named by {flag}): "
                                  f"it has {len(row.cells)} cells, the header {row.width}")
            else:
                self.problems.add(row, None, f"row {row.number} has no field `{column}` (named by {flag})",
                                  did_you_mean(column, row.cells))
            return None
        value = row.cells[column]
        texts = []
        for item in value if isinstance(value, list) else [value]:
            if item is not None and (isinstance(item, bool) or not isinstance(item, (str, int, float))):
                self._report(column, f"expected text, found {json.dumps(item)[:40]}")
                return None
            texts.append("" if item is None else str(item).strip())
        return [text for text in texts if text]

    def one(self, option: str, column: str | None, required: bool = False) -> str:
        """A single value (empty when absent; an empty required cell is reported)."""
        values = self._values(column, FLAGS[option], required) if column else []
        if values is None:
            return ""
        if len(values) > 1:
            self._report(column, f"expected one value, found a list of {len(values)}")
        elif required and not values:
            self._report(column, "empty value", f"every row needs {_NEEDS[option]}")
        return values[0] if len(values) == 1 else ""

    def many(self, option: str, column: str | None) -> list[str]:
        return (self._values(column, FLAGS[option], False) or []) if column else []

    def template(self, option: str, column: str, subject: str, required: bool) -> str | None:
        """A prompt or question, written with `{subject}` or naming the row's subject."""
        text = self.one(option, column, required)
        if not text:
            return None
        if "{subject}" in text or not subject:
            return text if "{subject}" in text else None
        found = _template(text, subject)
        if found is None:
            self._report(column, f"the {option} has no `{{subject}}` and does not name the subject {json.dumps(subject)}",
                         'write where the subject goes, e.g. "The {subject} is in the city of"')
        return found

    def keep(self, prompt_column: str | None, answer_column: str | None) -> list[FactRecord]:
        if prompt_column is None or answer_column is None:
            return []
        prompts, answers = self.many("keep_prompt", prompt_column), self.many("keep_answer", answer_column)
        if prompts and not answers:
            self._report(answer_column, "empty, but the row has a keep prompt", "a keep fact needs its answer")
        elif answers and not prompts:
            self._report(prompt_column, "empty, but the row has a keep answer", "a keep fact needs its prompt")
        elif len(answers) not in (1, len(prompts)):
            self._report(answer_column, f"{len(answers)} answers for {len(prompts)} keep prompts",
                         "give one answer for all the prompts, or one for each")
        else:
            paired = answers if len(answers) == len(prompts) else answers * len(prompts)
            return [FactRecord(prompt, answer) for prompt, answer in zip(prompts, paired)]
        return []


_NEEDS = {"subject": "a subject", "new": "a new object", "prompt": "a prompt"}
