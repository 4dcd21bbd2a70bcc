"""Parsing `.edit` text into a lark tree, with comments kept aside and friendly syntax errors.

Example:
    >>> from editspec.lang.syntax import parse
    >>> parse('model "smollm2-135m"\\n', "x.edit").tree.children[0].data
    Token('RULE', 'model_decl')
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from editspec.errors import Diagnostic, EditspecError, Location


@dataclass(frozen=True)
class ParsedFile:
    """A parsed file: its text, syntax tree and comments (tokens with line and column)."""

    path: str
    text: str
    tree: Tree
    comments: tuple[Token, ...]

    def line(self, number: int) -> str:
        return line_of(self.text, number)


def line_of(text: str, number: int) -> str:
    lines = text.splitlines()
    return lines[number - 1] if 0 < number <= len(lines) else ""


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark.open_from_package(
        "editspec.grammar",
        "editspec.lark",
        parser="lalr",
        strict=True,
        propagate_positions=True,
        maybe_placeholders=False,
    )


def decode(data: bytes, path: str) -> str:
    """UTF-8 text of a spec file; binary junk or invalid UTF-8 is a diagnostic, not a crash."""
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise EditspecError(Diagnostic(
            "this is not a text file (it contains NUL bytes)",
            Location(path, line, 1), hint=".edit files are UTF-8 text"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", errors="replace")) + 1
        raise EditspecError(Diagnostic(
            f"invalid UTF-8 (byte 0x{data[error.start]:02x})",
            Location(path, line, column),
            hint="save the file as UTF-8",
            source_line=data.splitlines()[line - 1].decode("utf-8", errors="replace") if data.splitlines() else "",
        )) from None
    return text.removeprefix("\ufeff")


def parse(text: str, path: str = "<string>") -> ParsedFile:
    """Parse spec text.  Raises `EditspecError` with one positioned diagnostic on a syntax error."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as error:
        raise EditspecError(_syntax_diagnostic(error, text, path)) from None
    return ParsedFile(path, text, tree, tuple(_scan_comments(text)))


def _scan_comments(text: str) -> list[Token]:
    """Comments are `#` to end of line outside strings.  Scanning by hand keeps the shared
    parser free of per-call callbacks (lark's `lexer_callbacks` are fixed at construction)."""
    found: list[Token] = []
    line, column, index, n = 1, 1, 0, len(text)
    in_string = False
    while index < n:
        char = text[index]
        if in_string:
            if char == "\\":
                index += 2
                column += 2
                continue
            if char == '"' or char == "\n":
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "#":
            end = text.find("\n", index)
            end = n if end == -1 else end
            found.append(Token("COMMENT", text[index:end].rstrip(), start_pos=index, line=line, column=column))
            column += end - index
            index = end
            continue
        if char == "\n":
            line, column = line + 1, 1
        else:
            column += 1
        index += 1
    return found


# Known mistakes, matched with lark's `match_examples`: (message, hint) -> examples.
_KNOWN_MISTAKES: dict[tuple[str, str], list[str]] = {
    ("expected `->` between the subject and the new object",
     'write `edit REL("subject") -> "new object"`'): [
        'edit ceo("Twitter") "Linda"', 'edit ceo("Twitter") = "Linda"', 'edit ceo("Twitter")\n',
    ],
    ("an edit names its relation and subject as `REL(\"subject\")`",
     'write `edit ceo("Twitter") -> "Linda Yaccarino"`'): [
        'edit "Twitter" -> "Linda"', 'edit ceo "Twitter" -> "Linda"', 'edit ceo(Twitter) -> "Linda"',
    ],
    ("a relation block takes `prompt`, `paraphrase` or `question` templates",
     'write `prompt "The CEO of {subject} is"`'): [
        'relation r { "The {subject}" }', 'relation r { template "x" }', 'relation r { prompts "x" }',
    ],
    ("unclosed block: expected `}`", "every `{` needs a matching `}`"): [
        "relation r {", "edit r(\"a\") -> \"b\" {", "expect {", "backend memit {", 'relation r { prompt "x"',
    ],
    ("a threshold needs `>=` or `<=` and a number", "for example `efficacy >= 0.95`"): [
        "expect { efficacy 0.95 }", "expect { efficacy > 0.95 }", "expect { efficacy = 0.95 }",
        "expect { efficacy >= }", "expect { efficacy >= high }",
    ],
    ("a range is written `START..END`", "for example `layers 4..8`"): [
        "backend memit { layers 4...8 }", "backend memit { layers 4.. }", "backend memit { layers 4-8 }",
    ],
}

