"""Second-moment statistics on tiny seeded models: exactness, one pass, cache, atomic writes."""
import pytest
import torch

from editspec import cache

from editspec.model import stats
from editspec.model.corpus import Corpus
from editspec.errors import EditspecError
from editspec.model.layout import layout_for, module_at
from editspec.model.stats import SecondMoment, collect_second_moments, second_moment, second_moments
from tiny import SENTENCES, tiny_model, tiny_tokenizer

CORPUS = Corpus.from_documents(SENTENCES + [s.upper() for s in SENTENCES], name="toy")
F64 = dict(corpus=CORPUS, samples=12, dtype=torch.float64, progress=False)


def direct_second_moment(model, layer, documents):
    """E[k kᵀ] from keys hooked one document at a time (no padding, no early stop)."""
    keys = []
    module = module_at(model, layout_for(model).mlp_out_at(layer))
    handle = module.register_forward_pre_hook(lambda mod, args: keys.append(args[0][0]))
    try:
        with torch.no_grad():
            for doc in documents:
                model(**tiny_tokenizer()(doc, return_tensors="pt"))
    finally:
        handle.remove()
    K = torch.cat(keys).double()  # [tokens, d_k]
    return K.T @ K / K.shape[0]


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3_text"])
def test_matches_direct_computation(tmp_cache, model_type):
    model = tiny_model(model_type)
    result = second_moments(model, tiny_tokenizer(), [0, 2], **F64)
    for layer in (0, 2):
        expected = direct_second_moment(model, layer, CORPUS.sample(12))
        # Eager attention takes its softmax in float32, so batching moves the last digits.
        torch.testing.assert_close(result[layer], expected, rtol=1e-6, atol=1e-9)


def test_padding_and_batching_do_not_matter():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    docs = CORPUS.sample(12)
    alone = collect_second_moments(model, tok, [1], docs, dtype=torch.float64, batch_tokens=1)[1]
    batched = collect_second_moments(model, tok, [1], docs, dtype=torch.float64, batch_tokens=10_000)[1]
    assert alone.count == batched.count == sum(len(tok(d)["input_ids"]) for d in docs)
    torch.testing.assert_close(alone.mean(), batched.mean(), rtol=1e-6, atol=1e-9)
    C = batched.mean()
    assert torch.equal(C, C.T)
    assert torch.linalg.eigvalsh(C).min() > -1e-10


def test_truncation_to_max_length():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    moments = collect_second_moments(model, tok, [0], CORPUS.sample(5), max_length=4)
    assert moments[0].count == 5 * 4


def test_streaming_and_merging_equal_one_shot():
    torch.manual_seed(0)
    keys = torch.randn(300, 16, dtype=torch.float64)
    whole = SecondMoment(16, dtype=torch.float64)
    whole.update(keys)
    a, b = SecondMoment(16, dtype=torch.float64), SecondMoment(16, dtype=torch.float64)
    for chunk in keys[:100].split(7):
        a.update(chunk)
    b.update(keys[100:])
    torch.testing.assert_close(a.merge(b).mean(), keys.T @ keys / 300, rtol=1e-12, atol=0)
    torch.testing.assert_close(whole.mean(), keys.T @ keys / 300, rtol=1e-12, atol=0)
    float32 = SecondMoment(16, dtype=torch.float32)
    float32.update(keys)
    torch.testing.assert_close(float32.mean(), whole.mean(), rtol=1e-5, atol=1e-6)


def test_stops_below_the_output_head():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    ran = []
    handle = model.model.norm.register_forward_hook(lambda *a: ran.append("norm"))
    try:
        collect_second_moments(model, tok, [0, 1], CORPUS.sample(3))
    finally:
        handle.remove()
    assert ran == []


def test_one_pass_for_missing_layers_then_cache_hits(tmp_cache, monkeypatch):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    calls = []
    real = stats.collect_second_moments

    def spy(model, tokenizer, layers, documents, **options):
        calls.append(sorted(layers))
        return real(model, tokenizer, layers, documents, **options)

    monkeypatch.setattr(stats, "collect_second_moments", spy)
    first = second_moments(model, tok, [0, 2], **F64)
    assert calls == [[0, 2]]
    more = second_moments(model, tok, [0, 1, 2], **F64)
    assert calls == [[0, 2], [1]], "only the missing layer is computed"
    for layer in (0, 2):
        assert torch.equal(first[layer], more[layer])
    again = second_moment(model, tok, 1, **F64)
    assert calls == [[0, 2], [1]] and torch.equal(again, more[1])
    assert again.dtype == torch.float64 and again.device.type == "cpu"


def test_cache_key_changes_with_every_input(tmp_cache):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    other = Corpus.from_documents(SENTENCES[::-1] + ["Something else entirely."], name="other")
    variants = [
        dict(), dict(samples=5), dict(corpus=other), dict(dtype=torch.float32), dict(max_length=8),
    ]
    for variant in variants:
        second_moments(model, tok, [1], **{**F64, **variant})
    second_moments(model, tok, [2], **F64)
    edited = tiny_model("llama", seed=1)
    second_moments(edited, tok, [1], **F64)
    entries = stats.cached_entries()
    assert len(entries) == len(variants) + 2
    assert len({meta["weights_hash"] for _, meta in entries}) == 2


def test_entries_are_written_atomically(tmp_cache, monkeypatch):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    real = cache.atomic_write

    class Interrupted(Exception):
        pass

    def dies_halfway(path, mode="wb"):
        with real(path, mode) as handle:
            original = handle.write

            def write(data):
                original(data[: len(data) // 2])
                raise Interrupted

            handle.write = write
            yield handle

    import contextlib

    monkeypatch.setattr(stats, "atomic_write", contextlib.contextmanager(dies_halfway))
    with pytest.raises(Interrupted):
        second_moments(model, tok, [0], **F64)
    assert list(stats.stats_dir().iterdir()) == [], "neither a partial entry nor a temp file"


def test_list_and_clear(tmp_cache):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    second_moments(model, tok, [0, 1], **F64)
    second_moments(tiny_model("gpt2"), tok, [0], **F64)
    entries = stats.cached_entries()
    assert {meta["layer"] for _, meta in entries} == {"0", "1"}
    meta = entries[0][1]
    assert meta["corpus"] == "toy" and meta["samples"] == "12" and int(meta["tokens"]) > 0
    llama = [m["weights_hash"] for _, m in entries if m["module"].startswith("model.")][0]
    assert stats.clear_entries(llama)[0] == 2
    assert len(stats.cached_entries()) == 1
    assert stats.clear_entries()[0] == 1


def test_unreadable_entry_is_recomputed(tmp_cache):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    first = second_moment(model, tok, 0, **F64)
    (path,) = stats.stats_dir().glob("*.safetensors")
    path.write_bytes(b"garbage")
    assert torch.equal(second_moment(model, tok, 0, **F64), first)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(layers=[3]), "layer 3 does not exist"),
        (dict(layers=[]), "no layers"),
        (dict(layers=[0], dtype=torch.float16), "float32 or float64"),
        (dict(layers=[0], max_length=0), "max length"),
    ],
)
def test_bad_requests(tmp_cache, options, message):
    with pytest.raises(EditspecError, match=message):
        second_moments(tiny_model("llama"), tiny_tokenizer(), corpus=CORPUS, progress=False, **options)
