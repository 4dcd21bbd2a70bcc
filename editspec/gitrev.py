"""Reading specs as they were at a git revision, through the `git` command (any repository).

An old spec is loaded from a temporary copy of the revision's spec folders, so its imports and
preserve files resolve exactly as they did then.

Example:
    >>> root = repo_root(".")                                       # doctest: +SKIP
    >>> changed_specs(root, "HEAD")                                 # doctest: +SKIP
    ['specs/examples/capitals.edit']
    >>> with RevisionTree(root, "HEAD") as tree:                    # doctest: +SKIP
    ...     spec = tree.load("specs/examples/capitals.edit")
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

from editspec.errors import EditspecError
from editspec.ir import Spec

MAX_COPIED_BYTES = 8 * 1024 * 1024  # a file bigger than this is not a spec's preserve text


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
    """A temporary copy of the folders holding `.edit` files at `rev`; a context manager.

    Copies every `.edit` file of the revision and the other files next to or below them
    (relation files, preserve texts), so old specs load with their imports as they were.
    """

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
        from editspec.resolve import analyse

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
        entries = []  # (path, object id) of every blob small enough
        listing = git(self.root, "ls-tree", "-r", "-l", "-z", "--full-tree", self.rev).decode(errors="surrogateescape")
        for line in listing.split("\0"):
            if not line:
                continue
            meta, name = line.split("\t", 1)
            _mode, kind, object_id, size = meta.split()
            if kind == "blob" and size.isdigit() and int(size) <= MAX_COPIED_BYTES:
                entries.append((name, object_id))
        spec_folders = {str(PurePosixPath(n).parent) for n, _ in entries if n.endswith(".edit")}
        wanted = [(n, oid) for n, oid in entries
                  if n.endswith(".edit") or any(_under(n, folder) for folder in spec_folders)]
        self._present = {n for n, _ in entries}
        if not wanted:
            return
        out = git(self.root, "cat-file", "--batch", input="".join(f"{oid}\n" for _, oid in wanted).encode())
        offset = 0
        for name, _ in wanted:
            header_end = out.index(b"\n", offset)
            size = int(out[offset:header_end].split()[2])
            content = out[header_end + 1:header_end + 1 + size]
            offset = header_end + 1 + size + 1  # the blob is followed by a newline
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def _under(path: str, folder: str) -> bool:
    return folder == "." or path.startswith(folder + "/")
