"""Writing values back as `.edit` source: the inverse of the string decoding in `editspec.lang.lower`."""
from __future__ import annotations

import unicodedata

_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"}


def quote(text: str) -> str:
    """`text` as an `.edit` string literal that decodes back to exactly `text`.

    Example:
        >>> print(quote('say "hi"\\n\\u2028ok é'))
        "say \\"hi\\"\\n\\u{2028}ok é"
    """
    out = ['"']
    for char in text:
        if char in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[char])
        elif unicodedata.category(char) in _ESCAPED_CATEGORIES:
            out.append(f"\\u{{{ord(char):x}}}")  # invisible or line-breaking: spelt out
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
