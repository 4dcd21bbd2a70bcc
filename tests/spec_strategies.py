"""Hypothesis strategies that write random *valid* `.edit` texts, with random layout and comments.

Valid by construction: subjects are unique per relation, keep constraints name subjects that
no edit touches, every template has `{subject}`, thresholds are in range.
"""
from __future__ import annotations

from hypothesis import strategies as st

from editspec.lang.metrics import METRICS

FACT = ("efficacy", "generalization", "locality", "portability")

NAMES = st.sampled_from(["ceo", "capital", "founder", "language", "sport", "owner", "mayor_of", "r2"])
# Text for string contents: letters, unicode, and the characters that need escaping.
TEXT = st.text(alphabet=st.sampled_from(list("abcXYZ é漢ü-'.,:;!?0123") + ['"', "\\", "\n", "\t", "{", "}", "#", " "]),
               min_size=1, max_size=12).filter(lambda s: s.strip())


def quote(value: str) -> str:
    """A STRING token for `value`, escaping what must be escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


@st.composite
def gap(draw) -> str:
    """Whitespace between tokens, sometimes with a comment (which must end the line)."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return "\n"
    if choice == 1:
        comment = draw(st.sampled_from(["note", "why: because", 'é漢 {x} "q"', ""]))
        return f"  # {comment}\n"
    if choice == 2:
        return "\n\n  "
    return " " * draw(st.integers(1, 3))


@st.composite
def answer(draw) -> str:
    values = draw(st.lists(TEXT, min_size=1, max_size=3))
    return " | ".join(quote(v) for v in values)


@st.composite
def relation(draw, name: str) -> str:
    g = lambda: draw(gap())  # noqa: E731
    templates = [f"prompt{g()}{quote('The ' + draw(TEXT) + ' of {subject} is')}"]
    for kind in draw(st.lists(st.sampled_from(["prompt", "paraphrase", "question"]), max_size=3)):
        templates.append(f"{kind} {quote('{subject} ' + draw(TEXT))}")
    return f"relation {name}{g()}{{{g()}" + g().join(templates) + f"{g()}}}"


@st.composite
def fact(draw, relations: list[str]) -> str:
    if draw(st.booleans()):
        return f"{draw(st.sampled_from(relations))}({quote('K' + draw(TEXT))}) -> {draw(answer())}"
    return f"{quote('Q ' + draw(TEXT))} -> {draw(answer())}"


@st.composite
def edit(draw, name: str, subject: str, relations: list[str]) -> str:
    g = lambda: draw(gap())  # noqa: E731
    head = f"edit {name}({quote(subject)}){g()}->{g()}{draw(answer())}"
    clauses = []
    was = draw(st.sampled_from(["none", "header", "block"]))  # either place, never both
    if was == "header":
        head += f"{g()}was{g()}{quote(draw(TEXT))}"
    elif was == "block":
        clauses.append(f"was {quote(draw(TEXT))}")
    if draw(st.booleans()):
        clauses.append("scope {" + g().join(quote(draw(TEXT)) for _ in range(draw(st.integers(0, 2)))) + "}")
    for keyword in ("keep", "implies"):
        if draw(st.booleans()):
            clauses.append(keyword + " {" + g() + g().join(draw(fact(relations)) for _ in range(draw(st.integers(0, 2)))) + g() + "}")
    if not clauses and draw(st.booleans()):
        return head
    return head + " {" + g() + g().join(clauses) + g() + "}"


@st.composite
def number(draw, low: float = 0.0, high: float = 1.0) -> str:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return f"{draw(st.floats(low, high, allow_nan=False)):.3f}"
    if kind == 1:
        return f"{draw(st.integers(int(low * 100), int(min(high, 1.0) * 100)))}%"
    denominator = draw(st.integers(1, 9))
    return f"{draw(st.integers(0, denominator))}/{denominator}"


@st.composite
def spec_text(draw) -> str:
    """A whole valid spec."""
    g = lambda: draw(gap())  # noqa: E731
    relations = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    items = [f"model {quote(draw(st.sampled_from(['smollm2-135m', 'gemma3-270m'])))}"] if draw(st.booleans()) else []
    items += [draw(relation(name)) for name in relations]
    subjects = draw(st.lists(TEXT, min_size=1, max_size=5, unique=True))
    for subject in subjects[: len(subjects) // 2 + 1]:
        items.append(draw(edit(draw(st.sampled_from(relations)), "S" + subject, relations)))
    rest = subjects[len(subjects) // 2 + 1:]
    if rest:
        batch = g().join(f"{quote('S' + s)} -> {draw(answer())}" + (f" was {quote(draw(TEXT))}" if draw(st.booleans()) else "")
                         for s in rest)
        items.append(f"edits {relations[0]} {{{g()}{batch}{g()}}}")
    if draw(st.booleans()):
        items.append(
            f"canonical {quote(draw(TEXT))} {{{g()}example {quote(draw(TEXT))} -> {quote(draw(TEXT))}"
            + (f" over {quote('O' + draw(TEXT))}" if draw(st.booleans()) else "")
            + f"{g()}check p >= {draw(number())} {{ {draw(fact(relations))} }}{g()}keep {{ {draw(fact(relations))} }}{g()}}}")
    if draw(st.booleans()):
        items.append(f"forget {quote(draw(TEXT))} {{ prompt {quote(draw(TEXT))}{g()}never {quote(draw(TEXT))} }}")
    if draw(st.booleans()):
        metric = draw(st.sampled_from(["loss_increase", "kl"]))
        items.append(f"preserve {{ text {quote(draw(TEXT))}{g()}budget {metric} <= {draw(number())} }}")
    if draw(st.booleans()):
        metrics = draw(st.lists(st.sampled_from(sorted(m for m in METRICS if METRICS[m].high == 1.0)), unique=True, max_size=4))
        # a metric once plain, and maybe once more under a named protocol (`efficacy[chat]`)
        labels = metrics + [f"{m}[{draw(st.sampled_from(['chat', 'compare', 'generate']))}]"
                            for m in metrics if m in FACT and draw(st.booleans())]
        items.append("expect {" + g() + g().join(f"{m} {draw(st.sampled_from(['>=', '<=']))} {draw(number())}" for m in labels) + g() + "}")
    if draw(st.booleans()):
        items.append(f"backend {draw(st.sampled_from(['thirdparty', 'my_backend']))} {{ layers {draw(st.integers(0, 5))}..{draw(st.integers(6, 9))}"
                     f"{g()}lr {draw(st.sampled_from(['0.5', '1e-3', '-1']))}{g()}mode {quote('x')} flag true items [1, \"a\", 2.5] }}")
    order = draw(st.permutations(items))
    return "".join(item + draw(gap()) + "\n" for item in order if item)
