"""Front-end commands: `check`, `fmt` and `ir`.  They never import torch."""
from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path

import click

from editspec.errors import Diagnostic, EditspecError, Outcome


def _spec_files(paths: tuple[str, ...]) -> list[str]:
    """Spec files named on the command line; a directory means every `.edit` file below it."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(sorted(str(p) for p in Path(path).rglob("*.edit")))
        elif not os.path.exists(path):
            raise EditspecError(f"no such file or directory: {path}")
        else:
            files.append(path)
    if not files:
        raise EditspecError("no .edit files found", hint="name spec files or directories that contain them")
    return files


def _print_diagnostics(diagnostics: list[Diagnostic]) -> None:
    color = sys.stderr.isatty()
    for diagnostic in diagnostics:
        click.echo(diagnostic.render(color=color), err=True)


@click.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path())
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when the specs are clean.")
@click.option("--backend", "-b", metavar="B",
              help="Also warn, at its line, about every part of the spec that backend B does not compile "
              "(e.g. canonical or forget blocks with rome).")
def check(specs: tuple[str, ...], quiet: bool, backend: str | None) -> None:
    """Parse, resolve and check specs; report every problem at once.

    SPECS are .edit files or directories (every .edit file below them). Imports are
    followed. Exits 0 when clean (warnings allowed), 2 when any spec has an error.

    \b
    Examples:
      editspec check specs/examples/leadership.edit
      editspec check specs/            # every spec in the tree
      editspec check specs/examples/erasure.edit --backend rome   # what rome would leave out
    """
    from editspec.lang.resolve import analyse

    capabilities = None
    if backend is not None:
        from editspec.build.registry import get_backend

        capabilities = get_backend(backend).capabilities()

    failed = 0
    files = _spec_files(specs)
    for path in files:
        analysis = analyse(path)
        _print_diagnostics(analysis.diagnostics)
        if capabilities is not None and analysis.spec is not None:
            from editspec.build.support import unsupported_parts

            _print_diagnostics(unsupported_parts(analysis.spec, backend, capabilities))
        if analysis.spec is None:
            failed += 1
        elif not quiet:
            spec = analysis.spec
            click.echo(f"{path}: ok ({len(spec.edits)} edits, {len(spec.relations)} relations, "
                       f"{len(spec.canonical)} canonical, {len(spec.forget)} forget, "
                       f"{len(spec.expect)} expectations)")
    if failed:
        click.echo(f"{failed} of {len(files)} spec(s) have errors", err=True)
        return Outcome.ERROR


@click.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path())
@click.option("--check", "check_only", is_flag=True,
              help="Change nothing; exit 1 and show a diff when a file is not formatted.")
def fmt(specs: tuple[str, ...], check_only: bool) -> None:
    """Rewrite specs in canonical form (idempotent, comments kept).

    \b
    Examples:
      editspec fmt specs/                  # format every spec in place
      editspec fmt --check specs/          # in CI: fail if any file needs formatting
    """
    from editspec.lang.fmt import format_text
    from editspec.lang.syntax import decode

    unformatted = []
    for path in _spec_files(specs):
        original = decode(Path(path).read_bytes(), path)
        formatted = format_text(original, path)
        if formatted == original:
            continue
        unformatted.append(path)
        if check_only:
            diff = difflib.unified_diff(original.splitlines(True), formatted.splitlines(True), path, f"{path} (formatted)")
            click.echo("".join(diff), nl=False)
        else:
            _write_atomically(path, formatted)
            click.echo(f"formatted {path}", err=True)
    if check_only and unformatted:
        click.echo(f"{len(unformatted)} file(s) need formatting: run `editspec fmt {' '.join(unformatted)}`", err=True)
        return Outcome.FAILED


def _write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.editspec-tmp"
    with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
    os.replace(temporary, path)


@click.command()
@click.argument("spec", required=False, type=click.Path())
@click.option("--schema", is_flag=True, help="Print the IR's JSON Schema instead.")
@click.option("--hash", "show_hash", is_flag=True, help="Print only the spec's content hash.")
@click.option("--manifest-schema", "manifest_schema", is_flag=True,
              help="Print the JSON Schema of an artifact's manifest.json instead.")
def ir(spec: str | None, schema: bool, show_hash: bool, manifest_schema: bool) -> None:
    """Print a spec's IR as canonical JSON (or the IR's JSON Schema).

    The IR is what backends and the verifier read: relation templates expanded, every edit
    and check with a stable content-derived id, every node with its source span.

    \b
    Examples:
      editspec ir specs/examples/leadership.edit > leadership.ir.json
      editspec ir --hash specs/examples/leadership.edit
      editspec ir --schema > editspec-ir.schema.json
      editspec ir --manifest-schema > docs/manifest.schema.json
    """
    from editspec import ir as ir_module
    from editspec.lang.resolve import load_spec

    if manifest_schema:
        from editspec.build.manifest import manifest_schema as schema_of_manifest

        click.echo(json.dumps(schema_of_manifest(), indent=2, sort_keys=True))
        return
    if schema:
        click.echo(json.dumps(ir_module.json_schema(), indent=2, sort_keys=True))
        return
    if spec is None:
        raise click.UsageError("name a SPEC file, or pass --schema")
    loaded = load_spec(spec)
    click.echo(loaded.content_hash() if show_hash else loaded.to_json())


COMMANDS = [check, fmt, ir]
