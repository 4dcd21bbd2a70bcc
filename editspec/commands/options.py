"""Click options that several commands share (compile, verify, apply, bench): one definition each."""
from __future__ import annotations

import click

from editspec.errors import EditspecError


def model_options(command):
    """`--model`, `--device`, `--device-map`, `--dtype`."""
    for option in reversed([
        click.option("--model", "model", metavar="M",
                     help="A known name (see `editspec models`), a checkpoint directory or a .gguf file. "
                     "Default: the spec's `model`, else smollm2-135m."),
        click.option("--device", metavar="D", help="Put the whole model on D (cpu, cuda, cuda:1, mps)."),
        click.option("--device-map", "device_map", metavar="MAP",
                     help="`auto`: shard the model over every GPU (and the CPU) through accelerate."),
        click.option("--dtype", metavar="T", help="Weights dtype: float32 (default), bfloat16 or float16."),
    ]):
        command = option(command)
    return command


def compile_options(command):
    """`--set KEY=VALUE` (repeatable) and `--seed`."""
    command = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed for everything random in the compile (same seed, same payload bytes).")(command)
    return click.option("--set", "settings", metavar="KEY=VALUE", multiple=True,
                        help="Override a backend setting, written as in a `backend` block "
                        "(e.g. --set layer=7 --set layers=4..8). Repeatable.")(command)


def fresh_option(command):
    """`--fresh`: compile every edit from the base model, whatever the lock says."""
    return click.option("--fresh", is_flag=True,
                        help="Compile from the base model even when editspec.lock shows that the spec only "
                        "gained edits since its artifact (then only the added edits are compiled, on top of it).")(command)


def parse_settings(settings: tuple[str, ...]) -> dict[str, str]:
    """`("layer=7", "v_lr=0.1")` as a dict; a malformed pair is an error."""
    pairs: dict[str, str] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise EditspecError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set layer=7")
        pairs[key.strip()] = value.strip()
    return pairs


def warn(diagnostic) -> None:
    """A warning diagnostic (file:line:col, the line, a caret, a hint) on stderr."""
    import sys

    click.echo(diagnostic.render(color=sys.stderr.isatty()), err=True)


def progress(message: str) -> None:
    """Progress lines for long commands go to stderr, so stdout stays clean for data."""
    click.echo(message, err=True)


def require_http_url(upstream: str) -> None:
    """Refuse an `--upstream` that is not an http(s) URL, before anything is loaded."""
    if not upstream.startswith(("http://", "https://")):
        raise EditspecError(f"--upstream `{upstream}` is not an http(s) URL",
                            hint="e.g. --upstream http://127.0.0.1:8000/v1")