# A mistake in the first declaration leaves the LALR parser in a different state than the same
# mistake in a later one, so every example is also matched after a declaration.
_KNOWN_MISTAKES = {label: examples + [f'model "m"\n{e}' for e in examples] for label, examples in _KNOWN_MISTAKES.items()}

_TOP_LEVEL = "model, relation, edit, edits, canonical, forget, preserve, expect, backend or import"


def _syntax_diagnostic(error: UnexpectedInput, text: str, path: str) -> Diagnostic:
    line, column = max(getattr(error, "line", 1), 1), max(getattr(error, "column", 1), 1)
    if isinstance(error, UnexpectedEOF) or getattr(error, "token", None) == "$END" or (
        isinstance(error, UnexpectedToken) and error.token.type == "$END"
    ):
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    message, hint = "syntax error", None
    matched = _character_mistake(error, text) or _misplaced_clause(error)
    try:
        matched = matched or error.match_examples(_parser().parse, _KNOWN_MISTAKES, use_accepts=True)
    except Exception:  # matching is best-effort; the generic message below still applies
        matched = None
    if matched:
        message, hint = matched
    elif isinstance(error, UnexpectedCharacters):
        char = text[error.pos_in_stream] if error.pos_in_stream < len(text) else ""
        message = f"unexpected character {char!r}"
        hint = _expected_hint(error.allowed)
    elif isinstance(error, UnexpectedToken):
        token = error.token
        shown = "end of file" if token.type == "$END" else f"`{token}`"
        message = f"unexpected {shown}"
        hint = _expected_hint(error.accepts or error.expected)
    elif isinstance(error, UnexpectedEOF):
        message = "unexpected end of file"
        hint = _expected_hint(error.expected)
    return Diagnostic(message, Location(path, line, column), hint=hint, source_line=line_of(text, line))


def _character_mistake(error: UnexpectedInput, text: str) -> tuple[str, str] | None:
    if not isinstance(error, UnexpectedCharacters) or error.pos_in_stream >= len(text):
        return None
    char = text[error.pos_in_stream]
    if char == '"':
        return "unterminated string", 'close the string with `"` on the same line (write `\\n` for a line break)'
    closing = {"'": "'", "\u201c": "\u201d", "\u201d": "\u201d", "\u2018": "\u2019", "\u2019": "\u2019"}
    if char in closing:
        return "strings are written in straight double quotes", f'use "...", not {char}...{closing[char]}'
    return None


_EDIT_CLAUSES = ("was", "scope", "keep", "implies")
_BLOCK_WORDS = {"edit", "edits", "relation", "canonical", "forget", "preserve", "expect", "backend",
                "keep", "implies", "scope", "check"}
_WAS = 'edit REL("subject") -> "new" was "old"'


