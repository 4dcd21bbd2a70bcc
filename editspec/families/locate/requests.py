"""Edit requests and their tokenised prompts (rewriting prompts over templates, chat forms, KL prompt)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from editspec.model.chat import answer_ids, chat_questions, chat_text, ended_answer
from editspec.errors import EditspecError
from editspec.model.tokens import encode_with_subject, fill_prompt, place_in_template, target_token_ids

KL_PROMPT = "{} is a"


@dataclass(frozen=True)
class EditRequest:
    """One fact to insert: ``prompt.format(subject)`` should continue with `target_new`.

    `questions` (each with one "{}" too) are how the fact is asked in chat; questions that do
    not name the subject are dropped, since the edit is keyed at the subject.

    >>> EditRequest("The capital of {} is", "France", "Rome", target_true="Paris")
    """

    prompt: str  # with exactly one "{}" where the subject goes
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()

    def __post_init__(self):
        placed = [q if q.count("{}") == 1 else q.replace(self.subject, "{}", 1)
                  for q in self.questions if q.count("{}") == 1 or (self.subject and self.subject in q)]
        object.__setattr__(self, "questions", tuple(q for q in placed if q.count("{}") == 1))
        if self.prompt.count("{}") != 1:
            if self.subject and self.prompt.count(self.subject) >= 1 and "{}" not in self.prompt:
                # A plain prompt: the first occurrence of the subject marks its place.
                object.__setattr__(self, "prompt", self.prompt.replace(self.subject, "{}", 1))
            else:
                raise EditspecError(
                    f"prompt {self.prompt!r} must contain the subject {self.subject!r} or one `{{}}`"
                )
        if not self.target_new.strip():
            raise EditspecError(f"the new target for {self.subject!r} is empty")


@dataclass
class PreparedRequest:
    """Token ids for one request: a row per context template, a row per chat form, the KL row.

    Every row is ``prompt ids + its target[:-1]`` (the KL row has no target); `subject_index[r]`
    is the subject's last token in row r, `prompt_len[r]` the length before the target and
    `targets[r]` the target's ids there: `target_ids` (after a space) in raw rows, the answer's
    first words after the assistant header in chat rows (`chat[r]`).  `group[r]` is the row's
    template group for key averaging; chat rows form the last group.
    """

    request: EditRequest
    target_ids: list[int]
    rows: list[list[int]] = field(default_factory=list)
    subject_index: list[int] = field(default_factory=list)
    prompt_len: list[int] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # template group of each rewriting row
    targets: list[list[int]] = field(default_factory=list)
    chat: list[bool] = field(default_factory=list)
    kl_row: list[int] = field(default_factory=list)
    kl_index: int = 0
    tails: list[list[int]] = field(default_factory=list)  # per rewriting row: the unedited continuation after its answer (`fill_tails`)
    tail_tokens: int = 0  # how many tokens `tails` was asked for (a row's is shorter where the model ended)

    @property
    def num_rows(self) -> int:
        """The number of rewriting rows (one per template)."""
        return len(self.rows)


def prepare_requests(
    tokenizer, requests: Sequence[EditRequest], template_groups: Sequence[Sequence[str]],
    kl_prompt: str | None = KL_PROMPT, *, chat: bool = False, answer_end: str = "",
) -> list[PreparedRequest]:
    """Tokenise every request over every template; row 0 is always the bare prompt ``"{}"``.

    Target ids come from the bare prompt (prefix difference, leading space, no special tokens)
    and are reused for every template: byte-level BPE never merges across the space.  With
    `chat`, each of the request's questions (else its prompt) adds a row in chat form
    (`editspec.model.chat`): the subject inside the templated user turn, the target as the
    start of the assistant's answer, followed by `answer_end` (`ended_answer`: "Rome.").
    """
    flat = [(g, t) for g, group in enumerate(template_groups) for t in group]
    if not flat or flat[0][1] != "{}":
        raise EditspecError('the first context template must be the bare prompt "{}"')
    prepared = []
    for req in requests:
        text, _ = fill_prompt(req.prompt, req.subject)
        target = target_token_ids(tokenizer, text, req.target_new)
        prep = PreparedRequest(req, target)
        for g, template in flat:
            text, span = place_in_template(template, req.prompt.rstrip(), req.subject)
            ids, index = encode_with_subject(tokenizer, text, span)
            _add_row(prep, ids, index, target, g, chat=False)
        if chat:
            for question in chat_questions(req.questions, req.prompt.rstrip()):
                text, span = chat_text(tokenizer, question, req.subject)
                ids, index = encode_with_subject(tokenizer, text, span, special=False)
                reply = answer_ids(tokenizer, text, ended_answer(req.target_new, answer_end))
                _add_row(prep, ids, index, reply, len(template_groups), chat=True)
        if kl_prompt is not None:
            text, span = fill_prompt(kl_prompt, req.subject)
            prep.kl_row, prep.kl_index = encode_with_subject(tokenizer, text, span)
        prepared.append(prep)
    return prepared


def _add_row(prep: PreparedRequest, ids: list[int], index: int, target: list[int], group: int, *, chat: bool):
    prep.rows.append(ids + target[:-1])
    prep.subject_index.append(index)
    prep.prompt_len.append(len(ids))
    prep.group.append(group)
    prep.targets.append(list(target))
    prep.chat.append(chat)


def flatten_groups(template_groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """All templates as one group (ROME averages uniformly over every template)."""
    return [[t for group in template_groups for t in group]]
