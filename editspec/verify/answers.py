"""Reading a generated answer: its first sentence, its key entity, and the verdicts on it.

The generative protocols (`chat`, `generate`) judge free text, so they need rules a reader
can check by hand:

- **normalisation** (`protocols.normalise`): lower case, punctuation and the articles a/an/the
  removed, whitespace collapsed; an answer "appears" when its normalised words occur as whole
  words in the normalised text.
- **the first sentence** (`first_sentence`): the text up to the first `.`, `!` or `?` (closing
  quotes and brackets included) that is followed by whitespace and a capital letter, a digit or an
  opening quote, or by the end of the text; a line break also ends it.  A period after a known
  abbreviation ("Dr.", "St.", "e.g.", "U.S."), after a single letter (the initials of
  "J. K. Rowling") or as part of an ellipsis ("Rome... no, Paris") ends nothing.
- **the key entity** (`key_entity`) of an answer, for locality when the unedited model did not
  know the keep answer: in the answer's first sentence, the first run of capitalised words or
  numbers ("Chicago Bulls", "1889"; "of"/"de"/"van"... may join two capitalised words) after
  leading and trailing function words ("The", "It", "In", ...) are dropped, skipping runs whose
  words all occur in the question.  A run at the very start of the sentence (capitalised because
  it starts it) is taken only when no other run is left.  Without any run: the last word of three
  or more letters that is neither a function word nor in the question ("He plays basketball" ->
  "basketball").  Without that either, there is no key entity and the whole normalised first
  sentence stands in for it.

- **a loop on the answer** (`loops_on`): in the normalised first sentence, the answer is
  followed at once by one of its own words ("Kohn Pedersen Fox Fox Fox", "Volkswagen Group
  Group B", "Rome, Rome").  An answer named again later ("Rome, and Rome is old") is no loop.  A model stuck repeating the answer has not said it
  once in a sentence; such a reply often never ends a sentence, so the first-sentence rule
  alone would read the whole loop and pass it.
- **a stuck reply** (`repeats`): the normalised reply, read whole, says the same run of one to
  four words three times in a row ("Baburan Baburan Baburan ...", "Wyndham Lewis, Wyndham Lewis,
  Wyndham Lewis", "Yemen.\n\nYemen.\n\nYemen.").  Such a reply has usually run into the token
  limit, and its last word may be cut short, so a loop on a longer word can end in the answer
  ("Baburan Baburan Babur"): a stuck reply gives no answer.  The whole reply is read, not the
  first sentence, because a loop of short sentences ("Rome. Rome. Rome. ...") ends a sentence
  at every step: its first sentence is a clean "Rome.", and a user still sees a broken model.
  Twice is not stuck ("Sirhan Sirhan", "very, very good").

A generative fact check passes when the first sentence gives the answer and does not loop on it,
the reply is not stuck, and no part of the reply gives the `was` object (`judge_reply`); locality
compares first sentences, and fails a reply that is stuck where the unedited one was not
(`judge_kept`).

Example::

    first_sentence("Rome. No wait, Paris.")                        # 'Rome.'
    key_entity("It stands in Paris, France.", "Where is the Eiffel Tower?")   # 'Paris'
    judge_reply("The Eiffel Tower is in Rome.", ["Rome"], ["Paris"]).passed    # True
"""
from __future__ import annotations

import re
from typing import Sequence

from editspec.verify.protocols import ProtocolResult, contains_answer, normalise

