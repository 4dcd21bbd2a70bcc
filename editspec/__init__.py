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
from editspec.lang.fmt import format_text  # noqa: E402
from editspec.ir import Spec  # noqa: E402
from editspec.lang.resolve import analyse, load_spec  # noqa: E402

# These need torch; they are imported on first use so that the front end stays fast.
from editspec.lazy import lazy_names  # noqa: E402

_LAZY = {
    "compile_spec": "editspec.build.compiler",
    "load_edited": "editspec.build.attach",
    "load_artifact_model": "editspec.build.attach",
    "read_artifact": "editspec.build.artifact",
    "load_model": "editspec.model.loading",
}

__getattr__ = lazy_names(__name__, _LAZY)

__all__ = ["Diagnostic", "EditspecError", "Spec", "analyse", "format_text", "load_spec", "__version__", *_LAZY]
