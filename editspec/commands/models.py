"""`editspec models` and `editspec stats`: the known models and the statistics cache.

torch is imported only inside the commands, so `editspec --help` stays fast.
"""
from __future__ import annotations

import json
import re

import click

_LAYERS = re.compile(r"^\s*(\d+)\s*(?:\.\.\s*(\d+))?\s*$")


def parse_layers(text: str) -> list[int]:
    """`"4..8"`, `"4,6"` or `"4..6,10"` as a sorted list of layer indices (ranges inclusive)."""
    layers: set[int] = set()
    for part in text.split(","):
        match = _LAYERS.match(part)
        if not match:
            raise click.BadParameter(f"`{text}` is not a layer list; write e.g. 4..8 or 4,6,8")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise click.BadParameter(f"empty layer range `{part.strip()}`: write {last}..{first}")
        layers.update(range(first, last + 1))
    return sorted(layers)


@click.command("models")
@click.option("--path", "path_of", metavar="NAME",
              help="Print the local checkpoint directory of NAME (a known name, directory or "
              ".gguf file), fetching and converting it first if needed.")
@click.option("--json", "as_json", is_flag=True, help="List the known models as JSON.")
def models_command(path_of: str | None, as_json: bool) -> None:
    """List the models editspec can fetch by name, and whether they are cached.

    \b
    Examples:
      editspec models
      editspec models --path smollm2-135m
    """
    from editspec.model.loading import DEFAULT_MODEL, KNOWN_MODELS, is_cached, known_model_dir, resolve_model

    if path_of is not None:
        click.echo(str(resolve_model(path_of)))
        return
    rows = [{"name": m.name, "default": m.name == DEFAULT_MODEL, "model_type": m.model_type,
             "params": m.params, "download_mb": m.download_mb, "license": m.license,
             "packages": m.packages, "cached": is_cached(m.name), "path": str(known_model_dir(m.name))}
            for m in KNOWN_MODELS.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("NAME", "TYPE", "PARAMS", "DOWNLOAD", "CACHED", "PACKAGES")]
    for row in rows:
        packages = row["packages"]
        shown = packages[0] + (f" (+{len(packages) - 1} parts)" if len(packages) > 1 else "")
        table.append((row["name"] + (" (default)" if row["default"] else ""), row["model_type"],
                      row["params"], f"{row['download_mb']} MB", "yes" if row["cached"] else "no", shown))
    _print_table(table)
    click.echo("\nAlso accepted by --model: a local HuggingFace checkpoint directory or a .gguf file.")


@click.group("stats")
def stats_group() -> None:
    """Second-moment statistics of MLP keys (C = E[k kᵀ]), cached by content.

    ROME, MEMIT and AlphaEdit need them; `compile` computes missing ones itself, and
    `stats compute` does it ahead of time.
    """


@stats_group.command("compute")
@click.option("--model", "model_name", default=None, metavar="M",
              help="Known name, checkpoint directory or .gguf file (default: smollm2-135m).")
@click.option("--layers", "layers_text", required=True, metavar="L",
              help="Layers, e.g. 4..8 (inclusive), 4,6 or 3..5,8.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Documents drawn from the corpus (default: 2000).")
@click.option("--corpus", default=None, metavar="FILE",
              help="Text file, one document per line (default: Wikipedia lead summaries).")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Tokens kept per document (default: 256).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="Precision of the accumulated products.")
@click.option("--device", default=None, help="Device for the model, e.g. cuda:0 (default: cpu).")
@click.option("--device-map", default=None, help="`auto`: spread the model over GPUs and CPU.")
def stats_compute(model_name, layers_text, samples, corpus, max_length, dtype, device, device_map) -> None:
    """Compute (or find cached) statistics for the given layers, in one pass over the corpus.

    \b
    Examples:
      editspec stats compute --layers 4..8
      editspec stats compute --model gemma3-270m --layers 5 --samples 500 --corpus notes.txt
    """
    import time

    from editspec.model import stats
    from editspec.model.corpus import load_corpus
    from editspec.model.loading import load_model

    layers = parse_layers(layers_text)
    loaded = load_model(model_name, device=device, device_map=device_map)
    text = load_corpus(corpus)
    options = dict(corpus=text, samples=samples or stats.DEFAULT_SAMPLES,
                   max_length=max_length or stats.DEFAULT_MAX_LENGTH, dtype=dtype)
    keys = stats.stats_keys(loaded, layers, **options)
    cached = {layer for layer, key in keys.items() if key.path.is_file()}
    started = time.perf_counter()
    results = stats.second_moments(loaded, layers=layers, **options)
    seconds = time.perf_counter() - started
    click.echo(f"model {loaded.name}, corpus {text.name} ({keys[layers[0]].samples} documents), "
               f"max length {options['max_length']}, {dtype}")
    tokens = 0
    for layer, key in keys.items():
        meta = stats.read_metadata(key.path)
        tokens = int(meta.get("tokens", 0))
        state = "cached" if layer in cached else "computed"
        shape = "x".join(map(str, results[layer].shape))
        click.echo(f"  layer {layer:>3}  {key.module}  [{shape}]  {state}  {key.path}")
    if len(cached) < len(layers):
        done = len(layers) - len(cached)
        click.echo(f"{done} layer(s) from {tokens} tokens in {seconds:.1f} s "
                   f"({tokens / max(seconds, 1e-9):.0f} tokens/s, {seconds / done:.1f} s per layer)")


@stats_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def stats_list(as_json: bool) -> None:
    """List the cached statistics entries."""
    from editspec.model.stats import cached_entries, stats_dir

    entries = cached_entries()
    if as_json:
        click.echo(json.dumps([{"path": str(path), **meta} for path, meta in entries], indent=2))
        return
    if not entries:
        click.echo(f"no statistics cached in {stats_dir()}")
        return
    table = [("ENTRY", "MODEL", "LAYER", "CORPUS", "SAMPLES", "TOKENS", "DTYPE", "MAXLEN", "SIZE", "CREATED")]
    for path, meta in entries:
        table.append((path.stem[:12], meta.get("model", "?") or meta.get("weights_hash", "?")[:12],
                      meta.get("layer", "?"), meta.get("corpus", "?"), meta.get("samples", "?"),
                      meta.get("tokens", "?"), meta.get("dtype", "?"), meta.get("max_length", "?"),
                      _size(path.stat().st_size), meta.get("created", "?")))
    _print_table(table)
    click.echo(f"\n{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {stats_dir()}")


@stats_group.command("clear")
@click.option("--model", "model_name", default=None, metavar="M",
              help="Only the entries of this model (default: all entries).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def stats_clear(model_name: str | None, yes: bool) -> None:
    """Delete cached statistics (they take minutes to recompute)."""
    from editspec.model.stats import clear_entries, stats_dir

    weights = None
    if model_name is not None:
        from editspec.model.loading import resolve_model, weights_hash

        weights = weights_hash(resolve_model(model_name))
    which = f"the statistics of {model_name}" if model_name else "all cached statistics"
    if not yes and not click.confirm(f"Delete {which} in {stats_dir()}?", default=False):
        click.echo("nothing deleted")
        return
    files, size = clear_entries(weights)
    click.echo(f"deleted {files} entr{'y' if files == 1 else 'ies'} ({_size(size)})")


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


COMMANDS = [models_command, stats_group]
