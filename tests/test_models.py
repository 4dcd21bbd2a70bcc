"""Model resolution and loading: names, directories, GGUF files, fetching, devices, the CLI."""
import hashlib
import json
import subprocess
import zipfile

import pytest
import torch
from click.testing import CliRunner

from editspec import cache

from editspec.model import loading as models
from editspec.cli import main
from editspec.errors import EditspecError
from editspec.model.loading import DEFAULT_MODEL, KNOWN_MODELS, KnownModel, PackagedFile, load_model, resolve_model
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny Llama checkpoint directory with its tokenizer."""
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").to(torch.float32).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def fake_convert(calls):
    """A stand-in for the GGUF conversion that records its input and writes a tiny checkpoint."""
    def convert(gguf, target, *, name, source, notices):
        calls.append({"bytes": gguf.read_bytes(), "name": name, "source": source, "notices": notices})
        with cache.atomic_dir(target) as tmp:
            tiny_model("llama").to(torch.float32).save_pretrained(tmp)
            tiny_tokenizer().save_pretrained(tmp)
            (tmp / models.MANIFEST).write_text(json.dumps({"name": name, "source": source}))
    return convert


@pytest.mark.parametrize(
    "name, hint",
    [
        ("smollm2-135", "did you mean `smollm2-135m`?"),
        ("gemma3-270", "did you mean `gemma3-270m`?"),
        ("gpt2", "known models: `smollm2-135m`, `gemma3-270m`"),
        ("HuggingFaceTB/SmolLM2-135M", "does not download from model hubs"),
    ],
)
def test_unknown_names_suggest(name, hint):
    with pytest.raises(EditspecError, match="unknown model") as error:
        resolve_model(name)
    assert hint in error.value.diagnostics[0].hint


def test_directory_is_used_as_is(checkpoint, tmp_cache):
    assert resolve_model(checkpoint) == checkpoint
    assert resolve_model(str(checkpoint)) == checkpoint


@pytest.mark.parametrize("content, message", [(None, "no config.json"), ("text", "not a .gguf model")])
def test_not_a_checkpoint(tmp_path, content, message):
    target = tmp_path / "thing"
    if content is None:
        target.mkdir()
    else:
        target.write_text(content)
    with pytest.raises(EditspecError, match=message):
        resolve_model(target)


def test_load_model_is_ready_for_editing(checkpoint, tmp_cache):
    loaded = load_model(checkpoint)
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.pad_token is not None and loaded.tokenizer.padding_side == "right"
    assert loaded.name == "tiny-llama" and loaded.path == checkpoint
    assert loaded.input_device == loaded.model.get_input_embeddings().weight.device
    assert loaded.weights_hash == models.weights_hash(checkpoint)
    assert load_model(checkpoint, dtype="float64").model.dtype == torch.float64


def test_weights_hash_is_cached_and_follows_content(checkpoint, tmp_cache, monkeypatch):
    first = models.weights_hash(checkpoint)
    monkeypatch.setattr(cache, "sha256_file", lambda path: pytest.fail("hashed again"))
    assert models.weights_hash(checkpoint) == first
    monkeypatch.undo()
    monkeypatch.setenv("EDITSPEC_CACHE", str(tmp_cache))
    tiny_model("llama", seed=1).to(torch.float32).save_pretrained(checkpoint)
    assert models.weights_hash(checkpoint) != first


def test_no_weights_is_a_diagnostic(tmp_path):
    with pytest.raises(EditspecError, match="no weight files"):
        models.weights_hash(tmp_path)


def test_gguf_file_converted_once_by_content(tmp_path, tmp_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", fake_convert(calls))
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF not really")
    first = resolve_model(gguf)
    assert first.parent == tmp_cache / "models" and first.name.startswith("gguf-")
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(gguf.read_bytes())
    folder = tmp_path / "only-gguf"
    folder.mkdir()
    (folder / "x.gguf").write_bytes(gguf.read_bytes())
    assert resolve_model(gguf) == resolve_model(copy) == resolve_model(folder) == first
    assert len(calls) == 1 and calls[0]["name"] == "mine"
    assert load_model(gguf).name == "mine"
    gguf.write_bytes(b"GGUF other content")
    assert resolve_model(gguf) != first


def _wheel(folder, package, version, files):
    path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


@pytest.fixture
def fake_known(tmp_path, tmp_cache, monkeypatch):
    """A known model `toy-2part` whose GGUF is split over two wheels in a wheelhouse."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    _wheel(house, "toy-part1", "1.0", {"toy_part1/data/m.part00": b"GGUF-first-half|"})
    _wheel(house, "toy-part2", "1.0", {"toy_part2/data/m.part01": b"second-half"})
    _wheel(house, "toy", "1.0", {"toy/LICENSE.txt": b"be nice"})
    monkeypatch.setenv("EDITSPEC_WHEELHOUSE", str(house))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    toy = KnownModel(
        name="toy-2part", model_type="llama", params="1K", download_mb=1, license="toy",
        parts=(PackagedFile("toy-part1", "1.0", "toy_part1/data/m.part00"),
               PackagedFile("toy-part2", "1.0", "toy_part2/data/m.part01")),
        sha256=hashlib.sha256(b"GGUF-first-half|second-half").hexdigest(),
        notices=(PackagedFile("toy", "1.0", "toy/LICENSE.txt"),),
    )
    monkeypatch.setitem(KNOWN_MODELS, toy.name, toy)
    return toy