# Abbreviations whose period does not end a sentence (lower case, without the period).
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof st mt ft jr sr inc ltd co corp bros vs etc approx est dept univ gen col lt sgt capt cmdr
rev hon gov sen rep pres fig al ave blvd rd jan feb mar apr jun jul aug sep sept oct nov dec cf ca
""".split())
# ... and those that only abbreviate before a number ("No. 5", "Vol. 2", "p. 12").
NUMBERED = frozenset({"no", "nos", "vol", "p", "pp", "art", "ch", "sec"})

# Words that start or end a capitalised run without being part of the entity.
FUNCTION_WORDS = frozenset("""
a an the it its it's this that these those there here he she they we you i me him her them his hers their
our your my yes no sure well so as in on at of to for from by with and or but is are was were be been
also however yet then thus located situated currently today now answer question according about than into
over under after before between which who whom whose what when where why how not can will would could should
may might must has have had do does did like just very more most some any all such only other many much each
""".split())
CONNECTORS = frozenset({"of", "de", "la", "le", "du", "des", "del", "della", "da", "di", "von", "van", "der",
                        "den", "y", "el", "al", "bin", "ibn"})

_END = re.compile(r"([.!?]+|…+|[。！？])([\"'”’»)\]]*)(?=\s|$)")
_OPENERS = "\"'“‘«(["
_WORD = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:[-'’.]\w+)*")    # "11,200" and "4.24" are one word


def _abbreviation(before: str, rest: str) -> bool:
    words = before.split()
    if not words:
        return False
    word = words[-1].lstrip(_OPENERS).lower()
    if "." in word or (len(word) == 1 and word.isalpha()):
        return True                      # "U.S.", "e.g.", an initial
    return word in ABBREVIATIONS or (word in NUMBERED and rest[:1].isdigit())


def first_sentence(text: str) -> str:
    """The first sentence of `text` (see the module docstring for the rule), stripped.

    >>> first_sentence("Rome. Actually, Paris.")
    'Rome.'
    >>> first_sentence("Dr. Smith lives in St. Louis, Mo. now. He likes it.")
    'Dr. Smith lives in St. Louis, Mo. now.'
    >>> first_sentence("Rome... no, Paris.")
    'Rome... no, Paris.'
    """
    text = text.strip()
    line = text.split("\n", 1)[0].strip()
    for match in _END.finditer(line):
        punctuation, end = match.group(1), match.end(2)
        rest = line[end:].lstrip()
        if not rest:
            break
        if punctuation in "。！？":
            return line[:end].strip()
        if punctuation.startswith("…") or punctuation.startswith(".."):
            continue                     # an ellipsis hesitates; it does not end the sentence
        if punctuation == "." and _abbreviation(line[:match.start()], rest):
            continue
        if rest[0].isupper() or rest[0].isdigit() or rest[0] in _OPENERS:
            return line[:end].strip()
    return line


def _runs(sentence: str) -> list[tuple[int, list[str]]]:
    """Runs of capitalised words or numbers, as (start offset, words); connectors join two runs."""
    words = list(_WORD.finditer(sentence))
    runs: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for k, word in enumerate(words):
        text = word.group()
        gap = sentence[words[k - 1].end():word.start()] if k else ""
        adjacent = k > 0 and gap.strip() == ""
        capital = text[0].isupper() or text[0].isdigit()
        joins = (text.lower() in CONNECTORS and current and k + 1 < len(words)
                 and (words[k + 1].group()[0].isupper()) and sentence[word.end():words[k + 1].start()].strip() == "")
        if (capital or joins) and current and adjacent:
            current.append(text)
            continue
        if current:
            runs.append((start, current))
            current = []
        if capital:
            current, start = [text], word.start()
    if current:
        runs.append((start, current))
    return runs


def _strip_function_words(words: list[str]) -> list[str]:
    while words and (words[0].lower() in FUNCTION_WORDS or words[0].lower() in CONNECTORS):
        words = words[1:]
    while words and (words[-1].lower() in FUNCTION_WORDS or words[-1].lower() in CONNECTORS):
        words = words[:-1]
    return words


def key_entity(answer: str, question: str) -> str | None:
    """The entity an answer is about (the module docstring gives the rule), or None.

    >>> key_entity("The Colosseum is in Rome.", "Where is the Colosseum?")
    'Rome'
    >>> key_entity("He plays basketball.", "Which sport does Michael Jordan play?")
    'basketball'
    """
    sentence = first_sentence(answer)
    asked = set(normalise(question).split())
    leading: str | None = None
    for start, words in _runs(sentence):
        words = _strip_function_words(words)
        if not words or all(w in asked for w in normalise(" ".join(words)).split()):
            continue
        entity = " ".join(words)
        if start == len(sentence) - len(sentence.lstrip(_OPENERS + " ")):
            leading = leading or entity  # capitalised because it starts the sentence: a last resort
            continue
        return entity
    if leading:
        return leading
    content = [w for w in normalise(sentence).split() if len(w) >= 3 and w not in FUNCTION_WORDS and w not in asked]
    return content[-1] if content else None


def _without(text: str, answers: Sequence[str]) -> str:
    """`text` normalised, with every occurrence of an answer blanked (so "New York" hides "York")."""
    haystack = f" {normalise(text)} "
    for answer in sorted(answers, key=len, reverse=True):
        needle = normalise(answer)
        if needle:
            haystack = haystack.replace(f" {needle} ", " | ")
    return haystack


def judge_reply(reply: str, answers: Sequence[str], foils: Sequence[str] = (), *,
                protocol: str = "chat") -> ProtocolResult:
    """The reply's first sentence gives an answer (or alias), the reply is not stuck, and no part gives a foil.

    Foils are an edit's `was` object; an occurrence inside an answer ("York" in "New York")
    does not count.  So "Paris. Some say Rome." fails (the answer comes too late), so does
    "Rome. No wait, Paris." (the answer is taken back), and so does "Rome. Rome. Rome." (stuck).

    >>> judge_reply("Rome, not Paris.", ["Rome"], ["Paris"]).passed
    False
    """
    sentence = first_sentence(reply)
    hit = contains_answer(sentence, answers)
    old = _first_in(reply, foils, answers)
    loop = hit is not None and loops_on(sentence, hit)
    stuck = hit is not None and repeats(reply, answer=hit)
    passed = hit is not None and old is None and not loop and not stuck
    return ProtocolResult(protocol, passed, float(passed), got=reply,
                          scores={"matched": hit, "old_object": old, "loops": loop, "stuck": stuck,
                                  "sentence": sentence})


def loops_on(sentence: str, answer: str) -> bool:
    """Whether `sentence` loops on `answer`: one of the answer's words right after its first occurrence.

    >>> loops_on("Kohn Pedersen Fox Fox Fox", "Kohn Pedersen Fox")
    True
    >>> loops_on("It was designed by Kohn Pedersen Fox.", "Kohn Pedersen Fox")
    False
    """
    words, needle = normalise(sentence).split(), normalise(answer).split()
    if not needle:
        return False
    start = next((i for i in range(len(words) - len(needle) + 1) if words[i:i + len(needle)] == needle), None)
    after = len(words) if start is None else start + len(needle)
    return after < len(words) and words[after] in needle


def repeats(text: str, times: int = 3, longest: int = 4, answer: str | None = None) -> bool:
    """Whether `text` says one run of 1..`longest` words `times` times in a row (a stuck reply).

    Each occurrence of `answer` counts as one word, so an answer that repeats itself ("cha-cha-cha")
    is not stuck for saying itself once, and a reply saying it three times is.

    >>> repeats("Baburan Baburan Baburan Babur")
    True
    >>> repeats("Yemen. Yemen. Yemen.")
    True
    >>> repeats("Sirhan Sirhan.")
    False
    >>> repeats("The cha-cha-cha is a Cuban dance.", answer="cha-cha-cha")
    False
    """
    words = _as_one_word(normalise(text).split(), normalise(answer or "").split())
    return any(words[i:i + n] * (times - 1) == words[i + n:i + n * times]
               for n in range(1, longest + 1) for i in range(len(words) - n * times + 1))


def why_failed(scores: dict) -> str | None:
    """Why a generative check failed, in words, from the scores `judge_reply` or `judge_kept` left.

    >>> why_failed({"matched": "Rome", "old_object": None, "loops": False, "stuck": True, "sentence": "Rome."})
    'stuck: the reply says the same words three times in a row'
    """
    if "sentence" not in scores:         # not judged here (compare, logprob, a forget check ...)
        return None
    if scores.get("old_object"):
        return f"the reply names the old object {scores['old_object']!r}"
    if scores.get("new_object"):
        return f"the edit's new object {scores['new_object']!r} crept in"
    if "still_there" in scores and not scores["still_there"]:
        return f"the first sentence no longer says {scores['needle']!r} ({scores['kept']})"
    if "matched" in scores and scores["matched"] is None:
        return "the first sentence does not give the answer"
    if scores.get("loops"):
        return "the answer is followed at once by its own words (a loop)"
    if scores.get("stuck"):
        return "stuck: the reply says the same words three times in a row" + (
            " (the unedited reply did not)" if "still_there" in scores else "")
    return None


def _as_one_word(words: list[str], needle: list[str]) -> list[str]:
    """`words` with every occurrence of `needle` (left to right, not overlapping) made one word."""
    if not needle:
        return words
    out, i = [], 0
    while i < len(words):
        if words[i:i + len(needle)] == needle:
            out.append(" ".join(needle))
            i += len(needle)
        else:
            out.append(words[i])
            i += 1
    return out


def _first_in(reply: str, needles: Sequence[str], answers: Sequence[str]) -> str | None:
    rest = _without(reply, answers)
    return next((n for n in needles if normalise(n) and f" {normalise(n)} " in rest), None)


def judge_kept(reply: str, unedited: str, answers: Sequence[str], new_objects: Sequence[str], question: str, *,
               protocol: str = "chat") -> ProtocolResult:
    """Locality on free text: `reply` still says what the unedited reply said, and no new object crept in.

    "What it said" is read in the first sentences: the keep answer when the unedited reply's
    first sentence contained it, else that sentence's key entity, else the whole normalised
    sentence.  A new object counts anywhere in the reply, unless the unedited reply had it too,
    and so does a stuck reply (`repeats`, read whole), unless the unedited reply was stuck too.

    >>> judge_kept("It is in Berlin.", "Berlin, Germany.", ["Berlin"], ["Rome"], "Where is it?").passed
    True
    """
    sentence, before = first_sentence(reply), first_sentence(unedited)
    if contains_answer(before, answers):
        kept, basis = contains_answer(sentence, answers), "keep answer"
        needle = answers[0]
    elif (entity := key_entity(before, question)) is not None:
        kept, basis, needle = contains_answer(sentence, [entity]), "key entity", entity
    else:
        needle, basis = normalise(before), "first sentence"
        said = normalise(sentence)
        kept = needle if (needle in said if needle else not said) else None
    crept = _first_in(reply, [o for o in new_objects if not contains_answer(unedited, [o])], answers)
    stuck = repeats(reply) and not repeats(unedited)
    passed = kept is not None and crept is None and not stuck
    return ProtocolResult(protocol, passed, float(passed), got=reply,
                          scores={"kept": basis, "needle": needle, "still_there": kept is not None,
                                  "new_object": crept, "stuck": stuck, "sentence": sentence})