def _misplaced_clause(error: UnexpectedInput) -> tuple[str, str] | None:
    """An edit clause (`was`, `scope`, `keep`, `implies`) where it cannot stand: say where it goes.

    Where the parser stands is read off its value stack: the innermost block keyword still
    open, and whether its `->` or `{` has been read.
    """
    if not isinstance(error, UnexpectedToken) or str(error.token) not in _EDIT_CLAUSES:
        return None
    try:
        stack = list(error.interactive_parser.parser_state.value_stack)
    except AttributeError:  # no parser state to read: the generic message applies
        return None
    word = str(error.token)
    block = f"{word} {{ ... }}"
    in_block = f'`edit REL("subject") -> "new" {{ {block} }}`'
    opener, rest, closed = _innermost_open(stack)
    if opener is None:  # at the top level
        after_edit = closed == "edit" or bool(stack) and isinstance(stack[-1], Tree) and stack[-1].data == "edit_decl"
        where = "after the edit's block" if after_edit else "outside an edit"
        if word == "was":
            before = " { ... }" if after_edit else ""
            return f"`was` {where}", f"`was` belongs in the edit header, after the new object: `{_WAS}{before}`"
        return f"`{word}` {where}", f"`{word}` is a clause of an edit: write it inside the block, {in_block}"
    if opener == "edit" and "{" not in rest:
        if "->" not in rest:
            if word == "was":
                return "`was` before the new object", f"`was` follows the new object: `{_WAS}`"
            return f"`{word}` before the new object", f"clauses follow the new object, in a block: {in_block}"
        if rest[-1] == "|":
            return None  # an alias is missing: the generic "expected a string" says so
        if word == "was":
            return "an edit has one `was`", "remove the second one"
        return f"`{word}` in the edit header", f"`{word}` goes inside the edit's block: {in_block}"
    if opener == "edit":
        return None  # inside the edit's block every clause is welcome: the mistake is elsewhere
    if opener == "edits":
        if word == "was":
            return "a batch line has one `was`", 'write `"subject" -> "new" was "old"`'
        return (f"a batch line takes no `{word}`",
                f'an `edits` line is `"subject" -> "new" was "old"`; for `{word}` write the fact as its own `edit` with a block')
    if opener in ("keep", "implies", "scope", "check"):
        if word == "was":
            return (f"`was` inside a `{opener}` block",
                    f"`was` is the edited fact's old object: write it in the edit header, `{_WAS}`")
        return f"`{word}` inside a `{opener}` block", f"blocks do not nest: close the `{opener}` block with `}}` first"
    if opener == "canonical" and word == "was":
        return ("`was` is not a clause of a `canonical` block",
                'a canonical example names the answer it should beat with `over`: `example "prompt" -> "answer" over "other"`')
    return (f"`{word}` is not a clause of a `{opener}` block",
            f"`{word}` belongs to an edit: " + (f"`{_WAS}`" if word == "was" else in_block))


def _innermost_open(stack: list) -> tuple[str | None, list[str], str | None]:
    """(the innermost block keyword still open, the tokens read after it, the construct closed last).

    At an error the parser has not reduced what precedes the unexpected token, so a block
    whose `}` was just read still shows its keyword: its braces balance.
    """
    tokens = [str(item) for item in stack if isinstance(item, Token)]
    closed = None
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] not in _BLOCK_WORDS:
            continue
        rest = tokens[i + 1:]
        if "{" in rest and rest.count("{") == rest.count("}"):
            closed = closed or tokens[i]
            continue
        return tokens[i], rest, closed
    return None, [], closed


_TERMINAL_NAMES = {
    "STRING": 'a string ("...")', "NAME": "a name", "NUMBER": "a number", "COMPARATOR": "`>=` or `<=`",
    "TEMPLATE_KIND": "`prompt`, `paraphrase` or `question`", "LBRACE": "`{`", "RBRACE": "`}`",
    "LPAR": "`(`", "RPAR": "`)`", "__ANON_0": "`->`", "VBAR": "`|`", "PERCENT": "`%`", "SLASH": "`/`",
    "LSQB": "`[`", "RSQB": "`]`", "COMMA": "`,`",
}


def _expected_hint(expected) -> str | None:
    if not expected:
        return None
    parser = _parser()
    names = []
    for terminal in sorted(expected):
        if terminal in _TERMINAL_NAMES:
            names.append(_TERMINAL_NAMES[terminal])
            continue
        try:
            pattern = parser.get_terminal(terminal).pattern
        except KeyError:
            continue
        if pattern.type == "str":
            names.append(f"`{pattern.value}`")
        else:
            names.append(terminal.lower())
    names = sorted(set(names))
    if {"`model`", "`relation`", "`edit`"} <= set(names):
        return f"expected a declaration: {_TOP_LEVEL}"
    return "expected " + ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1] if names else None
