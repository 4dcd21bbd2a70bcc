"""Observers: what the verifier can ask of a model, in batches, whatever stands behind it.

A check kind (`editspec.verify.kinds`) asks an observer for primitive observations and turns
them into JSON data; the engine runs the same kinds on every observer:

- `LocalObserver`: a loaded model and tokenizer; it scores targets teacher-forced, generates,
  scores texts and samples.  Its chat replies come from a `ChatObserver` on the same model.
- `ChatObserver`: a local model through its tokenizer's chat template (the `chat` protocol).
- `ApiObserver`: an OpenAI-compatible API; it generates (`/v1/completions`) and chats
  (`/v1/chat/completions`), nothing that needs log-probabilities, so the engine leaves the
  other checks out and counts them (`partial`).

Example::

    observer = LocalObserver(loaded.model, loaded.tokenizer)
    observer.generated(checks)        # {check id: continuation}
    ApiObserver(openai.OpenAI(base_url=url, api_key="x"), "default").replies(checks)
"""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from editspec.errors import EditspecError
from editspec.verify.checks import Check
from editspec.verify.protocols import Scored, generate_texts, has_chat_template, score_targets

GENERATE_SLACK = 6        # a forget check generates this many tokens past its longest string
API_PROTOCOLS = ("generate", "chat")


class Observer:
    """The primitive observations; an observer that cannot make one says so in `supports`."""

    tokenizer: Any = None
    partial = False           # True: some checks are out of its reach, and the report counts them

    def supports(self, check: Check) -> bool:
        return True

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Scored]:
        """Teacher-forced scores of each ``(prompt, target)``."""
        raise NotImplementedError

    def generated(self, checks: Sequence[Check]) -> dict[str, str]:
        """The greedy continuation of each check's prompt, by check id (length: `generation_length`)."""
        raise NotImplementedError

    def replies(self, checks: Sequence[Check]) -> dict[str, str]:
        """The greedy chat reply to each check's prompt sent as a user turn, by check id."""
        raise NotImplementedError

    def text_loss(self, texts: Sequence[str], reference=None) -> dict:
        """Mean per-token NLL of `texts` (and KL against `reference`, see `text_reference`)."""
        raise NotImplementedError

    def text_reference(self, texts: Sequence[str]):
        """This model's log-distributions over `texts`, the reference of a later `text_loss`."""
        raise NotImplementedError

    def samples(self, prompts: Sequence[str], *, max_new_tokens: int, top_k: int, draws: int = 1) -> list[str]:
        """Top-k samples after each prompt, seeded: `draws` of each, prompt by prompt."""
        raise NotImplementedError


def _by_length(checks: Sequence[Check], length) -> dict[int, list[Check]]:
    groups: dict[int, list[Check]] = defaultdict(list)
    for c in checks:
        groups[length(c)].append(c)
    return dict(sorted(groups.items()))


class ChatObserver(Observer):
    """A local model asked through its chat template: greedy replies up to the end of the turn."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def replies(self, checks: Sequence[Check]) -> dict[str, str]:
        if checks and not has_chat_template(self.tokenizer):
            raise EditspecError(f"{checks[0].location}: the `chat` protocol needs a tokenizer with a chat template, "
                                "and this model's has none",
                                hint="verify an instruct model, or use another protocol (compare, generate, ...)")
        found: dict[str, str] = {}
        for length, group in _by_length(checks, lambda c: c.max_new_tokens).items():
            texts = generate_texts(self.model, self.tokenizer, [c.prompt for c in group], max_new_tokens=length,
                                   batch_size=self.batch_size, chat=True)
            found.update({c.id: t for c, t in zip(group, texts)})
        return found


class LocalObserver(Observer):
    """A loaded model and its tokenizer: every observation the verifier knows."""

    def __init__(self, model, tokenizer, *, seed: int = 0, batch_size: int = 32):
        self.model, self.tokenizer, self.seed, self.batch_size = model, tokenizer, seed, batch_size
        self.chat = ChatObserver(model, tokenizer, batch_size=batch_size)

    def score(self, pairs):
        return score_targets(self.model, self.tokenizer, pairs, batch_size=self.batch_size)

    def generation_length(self, check: Check) -> int:
        """A fact check's `max_new_tokens`, else a little past its longest string (forget)."""
        if check.max_new_tokens is not None:
            return check.max_new_tokens
        longest = max(len(self.tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"])
                      for a in check.answers)
        return longest + GENERATE_SLACK

    def generated(self, checks):
        found: dict[str, str] = {}
        for length, group in _by_length(checks, self.generation_length).items():
            texts = generate_texts(self.model, self.tokenizer, [c.prompt for c in group], max_new_tokens=length,
                                   batch_size=self.batch_size)
            found.update({c.id: t for c, t in zip(group, texts)})
        return found

    def replies(self, checks):
        return self.chat.replies(checks)

    def text_loss(self, texts, reference=None):
        from editspec.verify.observe import text_loss

        return text_loss(self.model, self.tokenizer, texts, reference)

    def text_reference(self, texts):
        from editspec.verify.observe import text_logprobs

        return text_logprobs(self.model, self.tokenizer, texts)

    def samples(self, prompts, *, max_new_tokens, top_k, draws=1):
        return generate_texts(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                              batch_size=self.batch_size, sample_top_k=top_k, seed=self.seed, draws=draws)


def api_max_tokens(check: Check) -> int:
    """Tokens to ask an API for: a fact check's `max_new_tokens`, else a bound on its longest string.

    Without the model's tokenizer, two tokens per word (and one per four characters) bound it.
    """
    if check.max_new_tokens is not None:
        return check.max_new_tokens
    longest = max((max(2 * len(a.split()), len(a) // 4 + 1) for a in check.answers), default=1)
    return longest + GENERATE_SLACK


class ApiObserver(Observer):
    """An OpenAI-compatible client (or `EditedClient`): greedy completions and chat replies.

    Requests run `workers` at a time, temperature 0.
    """

    partial = True

    def __init__(self, client, model: str, *, workers: int = 8):
        self.client, self.model, self.workers = client, model, workers

    def supports(self, check: Check) -> bool:
        return check.protocol in API_PROTOCOLS

    def _each(self, checks, ask) -> dict[str, str]:
        with ThreadPoolExecutor(self.workers) as pool:
            return dict(zip((c.id for c in checks), pool.map(ask, checks)))

    def generated(self, checks):
        def ask(check):
            answer = self.client.completions.create(model=self.model, prompt=check.prompt, temperature=0,
                                                    max_tokens=api_max_tokens(check))
            return answer.choices[0].text
        return self._each(checks, ask)

    def replies(self, checks):
        def ask(check):
            answer = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": check.prompt}], temperature=0,
                max_tokens=api_max_tokens(check))
            return answer.choices[0].message.content or ""
        return self._each(checks, ask)
