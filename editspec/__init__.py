"""editspec: knowledge edits for language models, as code.

The few functions a user calls:

    >>> import editspec
    >>> spec = editspec.load_spec("specs/examples/leadership.edit")   # doctest: +SKIP
    >>> print(editspec.format_text(open("x.edit").read()))            # doctest: +SKIP
    >>> artifact = editspec.compile_spec(spec, "rome")                  # doctest: +SKIP
    >>> edited = editspec.load_edited(editspec.load_artifact_model(artifact), artifact)  # doctest: +SKIP
    >>> edited.revert()                                                 # doctest: +SKIP
"""
__version__ = "0.1.0"

from editspec.errors import Diagnostic, EditspecError  # noqa: E402
from editspec.fmt import format_text  # noqa: E402
from editspec.ir import Spec  # noqa: E402
from editspec.resolve import analyse, load_spec  # noqa: E402

# These need torch; they are imported on first use so that the front end stays fast.
_LAZY = {
    "compile_spec": "editspec.compiler",
    "load_edited": "editspec.edited",
    "load_artifact_model": "editspec.edited",
    "read_artifact": "editspec.artifact",
    "load_model": "editspec.models",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'editspec' has no attribute {name!r}")


__all__ = ["Diagnostic", "EditspecError", "Spec", "analyse", "format_text", "load_spec", "__version__", *_LAZY]
