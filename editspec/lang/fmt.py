"""Canonical formatting of `.edit` files: idempotent, comment-preserving, meaning-preserving.

The layout depends only on the syntax tree and where comments sit (a trailing comment keeps its
column when the code fits before it), never on other spacing: two spaces of indentation, one blank line between declarations, keyword columns
aligned inside a block, a block with a single entry kept on one line when it fits.

Example:
    >>> print(format_text('edit ceo("X")->"Y"', "x.edit"), end="")
    edit ceo("X") -> "Y"
"""
from __future__ import annotations

from dataclasses import dataclass

from lark import Token, Tree

from editspec.lang.syntax import ParsedFile, parse

INDENT = "  "
MAX_INLINE = 100


@dataclass
class _Line:
    indent: int
    text: str
    tag: int  # the source line this output line comes from (for placing comments)
    trailing: str = ""
    trailing_column: int = 0  # where the comment stood in the source; kept when the code fits before it
    also: int | None = None  # another source line whose trailing comment may end this line (a moved clause's)


class _Printer:
    def __init__(self, parsed: ParsedFile):
        self.parsed = parsed
        self.lines: list[_Line] = []
        self.comment_lines = {c.line for c in parsed.comments}
        self.trailing_lines = {c.line for c in parsed.comments if parsed.line(c.line)[: c.column - 1].strip()}

    def emit(self, indent: int, text: str, tag: int, also: int | None = None) -> None:
        self.lines.append(_Line(indent, text, tag, also=also))

    def comment_on(self, first: int, last: int, skip: tuple[int | None, ...] = ()) -> bool:
        """Is there a comment on a source line from `first` to `last` (inclusive), other than `skip`?"""
        return any(first <= c <= last and c not in skip for c in self.comment_lines)

    def has_comment_within(self, node: Tree) -> bool:
        """A comment before the node's last line would be lost inside a one-line block."""
        return any(node.meta.line <= c < node.meta.end_line for c in self.comment_lines)

    # -- generic block shapes ---------------------------------------------------------------
    def block(self, indent: int, head: str, node: Tree, entries: list[tuple[str, int]], closing_tag: int | None = None,
              allow_inline: bool = True) -> None:
        """`head { entries }`: on one line when there is one short entry and no comment inside."""
        if allow_inline and len(entries) == 1 and not self.has_comment_within(node):
            inline = f"{head} {{ {entries[0][0]} }}"
            if len(INDENT * indent + inline) <= MAX_INLINE:
                # Tagged with the last line, so a comment that ended the block's source follows it.
                self.emit(indent, inline, node.meta.end_line)
                return
        if not entries:
            self.emit(indent, f"{head} {{}}", node.meta.line)
            return
        self.emit(indent, f"{head} {{", node.meta.line)
        for text, tag in entries:
            self.emit(indent + 1, text, tag)
        self.emit(indent, "}", closing_tag or node.meta.end_line)

    @staticmethod
    def aligned(pairs: list[tuple[str, str, int]]) -> list[tuple[str, int]]:
        """Keyword-value lines with the values lined up in one column."""
        width = max((len(k) for k, _, _ in pairs), default=0)
        return [(f"{k.ljust(width)} {v}", tag) for k, v, tag in pairs]

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def answer(tree: Tree) -> str:
        return " | ".join(str(t) for t in tree.children)

    def fact(self, tree: Tree) -> tuple[str, int]:
        if tree.data == "text_fact":
            prompt, answer = tree.children
            return f"{prompt} -> {self.answer(answer)}", tree.meta.line
        relation, subject, answer = tree.children
        return f"{relation}({subject}) -> {self.answer(answer)}", tree.meta.line

    @staticmethod
    def number(tree: Tree) -> str:
        parts = [str(t) for t in tree.children]
        return {"percent": f"{parts[0]}%", "fraction": "/".join(parts)}.get(tree.data, parts[0])

    def value(self, item: Tree | Token) -> str:
        if isinstance(item, Token):
            return str(item)
        if item.data == "range":
            return "..".join(str(t) for t in item.children)
        if item.data == "list":
            return "[" + ", ".join(self.value(c) for c in item.children) + "]"
        return self.number(item)

    # -- declarations ----------------------------------------------------------------------
    def model_decl(self, tree: Tree) -> None:
        self.emit(0, f"model {tree.children[0]}", tree.meta.line)

    def import_decl(self, tree: Tree) -> None:
        self.emit(0, f"import {tree.children[0]}", tree.meta.line)

    def relation_decl(self, tree: Tree) -> None:
        name, *templates = tree.children
        pairs = [(str(t.children[0]), str(t.children[1]), t.meta.line) for t in templates]
        self.block(0, f"relation {name}", tree, self.aligned(pairs), allow_inline=False)

    def edit_decl(self, tree: Tree) -> None:
        """`was` is written in the header, as on an `edits` batch line; one `was` in the block moves
        there, with its trailing comment when no comment stands between.  With two (an error
        `check` reports) each stays where it was written, so formatting loses nothing."""
        relation, subject, answer, *rest = tree.children
        head = f"edit {relation}({subject}) -> {self.answer(answer)}"
        body = next((c for c in rest if c.data == "edit_body"), None)
        clauses = list(body.children) if body else []
        was = [c for c in rest if c.data == "was_clause"] + [c for c in clauses if c.data == "was_clause"]
        also = None
        if was and (len(was) == 1 or was[0] not in clauses):
            head += f" was {was[0].children[0]}"
            if was[0] in clauses:
                clauses.remove(was[0])
            if not self.comment_on(tree.meta.line, was[0].meta.line - 1):
                also = was[0].meta.line
        if not clauses:
            # An empty block goes, unless it holds comments that would have nowhere to stand.
            notes = [c for c in sorted(self.comment_lines) if tree.meta.line <= c <= tree.meta.end_line]
            if body is None or len(notes) <= 1 and set(notes) <= self.trailing_lines:
                self.emit(0, head, tree.meta.line, notes[0] if body is not None and notes else also)
                return
        self.emit(0, f"{head} {{", tree.meta.line, also)
        for clause in clauses:
            self.edit_clause(1, clause)
        self.emit(0, "}", tree.meta.end_line)

    def edit_clause(self, indent: int, clause: Tree) -> None:
        if clause.data == "was_clause":
            self.emit(indent, f"was {clause.children[0]}", clause.meta.line)
        elif clause.data == "scope_clause":
            self.block(indent, "scope", clause, [(str(s), s.line) for s in clause.children])
        else:
            keyword = "keep" if clause.data == "keep_clause" else "implies"
            self.block(indent, keyword, clause, [self.fact(f) for f in clause.children])

    def edits_decl(self, tree: Tree) -> None:
        relation, *entries = tree.children
        lines = []
        for entry in entries:
            subject, answer, *was = entry.children
            text = f"{subject} -> {self.answer(answer)}"
            if was:
                text += f" was {was[0].children[0]}"
            lines.append((text, entry.meta.line))
        self.block(0, f"edits {relation}", tree, lines, allow_inline=False)

    def canonical_decl(self, tree: Tree) -> None:
        name, *clauses = tree.children
        self.emit(0, f"canonical {name} {{", tree.meta.line)
        for clause in clauses:
            if clause.data == "example_clause":
                prompt, answer, *over = clause.children
                text = f"example {prompt} -> {answer}" + (f" over {over[0].children[0]}" if over else "")
                self.emit(1, text, clause.meta.line)
            elif clause.data == "check_clause":
                statistic, comparator, number, *facts = clause.children
                head = f"check {statistic} {comparator} {self.number(number)}"
                self.block(1, head, clause, [self.fact(f) for f in facts])
            else:
                self.block(1, "keep", clause, [self.fact(f) for f in clause.children])
        self.emit(0, "}", tree.meta.end_line)

    def forget_decl(self, tree: Tree) -> None:
        name, *clauses = tree.children
        pairs = [("prompt" if c.data == "forget_prompt" else "never", str(c.children[0]), c.meta.line) for c in clauses]
        self.block(0, f"forget {name}", tree, self.aligned(pairs), allow_inline=False)

    def preserve_decl(self, tree: Tree) -> None:
        lines = []
        for clause in tree.children:
            if clause.data == "budget_clause":
                metric, comparator, number = clause.children
                lines.append((f"budget {metric} {comparator} {self.number(number)}", clause.meta.line))
            else:
                keyword = "text" if clause.data == "preserve_text" else "file"
                lines.append((f"{keyword} {clause.children[0]}", clause.meta.line))
        self.block(0, "preserve", tree, lines, allow_inline=False)

    def expect_decl(self, tree: Tree) -> None:
        pairs = []
        for e in tree.children:
            metric, *qualified, comparator, number = e.children
            label = f"{metric}[{qualified[0].children[0]}]" if qualified else str(metric)
            pairs.append((label, f"{comparator} {self.number(number)}", e.meta.line))
        self.block(0, "expect", tree, self.aligned(pairs), allow_inline=False)

    def backend_decl(self, tree: Tree) -> None:
        name, *settings = tree.children
        lines = [(f"{s.children[0]} {self.value(s.children[1])}", s.meta.line) for s in settings]
        self.block(0, f"backend {name}", tree, lines)

    # -- whole file ----------------------------------------------------------------------------
    def run(self) -> str:
        previous: Tree | None = None
        for decl in self.parsed.tree.children:
            if previous is not None and not (previous.data == decl.data and decl.data in ("model_decl", "import_decl")):
                self.emit(0, "", previous.meta.end_line)
            getattr(self, decl.data)(decl)
            previous = decl
        return self.render()

    def render(self) -> str:
        source_lines = self.parsed.text.splitlines()
        trailing: dict[int, Token] = {}
        own_line: list[Token] = []
        for comment in self.parsed.comments:
            before = source_lines[comment.line - 1][: comment.column - 1]
            (trailing.__setitem__(comment.line, comment) if before.strip() else own_line.append(comment))
        last_with_tag = {line.tag: i for i, line in enumerate(self.lines) if line.text}
        for i, line in enumerate(self.lines):
            if line.also is not None:
                last_with_tag.setdefault(line.also, i)
        for tag, comment in trailing.items():
            if tag in last_with_tag:
                self.lines[last_with_tag[tag]].trailing = str(comment)
                self.lines[last_with_tag[tag]].trailing_column = comment.column
            else:  # no output line comes from that source line: keep the comment on its own line
                own_line.append(Token("COMMENT", str(comment), line=tag, column=1))
        own_line.sort(key=lambda c: c.line)

        out: list[str] = []
        pending = 0
        for i, line in enumerate(self.lines):
            while pending < len(own_line) and own_line[pending].line < line.tag:
                comment = own_line[pending]
                indent = line.indent + 1 if line.text.startswith("}") else line.indent
                if not line.text:  # a blank separator: the comment belongs to what follows it
                    break
                out.append(INDENT * indent + str(comment))
                if indent == 0 and _blank_after(source_lines, comment.line):
                    out.append("")
                pending += 1
            text = INDENT * line.indent + line.text
            if line.trailing:
                # Comments aligned in a column stay in that column; otherwise two spaces after the code.
                text = text.ljust(max(len(text) + 2, line.trailing_column - 1)) + line.trailing
            out.append(text)
        if pending < len(own_line) and out:
            out.append("")
        for comment in own_line[pending:]:
            out.append(str(comment))
        return _collapse_blank_lines(out)


def _blank_after(source_lines: list[str], line: int) -> bool:
    return line < len(source_lines) and not source_lines[line].strip()


def _collapse_blank_lines(lines: list[str]) -> str:
    result: list[str] = []
    for line in lines:
        if not line and (not result or not result[-1]):
            continue
        result.append(line.rstrip())
    while result and not result[-1]:
        result.pop()
    return "\n".join(result) + "\n" if result else ""


def format_text(text: str, path: str = "<string>") -> str:
    """The canonical form of spec `text` (raises `EditspecError` on a syntax error)."""
    return _Printer(parse(text, path)).run()
