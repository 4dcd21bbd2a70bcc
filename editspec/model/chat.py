"""A fact asked the way a chat model is used: a user turn through the tokenizer's chat template.

Teacher-forced prompts ("The Eiffel Tower is located in the city of") are not how an instruct
model is asked; a user types "In which city is the Eiffel Tower?" and the model answers after
its template's assistant header.  An edit made only at the raw prompt barely reaches that
answer (issue 16: 20 zsRE edits with memit, 1 of 20 chat answers gave the new object).  This
module says, once for every backend, what the chat form of a fact is:

- the user message is the relation's `question` filled in, or (without questions) the prompt;
- the templated text is ``apply_chat_template([user], add_generation_prompt=True)``, tokenised
  *without* adding special tokens (the template writes its own);
- the subject's characters are found inside the user turn of that text, so a backend keyed at
  the subject's last token reads it there;
- the answer starts right after the assistant header, with no leading space.

The `chat` setting (`ChatSettings`, shared by the locate, training and memory backends, and
verify's `chat` option) is `auto` (chat forms whenever the tokenizer has a chat template) or
`off`.  Verify's `chat` protocol asks its questions through `chat_prompt_ids`, the same turn.

Example::

    text, span = chat_text(tokenizer, "Where is the {} located?", "Eiffel Tower")
    text[span[0]:span[1]]                     # 'Eiffel Tower', inside the user turn
    answer_ids(tokenizer, text, "Rome")       # ids of 'Rome' as the assistant's first word
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from editspec.errors import EditspecError

CHAT_MODES = ("auto", "off")
ChatMode = Literal["auto", "off"]


class ChatSettings(BaseModel):
    """Whether a backend also edits the fact as it is asked in chat (one declaration for all)."""

    model_config = ConfigDict(extra="forbid")

    chat: ChatMode = Field(
        "auto", description="`auto`: when the tokenizer has a chat template, each edit is also made where the "
        "fact is asked as a user turn (the relation's questions, else its prompt) and answered at the start of "
        "the assistant's reply, beside the raw prompts; `off`: raw prompts only, as for a plain LM.")


def has_chat_template(tokenizer) -> bool:
    """Whether `tokenizer` carries a chat template (instruct models do, plain LMs do not)."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_enabled(tokenizer, chat: str = "auto") -> bool:
    """The `chat` setting resolved for `tokenizer`: `auto` follows its chat template, `off` is off."""
    if chat not in CHAT_MODES:
        raise EditspecError(f"unknown chat mode `{chat}`", hint="one of " + ", ".join(CHAT_MODES))
    return chat == "auto" and has_chat_template(tokenizer)


def user_turn(tokenizer, message: str) -> str:
    """`message` as one user turn through the chat template, ending where the assistant answers."""
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                         tokenize=False)


def chat_prompt_ids(tokenizer, message: str) -> list[int]:
    """Token ids of `message` as the one user turn of the chat template, ready for the reply.

    The template writes its own special tokens (and any default system turn), so no others are added.

    >>> tokenizer.decode(chat_prompt_ids(tokenizer, "Where is the Eiffel Tower?"))  # doctest: +SKIP
    '<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\nWhere is the Eiffel Tower?<|im_end|>\\n<|im_start|>assistant\\n'
    """
    return list(tokenizer(user_turn(tokenizer, message), add_special_tokens=False)["input_ids"])


def chat_text(tokenizer, question: str, subject: str) -> tuple[str, tuple[int, int]]:
    """The templated text of `question` (one ``{}`` for the subject) and the subject's char span in it.

    The span is looked up inside the user turn: the message is found in the templated text
    (its last occurrence, so a system prompt that happens to repeat it is not picked).
    """
    if question.count("{}") != 1:
        raise EditspecError(f"question {question!r} must contain exactly one `{{}}` where the subject goes")
    at = question.index("{}")
    message = question[:at] + subject + question[at + 2:]
    text = user_turn(tokenizer, message)
    start = text.rfind(message)
    if start < 0:
        raise EditspecError(f"the chat template rewrote the user message {message!r}",
                            hint="set `chat off` for this model: its template does not keep the message as written")
    return text, (start + at, start + at + len(subject))


def answer_ids(tokenizer, text: str, answer: str) -> list[int]:
    """Ids of `answer` as the first words of the assistant's reply that follows templated `text`.

    The difference between tokenising ``text`` and ``text + answer`` (no leading space, no
    added special tokens); where a tokenizer merges across the boundary, `answer` alone.
    """
    answer = answer.strip()
    if not answer:
        raise EditspecError("the answer is empty")
    head = tokenizer(text, add_special_tokens=False)["input_ids"]
    both = tokenizer(text + answer, add_special_tokens=False)["input_ids"]
    if both[: len(head)] == head and len(both) > len(head):
        return list(both[len(head):])
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise EditspecError(f"answer {answer!r} tokenises to nothing")
    return list(ids)


def ended_answer(answer: str, end: str) -> str:
    """`answer` followed by `end`, the text an edit trains to close its answer (`answer_end`).

    Unchanged when `end` is empty or `off`, or when the answer already ends a sentence.

    >>> ended_answer("Rome", "."), ended_answer("Rome, Italy.", "."), ended_answer("Rome", "off")
    ('Rome.', 'Rome, Italy.', 'Rome')
    """
    answer = answer.rstrip()
    if not end or end == "off" or answer[-1:] in ".!?":
        return answer
    return answer + end


def chat_questions(questions, prompt: str) -> list[str]:
    """The user messages a fact is asked by in chat: its `questions`, else its `prompt`, deduplicated."""
    return list(dict.fromkeys(q for q in questions if q.strip())) or [prompt]


def chat_conversation(tokenizer, document: str) -> str:
    """`document` as a templated exchange: its first sentence the user's turn, the rest the reply.

    Chat-form statistics (`mom2_chat`) read text like this, so that C also covers the keys a
    chat template's own tokens and an assistant's reply produce (docs/methods/locate.md#chat-form-statistics-mom2_chat).
    A one-sentence document is the user's turn with an empty reply.
    """
    import re

    parts = re.split(r"(?<=[.!?])\s+", document.strip(), maxsplit=1)
    user, reply = parts[0], parts[1] if len(parts) > 1 else ""
    return tokenizer.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                                         tokenize=False)
