"""Second-moment statistics of MLP keys, `C = E[k kᵀ]`, with a content-addressed cache.

`k` is the input of a layer's value projection (`down_proj`, GPT-2's `c_proj`) at one token;
the moment is uncentered and taken over every non-padding token of a corpus sample
(docs/methods/locate.md#second-moment-statistics).  ROME, MEMIT and AlphaEdit all need it.

Speed matters (hours in the reference toolkit): all requested layers are collected in one
forward pass that stops inside the deepest of them, never reaching the output head; documents
are sorted by length so batches carry little padding; products are summed per batch.

Entries are keyed by the model's weights hash, the module, the corpus id, the sample count,
the dtype and the maximum length, and are written atomically as safetensors files.

>>> C = second_moment(load_model(), layer=5, samples=1000)  # doctest: +SKIP
>>> C.shape
torch.Size([1536, 1536])
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch

from editspec import __version__
from editspec.cache import atomic_write, cache_dir
from editspec.model.corpus import Corpus, load_corpus
from editspec.errors import EditspecError
from editspec.model.layout import layout_for, module_at
from editspec.model.loading import LoadedModel

FORMAT_VERSION = 1
DEFAULT_SAMPLES = 2000  # Wikipedia summaries: about 210k SmolLM2 tokens
DEFAULT_MAX_LENGTH = 256
DEFAULT_BATCH_TOKENS = 4096
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class SecondMoment:
    """A running `Σ k kᵀ` (float64) and token count; `mean()` is `C`.

    Products of one batch are formed in `dtype` (float32 is twice as fast; float64 for exact
    checks) and added to the float64 sum, so partial runs can be merged without loss.
    """

    def __init__(self, dim: int, *, dtype=torch.float32, device=None):
        self.sum = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0
        self.dtype = dtype

    def update(self, keys: torch.Tensor) -> None:
        """Add keys `[n, d_k]`."""
        keys = keys.to(device=self.sum.device, dtype=self.dtype)
        if self.dtype == torch.float64:
            self.sum.addmm_(keys.T, keys)
        else:
            self.sum.add_(keys.T @ keys)
        self.count += keys.shape[0]

    def merge(self, other: "SecondMoment") -> "SecondMoment":
        """Fold `other` (statistics over other tokens) into this one."""
        self.sum.add_(other.sum.to(self.sum.device))
        self.count += other.count
        return self

    def mean(self) -> torch.Tensor:
        """`C = Σ k kᵀ / N` in float64."""
        if self.count == 0:
            raise EditspecError("no tokens were seen, so there are no statistics",
                                hint="use a corpus with some text in it")
        # Summed gemm products are symmetric only up to rounding; solvers want it exact.
        return (self.sum + self.sum.T) / (2 * self.count)


@dataclass(frozen=True)
class StatsKey:
    """Everything a cached statistics entry depends on; `digest` names its file."""

    weights_hash: str
    module: str
    layer: int
    corpus_id: str
    samples: int
    dtype: str
    max_length: int
    version: int = FORMAT_VERSION

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]

    @property
    def path(self) -> Path:
        return stats_dir() / f"{self.digest}.safetensors"


def stats_dir() -> Path:
    """The folder of cached statistics entries."""
    return cache_dir("stats")


def second_moment(model, tokenizer=None, layer: int | None = None, **options) -> torch.Tensor:
    """`C = E[k kᵀ]` `[d_k, d_k]` for one layer; see `second_moments` for the options.

    `model` is a `LoadedModel` (then `tokenizer` may be None) or a HF model with its tokenizer.
    """
    if layer is None:
        raise TypeError("second_moment() needs a layer")
    return second_moments(model, tokenizer, [layer], **options)[layer]


def second_moments(model, tokenizer=None, layers: Iterable[int] = (), *, corpus=None,
                   samples: int = DEFAULT_SAMPLES, max_length: int = DEFAULT_MAX_LENGTH,
                   dtype=torch.float32, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                   cache: bool = True, progress: bool = True) -> dict[int, torch.Tensor]:
    """`C` for each of `layers`, from the cache or computed in one pass for the missing ones.

    `corpus` is a `Corpus`, a text file or None (the default Wikipedia summaries); `samples`
    documents of it are used, each truncated to `max_length` tokens.  `dtype` (float32 or
    float64) is that of the per-batch products and of the result.  Results are on the CPU.
    The model must be unedited: entries are keyed by its weights (for a `LoadedModel`, the
    hash of its files on disk).

    >>> Cs = second_moments(loaded, layers=range(4, 9), samples=500)  # doctest: +SKIP
    """
    model, tokenizer, weights, model_name = _unpack(model, tokenizer)
    dtype_name = _dtype_name(dtype)
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    documents = corpus.sample(samples)
    keys = _keys(model, weights() if cache else "", layers, corpus, len(documents), dtype_name, max_length)
    layers = list(keys)
    results = {layer: _read_entry(key.path) for layer, key in keys.items()} if cache else {}
    missing = [layer for layer in layers if results.get(layer) is None]
    if missing:
        started = time.perf_counter()
        moments = collect_second_moments(model, tokenizer, missing, documents, max_length=max_length,
                                         dtype=_DTYPES[dtype_name], batch_tokens=batch_tokens,
                                         progress=progress)
        seconds = time.perf_counter() - started
        for layer, moment in moments.items():
            results[layer] = moment.mean().to(_DTYPES[dtype_name]).cpu()
            if cache:
                _write_entry(keys[layer], results[layer], moment.count, seconds,
                             model_name=model_name, corpus_name=corpus.name)
    return {layer: results[layer] for layer in layers}


def stats_keys(loaded: LoadedModel, layers: Iterable[int], *, corpus=None, samples: int = DEFAULT_SAMPLES,
               max_length: int = DEFAULT_MAX_LENGTH, dtype=torch.float32) -> dict[int, StatsKey]:
    """The cache keys `second_moments` would use, by layer (to see what is cached)."""
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    count = len(corpus.sample(samples))
    return _keys(loaded.model, loaded.weights_hash, layers, corpus, count, _dtype_name(dtype), max_length)


def _keys(model, weights: str, layers, corpus: Corpus, count: int, dtype_name: str,
          max_length: int) -> dict[int, StatsKey]:
    layers = sorted(set(int(layer) for layer in layers))
    layout = layout_for(model)
    _check_layers(layers, layout.num_layers(model))
    if max_length < 1:
        raise EditspecError(f"max length must be positive, not {max_length}")
    return {layer: StatsKey(weights_hash=weights, module=layout.mlp_out_at(layer), layer=layer,
                            corpus_id=corpus.id, samples=count, dtype=dtype_name, max_length=max_length)
            for layer in layers}


class _StopForward(Exception):
    """Raised inside the deepest hooked layer: nothing above it is needed."""


@torch.inference_mode()
def collect_second_moments(model, tokenizer, layers: Iterable[int], documents: list[str], *,
                           max_length: int = DEFAULT_MAX_LENGTH, dtype=torch.float32,
                           batch_tokens: int = DEFAULT_BATCH_TOKENS,
                           progress: bool = False) -> dict[int, SecondMoment]:
    """Accumulate `Σ k kᵀ` over every non-padding token of `documents`, no cache involved.

    One forward pass per batch serves every layer; each layer's sum lives on that layer's
    device, so a model spread over several devices works as it is.
    """
    from tqdm.auto import tqdm

    layers = sorted(set(layers))
    layout = layout_for(model)
    modules = {layer: module_at(model, layout.mlp_out_at(layer)) for layer in layers}
    moments: dict[int, SecondMoment] = {}
    mask_now: dict[str, torch.Tensor] = {}

    def hook_for(layer: int, last: bool):
        def pre_hook(module, args):
            keys = args[0]  # [batch, pos, d_k]
            if layer not in moments:
                moments[layer] = SecondMoment(keys.shape[-1], dtype=dtype, device=keys.device)
            moments[layer].update(keys[mask_now["mask"].to(keys.device)])  # [tokens, d_k]
            if last:
                raise _StopForward

        return pre_hook

    # With sliding-window attention, a padded query whose whole window is padding gets NaN
    # (eager attention), and 0 * NaN then reaches real tokens in the next layer: keep the
    # padding of every row in a batch shorter than the window.
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    max_padding = window - 1 if isinstance(window, int) and window > 0 else None
    batches = _batches(tokenizer, documents, max_length, batch_tokens, max_padding)
    total = sum(int(mask.sum()) for _, mask in batches)
    device = model.get_input_embeddings().weight.device
    handles = [modules[layer].register_forward_pre_hook(hook_for(layer, layer == layers[-1]))
               for layer in layers]
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, file=sys.stderr,
               desc=f"statistics, layer{'s' if len(layers) > 1 else ''} {_span(layers)}",
               mininterval=0.5)
    try:
        for input_ids, mask in batches:
            mask_now["mask"] = mask.bool()
            try:
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _StopForward:
                pass
            bar.update(int(mask.sum()))
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
    for layer in layers:
        moments.setdefault(layer, SecondMoment(_key_dim(modules[layer]), dtype=dtype))
        if not torch.isfinite(moments[layer].sum).all():
            raise EditspecError(f"the keys of layer {layer} contain NaN or inf on this corpus",
                                hint="check the model's weights and dtype (float32 is safest)")
    return moments


def _batches(tokenizer, documents: list[str], max_length: int, batch_tokens: int,
             max_padding: int | None = None):
    """Right-padded `(input_ids, attention_mask)` batches of at most ~`batch_tokens` slots.

    Documents are sorted by length (longest first) so that each batch pads little; the sum
    does not depend on the order.  No row gets more than `max_padding` pad tokens.
    """
    encoded = tokenizer(list(documents), truncation=True, max_length=max_length)["input_ids"]
    encoded = sorted((ids for ids in encoded if ids), key=len, reverse=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches, start = [], 0
    while start < len(encoded):
        width = len(encoded[start])
        count = max(1, min(len(encoded) - start, batch_tokens // width))
        if max_padding is not None:
            while count > 1 and width - len(encoded[start + count - 1]) > max_padding:
                count -= 1
        chunk = encoded[start:start + count]
        input_ids = torch.full((count, width), pad, dtype=torch.long)
        mask = torch.zeros((count, width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        batches.append((input_ids, mask))
        start += count
    return batches


def _key_dim(module) -> int:
    from editspec.model.layout import projection_dims

    return projection_dims(module)[1]


def _span(layers: list[int]) -> str:
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(map(str, layers))


def _unpack(model, tokenizer):
    """(model, tokenizer, a function giving the weights hash, a name) from either form."""
    if isinstance(model, LoadedModel):
        loaded = model
        return loaded.model, tokenizer or loaded.tokenizer, lambda: loaded.weights_hash, loaded.name
    if tokenizer is None:
        raise TypeError("a tokenizer is needed with a bare model (or pass a LoadedModel)")
    return model, tokenizer, lambda: _memory_hash(model), str(getattr(model, "name_or_path", ""))


def _memory_hash(model) -> str:
    """A hash of the weights as they are in memory (a bare model may have been changed)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return "memory-" + digest.hexdigest()


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise EditspecError(f"statistics dtype must be float32 or float64, not `{dtype}`",
                            hint="fp16/bf16 sums lose the small eigenvalues editing needs")
    return name


