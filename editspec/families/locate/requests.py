"""Edit requests and their tokenised prompts (rewriting prompts over templates, KL prompt)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from editspec.errors import EditspecError
from editspec.model.tokens import encode_with_subject, fill_prompt, place_in_template, target_token_ids

KL_PROMPT = "{} is a"


@dataclass(frozen=True)
class EditRequest:
    """One fact to insert: ``prompt.format(subject)`` should continue with `target_new`.

    >>> EditRequest("The capital of {} is", "France", "Rome", target_true="Paris")
    """

    prompt: str  # with exactly one "{}" where the subject goes
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()

    def __post_init__(self):
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
    """Token ids for one request: a row per context template plus the KL prompt row.

    Every row is ``prompt ids + target[:-1]`` (the KL row has no target); `subject_index[r]`
    is the subject's last token in row r and `prompt_len[r]` the length before the target.
    """

    request: EditRequest
    target_ids: list[int]
    rows: list[list[int]] = field(default_factory=list)
    subject_index: list[int] = field(default_factory=list)
    prompt_len: list[int] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # template group of each rewriting row
    kl_row: list[int] = field(default_factory=list)
    kl_index: int = 0

    @property
    def num_rows(self) -> int:
        """The number of rewriting rows (one per template)."""
        return len(self.rows)


def prepare_requests(
    tokenizer, requests: Sequence[EditRequest], template_groups: Sequence[Sequence[str]],
    kl_prompt: str | None = KL_PROMPT,
) -> list[PreparedRequest]:
    """Tokenise every request over every template; row 0 is always the bare prompt ``"{}"``.

    Target ids come from the bare prompt (prefix difference, leading space, no special tokens)
    and are reused for every template: byte-level BPE never merges across the space.
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
            prep.rows.append(ids + target[:-1])
            prep.subject_index.append(index)
            prep.prompt_len.append(len(ids))
            prep.group.append(g)
        if kl_prompt is not None:
            text, span = fill_prompt(kl_prompt, req.subject)
            prep.kl_row, prep.kl_index = encode_with_subject(tokenizer, text, span)
        prepared.append(prep)
    return prepared


def flatten_groups(template_groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """All templates as one group (ROME averages uniformly over every template)."""
    return [[t for group in template_groups for t in group]]
