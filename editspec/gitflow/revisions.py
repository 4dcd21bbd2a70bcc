"""Reading specs as they were at a git revision, through the `git` command (any repository).

An old spec is loaded from a temporary copy of the revision's `.edit` files and the files their
`preserve` blocks name, so imports and preserve files resolve exactly as they did then.

Example:
    >>> root = repo_root(".")                                       # doctest: +SKIP
    >>> changed_specs(root, "HEAD")                                 # doctest: +SKIP
    ['specs/examples/capitals.edit']
    >>> with RevisionTree(root, "HEAD") as tree:                    # doctest: +SKIP
    ...     spec = tree.load("specs/examples/capitals.edit")
"""
from __future__ import annotations

import os
import posixpath
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

from editspec.errors import EditspecError
from editspec.ir import Spec


def git(root: str | Path, *args: str, input: bytes | None = None) -> bytes:
    """Run `git -C root ARGS`; a failure becomes an EditspecError with git's message."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], input=input, capture_output=True, check=False)
    except FileNotFoundError:
        raise EditspecError("git is not installed", hint="`editspec diff` reads old versions with git") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise EditspecError(f"git {args[0]} failed: {message[-1] if message else 'exit ' + str(done.returncode)}")
    return done.stdout


def repo_root(path: str | Path) -> Path:
    """The top folder of the git repository holding `path`."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        return Path(git(folder, "rev-parse", "--show-toplevel").decode().strip())
    except EditspecError:
        raise EditspecError(f"{path} is not inside a git repository",
                            hint="`editspec diff` compares with a git revision; run it in a repository") from None


def resolve_revision(root: Path, rev: str) -> str:
    """The commit id `rev` names (a branch, tag, `HEAD~2`, ...)."""
    try:
        return git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
    except EditspecError:
        raise EditspecError(f"unknown revision `{rev}`", hint="name a commit, branch or tag, e.g. HEAD~1") from None


def changed_specs(root: Path, rev: str) -> list[str]:
    """`.edit` files (relative to `root`) that differ between `rev` and the working tree, new ones included."""
    changed = git(root, "diff", "--name-only", "--no-renames", "-z", rev, "--", "*.edit").decode()
    untracked = git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", "*.edit").decode()
    names = [n for n in (changed + untracked).split("\0") if n]
    return sorted(dict.fromkeys(names))


def relative_to_root(root: Path, path: str | Path) -> str:
    """`path` (relative to the current folder, or absolute) as a repository path with `/`."""
    absolute = Path(os.path.realpath(path))
    try:
        return absolute.relative_to(os.path.realpath(root)).as_posix()
    except ValueError:
        raise EditspecError(f"{path} is not inside the repository at {root}") from None


class RevisionTree:
    """A temporary copy of the `.edit` files at `rev` and the files they preserve; a context manager."""

    def __init__(self, root: Path, rev: str):
        self.root, self.rev = root, rev
        self._temporary: tempfile.TemporaryDirectory | None = None
        self.path: Path | None = None
        self._present: set[str] = set()

    def __enter__(self) -> "RevisionTree":
        self._temporary = tempfile.TemporaryDirectory(prefix="editspec-diff-")
        self.path = Path(self._temporary.name)
        self._materialise()
        return self

    def __exit__(self, *exc) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()

    def exists(self, relative: str) -> bool:
        """Whether `relative` was a file at the revision."""
        return relative in self._present

    def load(self, relative: str) -> Spec:
        """The spec at `relative` as it was at the revision (EditspecError if it did not load)."""
        from editspec.lang.resolve import analyse

        assert self.path is not None, "use RevisionTree as a context manager"
        analysis = analyse(str(self.path / relative))
        if analysis.spec is None:
            prefix = str(self.path) + os.sep
            errors = [replace(d, message=f"at {self.rev}: {d.message}", location=replace(
                d.location, file=d.location.file.replace(prefix, f"{self.rev}:")) if d.location else None)
                for d in analysis.errors]
            raise EditspecError(errors or f"{relative} did not load at {self.rev}")
        return analysis.spec

    def _materialise(self) -> None:
        blobs: dict[str, str] = {}  # repository path -> object id
        listing = git(self.root, "ls-tree", "-r", "-z", "--full-tree", self.rev).decode(errors="surrogateescape")
        for line in listing.split("\0"):
            if line:
                meta, name = line.split("\t", 1)
                _mode, kind, object_id = meta.split()
                if kind == "blob":
                    blobs[name] = object_id
        self._present = set(blobs)
        specs = [n for n in blobs if n.endswith(".edit")]
        self._write(specs, blobs)
        referenced = {f for n in specs for f in _preserve_files(self.path, n)}
        self._write(sorted(f for f in referenced if f in blobs and not f.endswith(".edit")), blobs)

    def _write(self, names: list[str], blobs: dict[str, str]) -> None:
        """Copy the revision's files `names` into the temporary tree (one `git cat-file` for all)."""
        if not names:
            return
        out = git(self.root, "cat-file", "--batch", input="".join(f"{blobs[n]}\n" for n in names).encode())
        offset = 0
        for name in names:
            header_end = out.index(b"\n", offset)
            size = int(out[offset:header_end].split()[2])
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(out[header_end + 1:header_end + 1 + size])
            offset = header_end + 1 + size + 1  # each blob is followed by a newline


def _preserve_files(tree: Path, spec: str) -> list[str]:
    """Repository paths of the files a spec's `preserve` blocks name (none when it does not parse)."""
    from editspec.lang.lower import lower
    from editspec.lang.syntax import decode, parse

    path = tree / spec
    data = path.read_bytes()
    if b"preserve" not in data:
        return []
    try:
        decls = lower(parse(decode(data, str(path)), str(path)))
    except EditspecError:
        return []
    folder = PurePosixPath(spec).parent
    return [posixpath.normpath(str(folder / name)) for _, _, files, _ in decls.preserve for _, name in files]
