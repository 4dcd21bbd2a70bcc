"""Properties of the parser, formatter and IR over random valid specs and random junk."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from editspec import ir
from editspec.errors import EditspecError
from editspec.lang.fmt import format_text
from editspec.lang.resolve import analyse, load_spec
from editspec.lang.syntax import decode
from spec_strategies import spec_text

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _spec(text: str) -> ir.Spec:
    analysis = analyse("random.edit", text=text)
    assert analysis.spec is not None, "\n".join(d.render() for d in analysis.diagnostics) + "\n---\n" + text
    return analysis.spec


@SETTINGS
@given(spec_text())
def test_generated_specs_are_valid(text):
    _spec(text)


@SETTINGS
@given(spec_text())
def test_fmt_is_idempotent(text):
    once = format_text(text, "random.edit")
    assert format_text(once, "random.edit") == once


@SETTINGS
@given(spec_text())
def test_fmt_preserves_meaning(text):
    formatted = format_text(text, "random.edit")
    assert _spec(formatted).content() == _spec(text).content()
    assert _spec(formatted).content_hash() == _spec(text).content_hash()


@SETTINGS
@given(spec_text())
def test_fmt_keeps_every_comment(text):
    from editspec.lang.syntax import parse

    before = [str(c) for c in parse(text, "random.edit").comments]
    after = [str(c) for c in parse(format_text(text, "random.edit"), "random.edit").comments]
    assert after == before


@SETTINGS
@given(spec_text())
def test_ir_json_round_trip_is_identity(text):
    spec = _spec(text)
    again = ir.Spec.from_json(spec.to_json())
    assert again == spec
    assert again.to_json() == spec.to_json()


MUTATION_CHARS = list('{}()"\\->|#%/.,[]\n =<>') + ["edit", "keep", "relation", "é", "\x00"]


@st.composite
def mutated(draw):
    text = draw(spec_text())
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        kind = draw(st.integers(0, 2))
        if kind == 0:
            text = text[:at] + text[at + draw(st.integers(1, 8)):]
        elif kind == 1:
            text = text[:at] + draw(st.sampled_from(MUTATION_CHARS)) + text[at:]
        else:
            end = draw(st.integers(at, len(text)))
            text = text[:at] + text[at:end] * 2 + text[end:]
    return text


@SETTINGS
@given(mutated())
def test_mutated_specs_raise_only_editspec_errors(text):
    for action in (lambda: load_spec("mutated.edit", text=text), lambda: format_text(text, "mutated.edit")):
        try:
            action()
        except EditspecError as error:
            assert error.diagnostics and all(d.message for d in error.diagnostics)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_editspec_errors(data):
    try:
        load_spec("junk.edit", text=decode(data, "junk.edit"))
    except EditspecError as error:
        assert error.render()
