"""Prompt templates of black-box plugins: Jinja2, sandboxed, with facts passed only as data.

The template *source* is the plugin's `template.jinja` (editspec's default, or a file the user
names with the backend's `template` setting).  Spec text (facts, prompts, answers) reaches
it only as variables, so `{{ 7 * 7 }}` or `{% include %}` inside a fact is printed as those
characters and never evaluated; facts are single lines, so they cannot open a new section of
the prompt either.  The sandbox also keeps a user's template from reaching Python internals.

>>> render(LTE_TEMPLATE, query="Who leads Twitter?", facts=["The CEO of Twitter is Linda Yaccarino"])[:22]
'Please acknowledge the'
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from editspec.errors import EditspecError

TEMPLATE_FILE = "template.jinja"

# LTE's inference-phase prompt (docs/methods/retrieval.md); a numbered list when several facts apply.
LTE_TEMPLATE = (
    "Please acknowledge the updated information provided below and respond to the subsequent question.\n\n"
    "[Updated Information]:\n"
    "{% if facts | length == 1 %}{{ facts[0] }}\n"
    "{% else %}{% for fact in facts %}{{ loop.index }}. {{ fact }}\n{% endfor %}{% endif %}"
    "\n[Question]:\n{{ query }}"
)

# IKE's demonstrations (docs/methods/ike.md): `New Fact: {p} {o*}\nPrompt: {q} {a}\n\n` each,
# then the new fact of the edit that applies and the query.
IKE_TEMPLATE = (
    "{% for d in demonstrations %}New Fact: {{ d.fact }}\nPrompt: {{ d.prompt }} {{ d.answer }}\n\n{% endfor %}"
    "New Fact: {{ fact }}\nPrompt: {{ query }}"
)

# IKE for chat requests (docs/methods/ike.md#chat-requests): each demonstration becomes a user
# turn, `ike_chat_user(fact, prompt)`, and an assistant turn, its answer; the applying edit's fact
# and the caller's own text make the last user turn.  Plain words, not the completion template's
# "New Fact:/Prompt:" labels: on SmolLM2-135M they did as well or better.

def ike_chat_user(fact: str, prompt: str) -> str:
    """The user turn of one IKE chat exchange: a new fact as a sentence, then a prompt or question.

    >>> ike_chat_user("The capital of Ruritania is Strelsau", "What is Ruritania's capital?")
    "New fact: The capital of Ruritania is Strelsau.\\nWhat is Ruritania's capital?"
    """
    return f"New fact: {fact.rstrip('.')}.\n{prompt}"


@lru_cache(maxsize=32)
def _compile(source: str):
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined,
                                                keep_trailing_newline=True)
    try:
        return environment.from_string(source)
    except TemplateSyntaxError as error:
        raise EditspecError(f"prompt template: line {error.lineno}: {error.message}",
                            hint="templates are Jinja2; the variables are listed in the README's "
                            "\"API models\" section") from None


def check_template(source: str) -> None:
    """Raise an `EditspecError` if `source` is not a valid Jinja2 template."""
    _compile(source)


def render(source: str, **variables) -> str:
    """Render the template `source` with `variables` as data (never as template text).

    >>> render("{{ query }}!", query="{{ 7 * 7 }}")
    '{{ 7 * 7 }}!'
    """
    from jinja2 import TemplateError

    try:
        return _compile(source).render(**variables)
    except TemplateError as error:
        raise EditspecError(f"prompt template failed: {error}",
                            hint="check the variables it uses against the README's \"API models\" section") from None


def read_template(setting: str | None, default: str) -> str:
    """The template text for a backend's `template` setting: None for `default`, else a file path."""
    if setting is None:
        return default
    path = Path(setting).expanduser()
    if not path.is_file():
        raise EditspecError(f"prompt template file `{setting}` does not exist",
                            hint="set `template` to the path of a Jinja2 file, or leave it out for the default")
    source = path.read_text(encoding="utf-8")
    check_template(source)
    return source
