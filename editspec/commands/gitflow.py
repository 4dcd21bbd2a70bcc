"""Specs in git: `diff` (semantic diff against a revision), `lock` and `status`.  Never import torch."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from editspec.errors import EditspecError, Outcome


def _split_arguments(arguments: tuple[str, ...]) -> tuple[str, list[str]]:
    """`[REV] [SPEC...]`: the first argument is a revision unless it names a file or folder."""
    if arguments and not os.path.exists(arguments[0]) and not arguments[0].endswith(".edit"):
        return arguments[0], list(arguments[1:])
    return "HEAD", list(arguments)


def _specs_to_diff(root: Path, rev: str, paths: list[str]) -> list[str]:
    """Repository paths of the specs to compare: those named (folders expanded) or every changed one."""
    from editspec.gitflow.revisions import changed_specs, relative_to_root

    changed = changed_specs(root, rev)
    if not paths:
        return changed + _importers_of(root, changed)
    chosen: list[str] = []
    for path in paths:
        relative = relative_to_root(root, path)
        if os.path.isdir(path):
            below = [relative_to_root(root, p) for p in sorted(Path(path).rglob("*.edit"))]
            prefix = "" if relative == "." else relative + "/"
            chosen += below + [c for c in changed if c.startswith(prefix)]
        else:
            chosen.append(relative)
    return list(dict.fromkeys(chosen))


def _importers_of(root: Path, changed: list[str]) -> list[str]:
    """Working-tree specs that import a changed file (directly or not): their meaning changed too."""
    from editspec.gitflow.revisions import git
    from editspec.lang.resolve import analyse

    if not changed:
        return []
    listed = git(root, "ls-files", "-z", "--", "*.edit").decode().split("\0")
    changed_files = {os.path.realpath(root / c) for c in changed}
    found = []
    for relative in sorted(n for n in listed if n and n not in changed and (root / n).is_file()):
        spec = analyse(str(root / relative)).spec
        if spec is not None and changed_files & {os.path.realpath(f) for f in spec.files[1:]}:
            found.append(relative)
    return found


def _status(old, new, result) -> str:
    if old is None or new is None:
        return "added" if old is None else "deleted"
    return "modified" if result else "unchanged"


def _summary(counts: dict[str, dict[str, int]]) -> str:
    parts = []
    for section, numbers in counts.items():
        done = [f"{n} {kind}" for kind, n in numbers.items() if n]
        parts.append(f"{section}: {', '.join(done)}")
    return "; ".join(parts) if parts else "no semantic change"


@click.command()
@click.argument("arguments", nargs=-1, metavar="[REV] [SPEC...]")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--exit-code", is_flag=True, help="Exit 1 when any spec changed in meaning (as `git diff --exit-code`).")
def diff(arguments: tuple[str, ...], output_format: str, exit_code: bool) -> None:
    """What the specs now mean, compared with git revision REV (default HEAD).

    Edits are matched by relation and subject: an edit shows as added, removed, or changed
    (new object, was, prompts, scope, keep, implies).  Canonical and forget blocks,
    expectations, preserve budgets, backend settings and relations are compared too.
    Formatting, comments and moved declarations are not changes.  With no SPEC, every .edit
    file that differs from REV (new files included) is compared, and every spec that
    imports one of them.  Old versions are read with
    git, imports as they were at REV.

    \b
    Examples:
      editspec diff                                 # working tree against HEAD
      editspec diff HEAD~3 specs/examples/capitals.edit
      editspec diff main --format json > spec-changes.json
    """
    from editspec.gitflow.revisions import RevisionTree, repo_root, resolve_revision
    from editspec.lang.resolve import analyse
    from editspec.gitflow.diff import diff_specs, render_text

    rev, paths = _split_arguments(arguments)
    root = repo_root(paths[0] if paths else ".")
    commit = resolve_revision(root, rev)
    specs = _specs_to_diff(root, rev, paths)
    reports, failures, changed_any = [], [], False
    with RevisionTree(root, commit) as tree:
        for relative in specs:
            current = root / relative
            if not tree.exists(relative) and not current.is_file():
                failures.append(EditspecError(f"{relative} is neither in the working tree nor at {rev}"))
                continue
            try:
                old = tree.load(relative) if tree.exists(relative) else None
                new = None
                if current.is_file():
                    analysis = analyse(str(current))
                    if analysis.spec is None:
                        raise EditspecError(analysis.errors)
                    new = analysis.spec
            except EditspecError as error:
                failures.append(error)
                continue
            result = diff_specs(old, new)
            changed_any = changed_any or bool(result)
            reports.append((relative, _status(old, new, result), result))
    if output_format == "json":
        click.echo(json.dumps({
            "revision": rev, "commit": commit,
            "specs": [{"path": path, "status": status, "changed": bool(result), "counts": result.counts(),
                       "changes": result.to_dict()} for path, status, result in reports],
            "errors": [d.render() for e in failures for d in e.diagnostics],
        }, indent=2, ensure_ascii=False))
    else:
        click.echo(f"{rev} ({commit[:10]}) -> working tree: {len(reports)} spec(s)")
        for path, status, result in reports:
            click.echo(f"{path} ({status}): {_summary(result.counts())}")
            for line in render_text(result):
                click.echo(line)
    for error in failures:
        click.echo(error.render(color=sys.stderr.isatty()), err=True)
    if failures:
        return Outcome.ERROR
    if exit_code and changed_any:
        return Outcome.FAILED



@click.command("lock")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--spec", "spec", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The spec the artifacts were compiled from (default: the one their manifest names).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="The --set overrides the artifacts were compiled with (repeatable).")
def lock_command(artifacts: tuple[str, ...], spec: str | None, settings: tuple[str, ...]) -> None:
    """Record compiled ARTIFACTS in the editspec.lock next to their spec.

    The lock (JSON, meant for git) says which artifact was compiled from which spec, model,
    settings and edits, so that `editspec status` can tell when one is out of date.

    \b
    Examples:
      editspec compile specs/capitals.edit --backend rome -o build/capitals.rome
      editspec lock build/capitals.rome          # writes specs/editspec.lock
    """
    from editspec.commands.options import parse_settings
    from editspec.gitflow.lock import record_artifact

    overrides = parse_settings(settings)
    for artifact in artifacts:
        path = record_artifact(artifact, spec=spec, overrides=overrides)
        click.echo(f"locked {artifact} in {path}")


@click.command("status")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status_command(paths: tuple[str, ...], output_format: str) -> None:
    """Which locked artifacts are out of date, why, and the command that brings each up to date.

    PATHS are specs (their folder's editspec.lock, their entries only), lock files or folders
    (every editspec.lock below); default: the current folder.  An artifact whose spec only
    gained edits can be compiled on top of the old one (`compile --on`); a removed or changed
    edit, new settings or another model need a compile from the base model.  Exits 0 when every
    artifact is current, 1 when any is stale, missing, modified or broken.

    \b
    Examples:
      editspec status
      editspec status specs/capitals.edit --format json
    """
    from editspec.gitflow.lock import LOCK_FILE, find_locks, lock_status

    results = []
    for path in paths or (".",):
        target = Path(path)
        if target.is_dir():
            results += [s for lock in find_locks(target) for s in lock_status(lock)]
        elif target.name == LOCK_FILE:
            results += lock_status(target)
        else:
            lock = target.parent / LOCK_FILE
            if not lock.is_file():
                raise EditspecError(f"no {LOCK_FILE} next to {path}", hint=f"record artifacts with `editspec lock DIR`")
            results += lock_status(lock, {target.name})
    if output_format == "json":
        click.echo(json.dumps([s.to_dict() for s in results], indent=2, ensure_ascii=False))
    else:
        if not results:
            click.echo("no locked artifacts found")
        for s in results:
            click.echo(f"{s.artifact} ({s.backend}, from {s.spec}): {s.state}")
            for reason in s.reasons:
                click.echo(f"  {reason}")
            if s.action:
                click.echo(f"  -> {s.action}")
    if any(s.state != "current" for s in results):
        return Outcome.FAILED


COMMANDS = [diff, lock_command, status_command]
