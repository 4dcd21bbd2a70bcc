"""editspec: knowledge edits for language models, as code.

The few functions a user calls:

    >>> import editspec
    >>> spec = editspec.load_spec("specs/examples/leadership.edit")   # doctest: +SKIP
    >>> print(editspec.format_text(open("x.edit").read()))            # doctest: +SKIP
"""
__version__ = "0.1.0"

from editspec.errors import Diagnostic, EditspecError  # noqa: E402
from editspec.fmt import format_text  # noqa: E402
from editspec.ir import Spec  # noqa: E402
from editspec.resolve import analyse, load_spec  # noqa: E402

__all__ = ["Diagnostic", "EditspecError", "Spec", "analyse", "format_text", "load_spec", "__version__"]
