"""How fast are second-moment statistics?  Prints seconds per layer and tokens per second.

    .venv/bin/python benchmarks/bench_stats.py --layers 4..8 --samples 1000 \
        --corpus ../shared/data/corpus/wikitext-2-test.txt

The cache is bypassed, so every run computes.  The reference toolkit took 84-149 s per layer
for 1,000 WikiText-2 samples on SmolLM2-135M on a 2-core machine.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from editspec.model.corpus import load_corpus
from editspec.model.loading import DEFAULT_MODEL, load_model
from editspec.model.stats import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_LENGTH, collect_second_moments


def _layers(text: str) -> list[int]:
    if ".." in text:
        first, last = text.split("..")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--layers", default="4..8")
    parser.add_argument("--samples", type=int, default=1000, help="documents")
    parser.add_argument("--corpus", default=None, help="text file (default: Wikipedia summaries)")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[DEFAULT_BATCH_TOKENS])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    loaded = load_model(args.model, device=args.device)
    load_seconds = time.perf_counter() - started
    corpus = load_corpus(args.corpus)
    documents = corpus.sample(args.samples)
    layers = _layers(args.layers)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {loaded.input_device}")
    print(f"model {loaded.name} loaded in {load_seconds:.1f} s; corpus {corpus.name} ({corpus.id[:12]}), "
          f"{len(documents)} documents, max length {args.max_length}, dtype {args.dtype}")
    for batch_tokens in args.batch_tokens:
        started = time.perf_counter()
        moments = collect_second_moments(loaded.model, loaded.tokenizer, layers, documents,
                                         max_length=args.max_length, dtype=getattr(torch, args.dtype),
                                         batch_tokens=batch_tokens)
        seconds = time.perf_counter() - started
        tokens = moments[layers[0]].count
        print(f"batch {batch_tokens:>6} tok | layers {args.layers:>6} in one pass | {tokens:>8} tokens | "
              f"{seconds:7.1f} s | {seconds / len(layers):6.1f} s/layer | {tokens / seconds:7.0f} tok/s")


if __name__ == "__main__":
    main()
