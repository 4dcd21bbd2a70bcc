"""Lowering one parsed file to its declarations: strings decoded, numbers read, spans attached.

Nothing here looks across files or declarations; names are resolved in `editspec.lang.resolve`.
Problems are collected, not raised, so that a file reports all its errors at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from lark import Token, Tree

from editspec import ir
from editspec.errors import Diagnostic, Location
from editspec.lang.literals import quote
from editspec.lang.metrics import PROTOCOLS
from editspec.lang.syntax import ParsedFile


@dataclass(frozen=True)
class RawFact:
    """A `"prompt" -> answer` or `rel("subject") -> answer` before relation expansion."""

    span: ir.Span
    answer: str
    aliases: tuple[str, ...]
    prompt: str | None = None
    relation: str | None = None
    relation_span: ir.Span | None = None
    subject: str | None = None


@dataclass(frozen=True)
class RawEdit:
    span: ir.Span
    relation: str
    relation_span: ir.Span
    subject: str
    subject_span: ir.Span
    target: str
    target_span: ir.Span
    aliases: tuple[str, ...] = ()
    old: str | None = None
    scope: tuple[str, ...] = ()
    keep: tuple[RawFact, ...] = ()
    implies: tuple[RawFact, ...] = ()


@dataclass(frozen=True)
class RawCheck:
    span: ir.Span
    statistic: str
    comparator: str
    threshold: float
    threshold_text: str
    facts: tuple[RawFact, ...]


@dataclass(frozen=True)
class RawCanonical:
    span: ir.Span
    name: str
    examples: tuple[tuple[ir.Span, str, str, str | None], ...]  # (span, prompt, answer, over)
    checks: tuple[RawCheck, ...]
    keep: tuple[RawFact, ...]


@dataclass
class FileDecls:
    """Everything one file declares, in source order within each kind."""

    path: str
    models: list[tuple[ir.Span, str]] = field(default_factory=list)
    imports: list[tuple[ir.Span, str]] = field(default_factory=list)
    relations: list[ir.Relation] = field(default_factory=list)
    relation_spans: dict[str, list[ir.Span]] = field(default_factory=dict)
    edits: list[RawEdit] = field(default_factory=list)
    canonical: list[RawCanonical] = field(default_factory=list)
    forget: list[tuple[ir.Span, str, tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    preserve: list[tuple[ir.Span, tuple[str, ...], tuple[tuple[ir.Span, str], ...], ir.Budget | None]] = field(default_factory=list)
    expect: list[ir.Expectation] = field(default_factory=list)
    backends: list[ir.BackendSettings] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}


class _Lowerer:
    def __init__(self, parsed: ParsedFile):
        self.parsed = parsed
        self.out = FileDecls(parsed.path)

    # -- positions and diagnostics ---------------------------------------------------------
    def span(self, item: Tree | Token) -> ir.Span:
        meta = item if isinstance(item, Token) else item.meta
        return ir.Span(file=self.parsed.path, line=meta.line, column=meta.column,
                       end_line=meta.end_line, end_column=meta.end_column)

    def error(self, message: str, span: ir.Span, hint: str | None = None) -> None:
        self.out.diagnostics.append(diagnostic(message, span, hint, self.parsed.line(span.line)))

    # -- leaves --------------------------------------------------------------------------------
    def string(self, token: Token) -> str:
        """Decode a STRING token: `\\"`, `\\\\`, `\\n`, `\\t`, `\\r`, `\\uXXXX`, `\\u{X...}`."""
        raw, out, i = token[1:-1], [], 0
        while i < len(raw):
            char = raw[i]
            if char != "\\":
                out.append(char)
                i += 1
                continue
            code = raw[i + 1] if i + 1 < len(raw) else ""
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
                i += 2
            elif code == "u":
                value, width = _unicode_escape(raw, i + 2)
                if value is None:
                    self._bad_escape(token, i, "a \\u escape needs 4 hex digits or {HEX}")
                    return raw
                out.append(value)
                i += 2 + width
            else:
                self._bad_escape(token, i, 'known escapes: \\" \\\\ \\n \\t \\r \\uXXXX \\u{...}')
                return raw
        return "".join(out)

    def _bad_escape(self, token: Token, offset: int, hint: str) -> None:
        column = token.column + 1 + offset
        span = ir.Span(file=self.parsed.path, line=token.line, column=column, end_line=token.line, end_column=column + 2)
        self.error(f"invalid escape `{token[1 + offset:3 + offset]}` in string", span, hint)

    def number(self, tree: Tree) -> tuple[float, str]:
        """A number as its value and its text: `0.95`, `95%` (0.95) or `1/5` (0.2)."""
        parts = [str(t) for t in tree.children]
        if tree.data == "percent":
            return float(parts[0]) / 100.0, f"{parts[0]}%"
        if tree.data == "fraction":
            if float(parts[1]) == 0:
                self.error("division by zero in threshold", self.span(tree))
                return 0.0, f"{parts[0]}/{parts[1]}"
            return float(Fraction(parts[0]) / Fraction(parts[1])), f"{parts[0]}/{parts[1]}"
        return float(parts[0]), parts[0]

    def answer(self, tree: Tree) -> tuple[str, tuple[str, ...]]:
        values = [self.string(t) for t in tree.children]
        return values[0], tuple(values[1:])

    def fact(self, tree: Tree) -> RawFact:
        if tree.data == "text_fact":
            prompt, answer = tree.children
            target, aliases = self.answer(answer)
            return RawFact(self.span(tree), target, aliases, prompt=self.string(prompt))
        relation, subject, answer = tree.children
        target, aliases = self.answer(answer)
        return RawFact(self.span(tree), target, aliases, relation=str(relation),
                       relation_span=self.span(relation), subject=self.string(subject))

    def value(self, item: Tree | Token, depth: int = 0) -> ir.SettingValue:
        if item is None:  # the empty list `[]`
            return ()
        if isinstance(item, Token):
            if item.type == "STRING":
                return self.string(item)
            return {"true": True, "false": False}.get(str(item), str(item))
        if item.data == "range":
            start, end = (int(float(t)) for t in item.children)
            if end < start:
                self.error(f"empty range {start}..{end}", self.span(item), f"did you mean {end}..{start}?")
            return ir.Range(start=start, end=end)
        if item.data == "list":
            if depth == 2:
                self.error("lists nest at most two deep", self.span(item), "e.g. [[5, 10], [10, 10]]")
                return 0  # a placeholder that type-checks; the error stops the build
            return tuple(self.value(child, depth + 1) for child in item.children if child is not None)
        text = str(item.children[0])
        if item.data == "plain_number" and all(c.isdigit() or c == "-" for c in text):
            return int(text)
        return self.number(item)[0]

    # -- declarations ------------------------------------------------------------------------
    def run(self) -> FileDecls:
        for decl in self.parsed.tree.children:
            getattr(self, decl.data)(decl)
        return self.out

    def model_decl(self, tree: Tree) -> None:
        self.out.models.append((self.span(tree), self.string(tree.children[0])))

    def import_decl(self, tree: Tree) -> None:
        self.out.imports.append((self.span(tree), self.string(tree.children[0])))

    def relation_decl(self, tree: Tree) -> None:
        name, *templates = tree.children
        kinds: dict[str, list[str]] = {"prompt": [], "paraphrase": [], "question": []}
        for template in templates:
            kind, text = template.children
            value = self.string(text)
            if "{subject}" not in value:
                self.error(f"{kind} template has no `{{subject}}` placeholder", self.span(text),
                           f'write where the subject goes, e.g. "{value.rstrip()} {{subject}}"' if value else None)
            kinds[str(kind)].append(value)
        if not kinds["prompt"]:
            self.error(f"relation `{name}` has no prompt template", self.span(name),
                       'add `prompt "... {subject} ..."` inside the block')
        self.out.relation_spans.setdefault(str(name), []).append(self.span(name))
        self.out.relations.append(ir.Relation(
            span=self.span(tree), name=str(name), prompts=tuple(kinds["prompt"]),
            paraphrases=tuple(kinds["paraphrase"]), questions=tuple(kinds["question"])))

    def edit_decl(self, tree: Tree) -> None:
        relation, subject, answer, *rest = tree.children
        target, aliases = self.answer(answer)
        header_was = [c for c in rest if c.data == "was_clause"]
        body = [c for c in rest if c.data == "edit_body"]
        clauses = body[0].children if body else []
        old = self._edit_was(str(relation), self.string(subject),
                             header_was + [c for c in clauses if c.data == "was_clause"], in_header=bool(header_was))
        scope, keep, implies = [], [], []
        for clause in clauses:
            if clause.data == "was_clause":
                continue
            if clause.data == "scope_clause":
                scope.extend(self.string(t) for t in clause.children)
            elif clause.data == "keep_clause":
                keep.extend(self.fact(f) for f in clause.children)
            else:
                implies.extend(self.fact(f) for f in clause.children)
        self.out.edits.append(RawEdit(
            span=self.span(tree), relation=str(relation), relation_span=self.span(relation),
            subject=self.string(subject), subject_span=self.span(subject), target=target,
            target_span=self.span(answer), aliases=aliases, old=old, scope=tuple(scope),
            keep=tuple(keep), implies=tuple(implies)))

    def _edit_was(self, relation: str, subject: str, clauses: list[Tree], in_header: bool) -> str | None:
        """The edit's old object: one `was`, in the header or the block; a second one is an error."""
        if not clauses:
            return None
        first, values = clauses[0], [self.string(c.children[0]) for c in clauses]
        for clause, value in zip(clauses[1:], values[1:]):
            where = "in the header" if in_header else f"at line {first.meta.line}"
            edit = f"{relation}({quote(subject)})"
            if value == values[0]:
                self.error(f"`was` is given twice for {edit} (also {where})", self.span(clause),
                           "remove this one; `editspec fmt` writes `was` in the edit header")
            else:
                self.error(f"conflicting `was` for {edit}: {quote(value)} here, but {quote(values[0])} {where}",
                           self.span(clause), "an edit has one old object: keep one of the two "
                           "(`editspec fmt` writes it in the header)")
        return values[0]

    def edits_decl(self, tree: Tree) -> None:
        relation, *entries = tree.children
        for entry in entries:
            subject, answer, *was = entry.children
            target, aliases = self.answer(answer)
            self.out.edits.append(RawEdit(
                span=self.span(entry), relation=str(relation), relation_span=self.span(relation),
                subject=self.string(subject), subject_span=self.span(subject), target=target,
                target_span=self.span(answer), aliases=aliases,
                old=self.string(was[0].children[0]) if was else None))

    def canonical_decl(self, tree: Tree) -> None:
        name, *clauses = tree.children
        examples, checks, keep = [], [], []
        for clause in clauses:
            if clause.data == "example_clause":
                prompt, answer, *over = clause.children
                examples.append((self.span(clause), self.string(prompt), self.string(answer),
                                 self.string(over[0].children[0]) if over else None))
            elif clause.data == "check_clause":
                statistic, comparator, number, *facts = clause.children
                value, text = self.number(number)
                checks.append(RawCheck(self.span(clause), str(statistic), str(comparator), value, text,
                                       tuple(self.fact(f) for f in facts)))
            else:
                keep.extend(self.fact(f) for f in clause.children)
        self.out.canonical.append(RawCanonical(self.span(tree), self.string(name), tuple(examples),
                                               tuple(checks), tuple(keep)))

    def forget_decl(self, tree: Tree) -> None:
        name, *clauses = tree.children
        prompts = tuple(self.string(c.children[0]) for c in clauses if c.data == "forget_prompt")
        never = tuple(self.string(c.children[0]) for c in clauses if c.data == "never_clause")
        self.out.forget.append((self.span(tree), self.string(name), prompts, never))

    def preserve_decl(self, tree: Tree) -> None:
        texts, files, budget = [], [], None
        for clause in tree.children:
            if clause.data == "preserve_text":
                texts.append(self.string(clause.children[0]))
            elif clause.data == "preserve_file":
                files.append((self.span(clause.children[0]), self.string(clause.children[0])))
            else:
                metric, comparator, number = clause.children
                budget = self._budget(clause, str(metric), str(comparator), number)
        self.out.preserve.append((self.span(tree), tuple(texts), tuple(files), budget))

    def _budget(self, clause: Tree, metric: str, comparator: str, number: Tree) -> ir.Budget | None:
        value, _ = self.number(number)
        if metric not in ("loss_increase", "kl"):
            from editspec.errors import did_you_mean

            self.error(f"unknown budget metric `{metric}`", self.span(clause.children[0]),
                       did_you_mean(metric, ["loss_increase", "kl"]))
            return None
        if comparator != "<=":
            self.error("a budget is an upper bound: use `<=`", self.span(clause.children[1]))
            return None
        return ir.Budget(span=self.span(clause), metric=metric, value=value)

    def expect_decl(self, tree: Tree) -> None:
        for item in tree.children:
            metric, *qualified, comparator, number = item.children
            protocol = str(qualified[0].children[0]) if qualified else None
            if protocol is not None and protocol not in PROTOCOLS:
                from editspec.errors import suggest

                close = suggest(protocol, PROTOCOLS)
                self.error(f"unknown protocol `{protocol}`", self.span(qualified[0].children[0]),
                           (f"did you mean `{close}`? " if close else "") + "the protocols are "
                           + ", ".join(f"`{p}`" for p in PROTOCOLS))
                continue
            self.out.expect.append(ir.Expectation(
                span=self.span(item), metric=str(metric), protocol=protocol, comparator=str(comparator),
                value=self.number(number)[0]))

    def backend_decl(self, tree: Tree) -> None:
        name, *settings = tree.children
        self.out.backends.append(ir.BackendSettings(
            span=self.span(tree), name=str(name),
            settings=tuple(ir.Setting(span=self.span(s), key=str(s.children[0]), value=self.value(s.children[1]))
                           for s in settings)))


def _unicode_escape(raw: str, start: int) -> tuple[str | None, int]:
    """Decode `XXXX` or `{X..}` at `raw[start:]`: (character or None, characters consumed)."""
    try:
        if raw[start:start + 1] == "{":
            end = raw.index("}", start)
            return chr(int(raw[start + 1:end], 16)), end - start + 1
        digits = raw[start:start + 4]
        if len(digits) == 4:
            return chr(int(digits, 16)), 4
    except (ValueError, OverflowError):
        pass
    return None, 0


def diagnostic(message: str, span: ir.Span, hint: str | None, source_line: str | None) -> Diagnostic:
    return Diagnostic(message, Location(span.file, span.line, span.column, span.end_line, span.end_column),
                      hint=hint, source_line=source_line)


def lower(parsed: ParsedFile) -> FileDecls:
    """All declarations of one parsed file, with the problems found in it."""
    return _Lowerer(parsed).run()