def test_known_model_assembled_from_packages(fake_known, tmp_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", fake_convert(calls))
    assert not models.is_cached("toy-2part")
    path = resolve_model("toy-2part")
    assert path == tmp_cache / "models" / "toy-2part" and models.is_cached("toy-2part")
    assert calls[0]["bytes"] == b"GGUF-first-half|second-half"
    assert calls[0]["notices"] == {"LICENSE.txt": b"be nice"}
    assert calls[0]["source"]["packages"][0] == "toy==1.0"
    assert resolve_model("toy-2part") == path and len(calls) == 1
    assert load_model("toy-2part").name == "toy-2part"
    assert [p.name for p in (tmp_cache / "models").iterdir()] == ["toy-2part"], "no build leftovers"


def test_corrupt_download_is_refused(fake_known, tmp_cache, monkeypatch):
    monkeypatch.setitem(KNOWN_MODELS, "toy-2part",
                        KnownModel(**{**fake_known.__dict__, "sha256": "0" * 64}))
    monkeypatch.setattr(models, "_convert_gguf", lambda *a, **k: pytest.fail("must not convert"))
    with pytest.raises(EditspecError, match="wrong SHA-256"):
        resolve_model("toy-2part")
    assert not list((tmp_cache / "models").iterdir())


def test_installed_package_is_read_not_imported(tmp_path, monkeypatch):
    package = tmp_path / "site" / "toy_installed"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "data" / "w.gguf").write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    item = PackagedFile("toy-installed", "1.0", "toy_installed/data/w.gguf")
    assert cache.read_packaged(item, {}) == b"weights"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(device="cuda:7"), "cuda"),
        (dict(device="not-a-device"), "unknown device"),
        (dict(device="cpu", device_map="auto"), "either a device or a device map"),
        (dict(dtype="int8"), "unknown dtype"),
    ],
)
def test_bad_load_options(checkpoint, tmp_cache, options, message):
    with pytest.raises(EditspecError, match=message):
        load_model(checkpoint, **options)


def test_model_too_big_for_memory(checkpoint, tmp_cache, monkeypatch):
    monkeypatch.setattr(models, "_free_memory", lambda device: 1)
    with pytest.raises(EditspecError, match="needs about") as error:
        load_model(checkpoint)
    assert "--device-map auto" in error.value.diagnostics[0].hint


def test_device_map_auto(checkpoint, tmp_cache):
    loaded = load_model(checkpoint, device_map="auto")
    ids = loaded.tokenizer("The capital", return_tensors="pt").to(loaded.input_device)
    assert loaded.model(**ids).logits.shape[-1] == loaded.model.config.vocab_size


def test_cli_models(tmp_cache):
    runner = CliRunner()
    listed = runner.invoke(main, ["models"])
    assert listed.exit_code == 0, listed.output
    assert "smollm2-135m (default)" in listed.output and "gemma3-270m" in listed.output
    rows = json.loads(runner.invoke(main, ["models", "--json"]).output)
    assert [r["name"] for r in rows] == list(KNOWN_MODELS) and rows[0]["cached"] is False
    bad = runner.invoke(main, ["models", "--path", "smolm2-135m"])
    assert bad.exit_code == 2 and "did you mean `smollm2-135m`?" in bad.output


def test_cli_stats_roundtrip(checkpoint, tmp_cache, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The capital of France is Paris.\nSteve Jobs founded Apple.\nRome is in Italy.\n")
    runner = CliRunner()
    args = ["stats", "compute", "--model", str(checkpoint), "--layers", "0..1", "--corpus", str(corpus)]
    computed = runner.invoke(main, args)
    assert computed.exit_code == 0, computed.output
    assert computed.output.count("computed") == 2 and "tokens/s" in computed.output
    again = runner.invoke(main, args)
    assert again.output.count("cached") == 2
    listed = runner.invoke(main, ["stats", "list"])
    assert "2 entries" in listed.output and "corpus.txt" in listed.output
    bad = runner.invoke(main, args[:-4] + ["--layers", "0..9", "--corpus", str(corpus)])
    assert bad.exit_code == 2 and "layer 3 does not exist" in bad.output
    assert runner.invoke(main, ["stats", "compute", "--layers", "5..2"]).exit_code == 2
    cleared = runner.invoke(main, ["stats", "clear", "--model", str(checkpoint), "--yes"])
    assert "deleted 2 entries" in cleared.output
    assert "no statistics cached" in runner.invoke(main, ["stats", "list"]).output


@pytest.mark.slow
def test_real_default_model():
    """Fetches and converts SmolLM2 into the user's cache on first use (about 30 s), then loads it."""
    loaded = load_model()
    assert loaded.name == DEFAULT_MODEL and loaded.model.config.model_type == "llama"
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").to(loaded.input_device)
    with torch.inference_mode():
        logits = loaded.model(**ids).logits[0, -1]
    assert loaded.tokenizer.decode(logits.argmax()) == " Paris"
    assert loaded.weights_hash == models.weights_hash(resolve_model(DEFAULT_MODEL))


def test_one_default_model_decision():
    from types import SimpleNamespace

    from editspec.model.loading import DEFAULT_MODEL, ModelOptions, model_choice

    assert model_choice(None, SimpleNamespace(model=None)) == DEFAULT_MODEL
    assert model_choice(None, SimpleNamespace(model="gemma3-270m")) == "gemma3-270m"
    assert model_choice("local/dir", SimpleNamespace(model="gemma3-270m")) == "local/dir"
    assert model_choice(None) == DEFAULT_MODEL
    assert ModelOptions(dtype="bfloat16").kwargs() == {"device": None, "device_map": None, "dtype": "bfloat16"}