def _check_layers(layers: list[int], num_layers: int) -> None:
    if not layers:
        raise EditspecError("no layers asked for", hint="for example `--layers 4..8`")
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise EditspecError(f"layer {bad[0]} does not exist: the model has layers 0..{num_layers - 1}")


def _write_entry(key: StatsKey, mom2: torch.Tensor, tokens: int, seconds: float, *,
                 model_name: str, corpus_name: str) -> None:
    from safetensors.torch import save

    metadata = {name: str(value) for name, value in asdict(key).items()}
    metadata.update(tokens=str(tokens), seconds=f"{seconds:.1f}", model=str(model_name),
                    corpus=corpus_name, editspec=__version__,
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    data = save({"mom2": mom2.contiguous()}, metadata=metadata)
    with atomic_write(key.path) as handle:
        handle.write(data)


def _read_entry(path: Path) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(path)["mom2"]
    except Exception:  # an unreadable entry is recomputed and overwritten, never trusted
        return None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file, read from its header without torch."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return dict(header.get("__metadata__") or {})


def cached_entries() -> list[tuple[Path, dict[str, str]]]:
    """Every cached statistics entry with its metadata, oldest first."""
    entries = []
    for path in sorted(stats_dir().glob("*.safetensors")):
        try:
            entries.append((path, read_metadata(path)))
        except (OSError, ValueError, struct.error):
            entries.append((path, {}))
    return sorted(entries, key=lambda entry: entry[1].get("created", ""))


def clear_entries(weights_hash: str | None = None) -> tuple[int, int]:
    """Delete cached entries (all, or one model's); returns (files, bytes) removed."""
    files = size = 0
    for path, metadata in cached_entries():
        if weights_hash is None or metadata.get("weights_hash") == weights_hash:
            size += path.stat().st_size
            path.unlink(missing_ok=True)
            files += 1
    return files, size
