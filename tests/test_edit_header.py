"""`was` in an edit's header: it parses, means what the block form means, formats to one
canonical place (the header) idempotently with its comments, and misplaced or doubled
clauses get diagnostics that say where they go."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from editspec.errors import EditspecError
from editspec.lang.fmt import format_text
from editspec.lang.resolve import analyse, load_spec
from editspec.lang.syntax import parse
from spec_strategies import TEXT, quote

RELATION = 'relation city {\n  prompt "The {subject} is in the city of"\n}\n\n'
KEEP = 'keep { city("Brandenburg Gate") -> "Berlin" }'

# (header form, block form): the same edit written both ways.
SAME_EDIT = [
    ('edit city("Eiffel Tower") -> "Rome" was "Paris"\n',
     'edit city("Eiffel Tower") -> "Rome" { was "Paris" }\n'),
    (f'edit city("Eiffel Tower") -> "Rome" | "Roma" was "Paris" {{ {KEEP} }}\n',
     f'edit city("Eiffel Tower") -> "Rome" | "Roma" {{\n  was "Paris"\n  {KEEP}\n}}\n'),
    (f'edit city("Eiffel Tower") -> "Rome" was "Paris" {{\n  scope {{ "The tower stands in" }}\n  {KEEP}\n}}\n',
     f'edit city("Eiffel Tower") -> "Rome" {{\n  scope {{ "The tower stands in" }}\n  {KEEP}\n  was "Paris"\n}}\n'),
    ('edit city("Eiffel Tower")\n  -> "Rome"\n  was "Paris \\"Lutetia\\""\n',
     'edit city("Eiffel Tower") -> "Rome" {\n  was "Paris \\"Lutetia\\""\n}\n'),
]


@pytest.mark.parametrize("header, block", SAME_EDIT)
def test_header_and_block_forms_lower_to_the_same_ir(header, block):
    in_header, in_block = load_spec("h.edit", text=RELATION + header), load_spec("b.edit", text=RELATION + block)
    assert in_header.edits[0].old is not None
    assert in_header.content() == in_block.content()
    assert in_header.content_hash() == in_block.content_hash()


@pytest.mark.parametrize("header, block", SAME_EDIT)
def test_both_forms_format_to_the_header_form_idempotently(header, block):
    canonical = format_text(RELATION + header, "h.edit")
    assert format_text(RELATION + block, "b.edit") == canonical
    assert format_text(canonical, "h.edit") == canonical
    edit_line = canonical.splitlines()[4]
    assert edit_line.startswith("edit ") and " was " in edit_line
    assert not any(line.strip().startswith("was ") for line in canonical.splitlines())


def test_header_was_parses_with_and_without_a_block():
    tree = parse(RELATION + f'edit city("A") -> "B" was "C"\nedit city("D") -> "E" was "F" {{ {KEEP} }}\n').tree
    edits = [d for d in tree.children if d.data == "edit_decl"]
    assert [[c.data for c in e.children[3:]] for e in edits] == [["was_clause"], ["was_clause", "edit_body"]]


# (source, formatted): where comments go when `was` moves to the header.
COMMENTS = [
    # the moved clause's trailing comment ends the header line
    ('edit city("A") -> "B" {\n  was "C"  # the 2020 census\n  scope { "x" }\n}\n',
     'edit city("A") -> "B" was "C" {  # the 2020 census\n  scope { "x" }\n}\n'),
    # ... also when the block empties and goes
    ('edit city("A") -> "B" {\n  was "C"  # the 2020 census\n}\n', 'edit city("A") -> "B" was "C"  # the 2020 census\n'),
    # the header keeps its own comment; the clause's stays inside the block, which stays for it
    ('edit city("A") -> "B" {  # why\n  was "C"  # the 2020 census\n}\n',
     'edit city("A") -> "B" was "C" {  # why\n  # the 2020 census\n}\n'),
    # a comment on a line of its own inside the block stays in the block
    ('edit city("A") -> "B" {\n  # old value from the survey\n  was "C"\n}\n',
     'edit city("A") -> "B" was "C" {\n  # old value from the survey\n}\n'),
    # a comment that stood between the header and `was` keeps its order
    ('edit city("A") -> "B" {\n  scope { "x" }  # first\n  was "C"  # second\n}\n',
     'edit city("A") -> "B" was "C" {\n  scope { "x" }  # first\n  # second\n}\n'),
]


@pytest.mark.parametrize("source, formatted", COMMENTS)
def test_moving_was_keeps_every_comment_in_order(source, formatted):
    assert format_text(RELATION + source, "c.edit") == RELATION + formatted
    assert format_text(RELATION + formatted, "c.edit") == RELATION + formatted


def test_two_was_are_left_where_they_stand_for_check_to_report():
    source = RELATION + 'edit city("A") -> "B" was "C" {\n  was "D"\n}\n'
    assert format_text(source, "t.edit") == source
    block_only = RELATION + 'edit city("A") -> "B" {\n  was "C"\n  was "D"\n}\n'
    assert format_text(block_only, "t.edit") == block_only


# (edit, message, line, column)
DOUBLED = [
    ('edit city("A") -> "B" was "C" { was "D" }', 'conflicting `was` for city("A"): "D" here, but "C" in the header', 5, 33),
    ('edit city("A") -> "B" was "C" { was "C" }', '`was` is given twice for city("A") (also in the header)', 5, 33),
    ('edit city("A") -> "B" {\n  was "C"\n  was "D"\n}', 'conflicting `was` for city("A"): "D" here, but "C" at line 6', 7, 3),
]


@pytest.mark.parametrize("edit, message, line, column", DOUBLED)
def test_a_second_was_is_an_error_at_it(edit, message, line, column):
    (error,) = analyse("t.edit", text=RELATION + edit + "\n").errors
    assert (error.message, error.location.line, error.location.column) == (message, line, column)
    assert "header" in error.hint


# (text, message, hint fragment, column)
MISPLACED = [
    ('edit city("A") -> "B" { scope { "x" } } was "C"', "`was` after the edit's block", '-> "new" was "old" { ... }', 41),
    ('was "C"', "`was` outside an edit", '`edit REL("subject") -> "new" was "old"`', 1),
    ('edit city("A") was "C" -> "B"', "`was` before the new object", 'was "old"', 16),
    ('edit city("A") -> "B" was "C" was "D"', "an edit has one `was`", "remove the second", 31),
    (f'edit city("A") -> "B" {KEEP}', "`keep` in the edit header", "goes inside the edit's block", 23),
    (f'edit city("A") -> "B" was "C" {KEEP}', "`keep` in the edit header", "goes inside the edit's block", 31),
    ('keep { "x" -> "y" }', "`keep` outside an edit", "clause of an edit", 1),
    ('edit city("A") -> "B" { keep { "x" -> "y" was "z" } }', "`was` inside a `keep` block", "in the edit header", 43),
    ('edits city { "A" -> "B" scope { "x" } }', "a batch line takes no `scope`", "its own `edit`", 25),
    ('edits city { "A" -> "B" was "C" was "D" }', "a batch line has one `was`", '"subject" -> "new" was "old"', 33),
    ('relation r { prompt "{subject} x" was "y" }', "`was` is not a clause of a `relation` block", "belongs to an edit", 35),
    ('canonical "c" { example "a" -> "b" was "c" }', "`was` is not a clause of a `canonical` block", "`over`", 36),
]


@pytest.mark.parametrize("text, message, hint, column", MISPLACED)
def test_a_misplaced_clause_says_where_it_goes(text, message, hint, column):
    with pytest.raises(EditspecError) as raised:
        parse(text + "\n", "m.edit")
    (diagnostic,) = raised.value.diagnostics
    assert diagnostic.message == message
    assert hint in diagnostic.hint
    assert (diagnostic.location.line, diagnostic.location.column) == (text.count("\n") + 1, column)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=TEXT, target=TEXT, old=TEXT, scope=st.lists(TEXT, max_size=2), comment=st.sampled_from(["", "  # why"]))
def test_random_edits_mean_and_format_the_same_in_both_forms(subject, target, old, scope, comment):
    rest = [f"scope {{ {' '.join(quote(s) for s in scope)} }}"] if scope else []
    head = f"edit city({quote('S' + subject)}) -> {quote(target)}"
    in_header = RELATION + f"{head} was {quote(old)}" + (" {" + comment + "\n  " + "\n  ".join(rest) + "\n}" if rest else comment) + "\n"
    in_block = RELATION + head + " {\n  " + "\n  ".join([f"was {quote(old)}{comment}", *rest]) + "\n}\n"
    assert load_spec("h.edit", text=in_header).content() == load_spec("b.edit", text=in_block).content()
    canonical = format_text(in_block, "b.edit")
    assert format_text(canonical, "b.edit") == canonical
    assert format_text(in_header, "h.edit") == format_text(canonical, "h.edit")
    assert [str(c) for c in parse(canonical).comments] == [str(c) for c in parse(in_block).comments]
