"""Loading a spec: read the root file and its imports, resolve names, expand templates, build the IR.

Example:
    >>> from editspec import load_spec
    >>> spec = load_spec("specs/examples/leadership.edit")   # doctest: +SKIP
    >>> [e.subject for e in spec.edits]                       # doctest: +SKIP
    ['Twitter', 'Microsoft', 'Tesla']
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from editspec import ir
from editspec.errors import Diagnostic, EditspecError, did_you_mean, suggest
from editspec.lang.lower import FileDecls, RawFact, diagnostic, lower
from editspec.lang.syntax import decode, line_of, parse


@dataclass
class Analysis:
    """The result of loading a spec: the IR (None when errors prevent it) and every diagnostic."""

    spec: ir.Spec | None
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


class _Loader:
    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.files: list[FileDecls] = []
        self.diagnostics: list[Diagnostic] = []
        self._loaded: set[str] = set()

    def problem(self, message: str, span: ir.Span, hint: str | None = None, severity: str = "error") -> None:
        d = diagnostic(message, span, hint, line_of(self.texts.get(span.file, ""), span.line))
        self.diagnostics.append(Diagnostic(d.message, d.location, d.hint, severity, d.source_line))

    # -- reading files and imports -----------------------------------------------------------
    def load_text(self, path: str, text: str, stack: tuple[str, ...] = ()) -> None:
        key = os.path.realpath(path)
        self._loaded.add(key)
        self.texts[path] = text
        try:
            decls = lower(parse(text, path))
        except EditspecError as error:
            self.diagnostics.extend(error.diagnostics)
            return
        self.diagnostics.extend(decls.diagnostics)
        self.files.append(decls)
        for span, target in decls.imports:
            self.follow_import(path, span, target, stack + (key,))

    def load_file(self, path: str, stack: tuple[str, ...] = ()) -> None:
        self.load_text(path, decode(Path(path).read_bytes(), path), stack)

    def follow_import(self, importer: str, span: ir.Span, target: str, stack: tuple[str, ...]) -> None:
        path = os.path.normpath(os.path.join(os.path.dirname(importer), target))
        key = os.path.realpath(path)
        if key in stack:
            chain = " -> ".join(os.path.basename(p) for p in stack[stack.index(key):]) + f" -> {os.path.basename(path)}"
            self.problem(f"import cycle: {chain}", span, "a file may not import itself, directly or indirectly")
            return
        if key in self._loaded:
            return
        if not os.path.isfile(path):
            close = suggest(os.path.basename(target), _edit_files_near(path))
            self.problem(f"cannot find imported file `{target}` (looked for {path})", span,
                         f"did you mean `{close}`?" if close else "paths are relative to the importing file")
            return
        try:
            self.load_file(path, stack)
        except EditspecError as error:
            self.diagnostics.extend(error.diagnostics)

    # -- building the IR ---------------------------------------------------------------------
    def build(self, root: str) -> ir.Spec:
        relations = self.relations()
        model = self.first_setting([(s, m) for f in self.files for s, m in f.models], "model")
        edits = tuple(self.edit(e, relations) for f in self.files for e in f.edits)
        canonical = tuple(self.canonical(c, relations) for f in self.files for c in f.canonical)
        forget = tuple(ir.Erasure(span=s, id=_make_id("forget", name, prompts, never), name=name,
                                  prompts=prompts, never=never)
                       for f in self.files for s, name, prompts, never in f.forget)
        preserve = tuple(self.preservation(f.path, p) for f in self.files for p in f.preserve)
        return ir.Spec(
            source=root, files=tuple(f.path for f in self.files), model=model,
            relations=tuple(relations.values()), edits=edits, canonical=canonical, forget=forget,
            preserve=preserve, expect=self.root_wins(lambda f: f.expect, lambda e: e.label, "expectation for"),
            backends=self.root_wins(lambda f: f.backends, lambda b: b.name, "backend block"),
        )

    def first_setting(self, items: list[tuple[ir.Span, str]], what: str) -> str | None:
        for (span, value) in items[1:]:
            if span.file == items[0][0].file:
                self.problem(f"`{what}` is set twice in this file", span,
                             f"the first is at {items[0][0].file}:{items[0][0].line}")
        return items[0][1] if items else None

    def root_wins(self, items_of, key_of, what: str) -> tuple:
        """Declarations keyed by name: the importing file wins; a repeat within one file is an error."""
        chosen: dict[str, object] = {}
        for decls in self.files:
            seen_here: dict[str, ir.Span] = {}
            for item in items_of(decls):
                key = key_of(item)
                if key in seen_here:
                    self.problem(f"duplicate {what} `{key}`", item.span,
                                 f"the first is at line {seen_here[key].line}; keep one")
                seen_here[key] = item.span
                chosen.setdefault(key, item)
        return tuple(chosen.values())

    def relations(self) -> dict[str, ir.Relation]:
        table: dict[str, ir.Relation] = {}
        for decls in self.files:
            for relation in decls.relations:
                if relation.name in table:
                    first = table[relation.name].span
                    self.problem(f"duplicate relation `{relation.name}`", relation.span,
                                 f"`{relation.name}` is already defined at {first.file}:{first.line}")
                    continue
                table[relation.name] = relation
        return table

    def lookup(self, name: str, span: ir.Span, relations: dict[str, ir.Relation]) -> ir.Relation | None:
        if name in relations:
            return relations[name]
        self.problem(f"unknown relation `{name}`", span,
                     did_you_mean(name, relations) or f'declare it: relation {name} {{ prompt "... {{subject}} ..." }}')
        return None

    def edit(self, raw, relations: dict[str, ir.Relation]) -> ir.Edit:
        relation = self.lookup(raw.relation, raw.relation_span, relations)
        fill = lambda templates: tuple(_fill(t, raw.subject) for t in templates)  # noqa: E731
        content = dict(
            relation=raw.relation, subject=raw.subject, target=raw.target, aliases=raw.aliases, old=raw.old,
            prompts=fill(relation.prompts) if relation else (),
            paraphrases=fill(relation.paraphrases) if relation else (),
            questions=fill(relation.questions) if relation else (),
            scope=raw.scope,
        )
        edit_id = _make_id(raw.relation, raw.subject, _content_key(content, raw.keep, raw.implies))
        return ir.Edit(span=raw.span, id=edit_id, **content,
                       keep=tuple(self.fact(f, relations, f"{edit_id}/keep") for f in raw.keep),
                       implies=tuple(self.fact(f, relations, f"{edit_id}/implies") for f in raw.implies))

    def fact(self, raw: RawFact, relations: dict[str, ir.Relation], parent: str) -> ir.Fact:
        if raw.relation is None:
            prompts = (raw.prompt,)
        else:
            relation = self.lookup(raw.relation, raw.relation_span, relations)
            prompts = tuple(_fill(t, raw.subject) for t in relation.prompts) if relation else ()
        return ir.Fact(span=raw.span, id=f"{parent}-{_digest(prompts, raw.answer, raw.aliases)}", prompts=prompts,
                       answer=raw.answer, aliases=raw.aliases, relation=raw.relation, subject=raw.subject)

    def canonical(self, raw, relations: dict[str, ir.Relation]) -> ir.CanonicalExample:
        if len(raw.examples) != 1:
            self.problem(f"canonical `{raw.name}` needs exactly one `example` (it has {len(raw.examples)})",
                         raw.examples[1][0] if len(raw.examples) > 1 else raw.span,
                         'write `example "prompt" -> "answer"`; use another canonical block for more examples')
        span, prompt, answer, over = raw.examples[0] if raw.examples else (raw.span, "", "", None)
        example_id = _make_id("canonical", raw.name, prompt, answer, over)
        checks = tuple(
            ir.CanonicalCheck(span=check.span, id=_make_id(example_id, check.statistic, check.threshold_text, fact.id),
                              statistic=check.statistic, comparator=check.comparator, threshold=check.threshold,
                              threshold_text=check.threshold_text, fact=fact)
            for check in raw.checks
            for fact in (self.fact(f, relations, f"{example_id}/check") for f in check.facts))
        keep = tuple(self.fact(f, relations, f"{example_id}/keep") for f in raw.keep)
        return ir.CanonicalExample(span=raw.span, id=example_id, name=raw.name, prompt=prompt, answer=answer,
                                   over=over, checks=checks, keep=keep)

    def preservation(self, path: str, raw) -> ir.Preservation:
        span, texts, files, budget = raw
        resolved = []
        for file_span, name in files:
            full = os.path.normpath(os.path.join(os.path.dirname(path), name))
            if not os.path.isfile(full):
                self.problem(f"cannot find preserve file `{name}` (looked for {full})", file_span,
                             "paths are relative to the spec that names them")
            resolved.append(full)
        return ir.Preservation(span=span, texts=texts, files=tuple(n for _, n in files),
                               resolved_files=tuple(resolved), budget=budget)


_SLUG = re.compile(r"[^a-z0-9]+")


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, ensure_ascii=False).encode()).hexdigest()[:8]


def _make_id(*parts) -> str:
    """A readable, content-derived id: `<slug of the first two parts>-<8 hex of all parts>`."""
    digest = _digest(*parts)
    slug = "-".join(s for s in (_SLUG.sub("-", str(p).lower()).strip("-")[:24] for p in parts[:2]) if s)
    return f"{slug}-{digest}" if slug else digest


def _content_key(content: dict, keep, implies) -> str:
    return repr((sorted(content.items()), [(f.prompt, f.relation, f.subject, f.answer, f.aliases) for f in keep + implies]))


def _fill(template: str, subject: str) -> str:
    return template.replace("{subject}", subject)


def _edit_files_near(path: str) -> list[str]:
    folder = os.path.dirname(path) or "."
    try:
        return [f for f in os.listdir(folder) if f.endswith(".edit")]
    except OSError:
        return []


def analyse(path: str | os.PathLike, *, text: str | None = None) -> Analysis:
    """Load and check a spec, collecting every diagnostic (errors and warnings) at once."""
    path = str(path)
    with _no_cyclic_gc():
        return _analyse(path, text)


@contextlib.contextmanager
def _no_cyclic_gc():
    """Loading allocates many small acyclic objects; the cyclic collector would rescan them all
    repeatedly (a third of the time on a 10,000-edit spec).  Reference counting still frees them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _analyse(path: str, text: str | None) -> Analysis:
    from editspec.lang.checks import check_spec

    loader = _Loader()
    try:
        if text is None:
            if not os.path.isfile(path):
                raise EditspecError(f"no such spec file: {path}",
                                    hint=did_you_mean(os.path.basename(path), _edit_files_near(path)))
            loader.load_file(path)
        else:
            loader.load_text(path, text)
    except EditspecError as error:
        return Analysis(None, error.diagnostics)
    if any(d.severity == "error" for d in loader.diagnostics) and not loader.files:
        return Analysis(None, loader.diagnostics)
    spec = loader.build(path)
    diagnostics = loader.diagnostics + check_spec(spec, loader.texts)
    failed = any(d.severity == "error" for d in diagnostics)
    return Analysis(None if failed else spec, _ordered(diagnostics))


def _ordered(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    unique = list(dict.fromkeys(diagnostics))
    return sorted(unique, key=lambda d: (d.location.file, d.location.line, d.location.column) if d.location else ("", 0, 0))


def load_spec(path: str | os.PathLike, *, text: str | None = None) -> ir.Spec:
    """The IR of a spec file, or `EditspecError` with every problem found.

    Example:
        >>> spec = load_spec("specs/examples/leadership.edit")   # doctest: +SKIP
    """
    analysis = analyse(path, text=text)
    if analysis.spec is None:
        raise EditspecError(analysis.errors or analysis.diagnostics)
    return analysis.spec
