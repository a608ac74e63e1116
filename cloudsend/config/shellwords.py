"""`shlex.split` in linear time.

`shlex.shlex` builds each word a character at a time (`self.token += c` on an attribute), which
is quadratic in a word's length: a 1 MB argument took ~17 s. `split` gives the same words and
the same ValueError messages as `shlex.split(text)` (POSIX mode, no comments), in one regex
pass (tests/test_hardening_tests.py compares the two on generated strings).
"""

from __future__ import annotations

import re
import sys

# a double-quoted body: runs of plain characters and backslash escapes, matched without
# backtracking (possessive, Python 3.11+) or "unrolled" (a run, then escape + run, ...: one
# way to match, so a quote left open costs one linear pass, not a blow-up)
if sys.version_info >= (3, 11):
    _DQ_BODY = r'(?:[^"\\]++|\\[\s\S])*+'
else:
    _DQ_BODY = r'[^"\\]*(?:\\[\s\S][^"\\]*)*'
_PART = re.compile(
    r"""(?P<ws>[ \t\r\n]+)"""
    r"""|(?P<plain>[^ \t\r\n'"\\]+)"""
    r"""|'(?P<sq>[^']*)'"""
    rf'''|"(?P<dq>{_DQ_BODY})"'''
    r"""|\\(?P<esc>[\s\S])"""
    r"""|(?P<bad>[\s\S])"""
)
_DQ_OPEN = re.compile('"' + _DQ_BODY)
# inside double quotes only the quote and the backslash itself are escaped (POSIX shells)
_DQ_ESCAPE = re.compile(r'\\(["\\])')
_WHITESPACE = re.compile(r"[ \t\r\n]+")


def split(text: str) -> list[str]:
    """The words of `text` as `shlex.split(text)` gives them (ValueError on a quote left open
    or a trailing backslash)."""
    if not ("'" in text or '"' in text or "\\" in text):  # nothing to unquote
        return [word for word in _WHITESPACE.split(text) if word]
    words: list[str] = []
    parts: list[str] | None = None  # the word being read (None: between words)
    for match in _PART.finditer(text):
        kind = match.lastgroup
        if kind == "ws":
            if parts is not None:
                words.append("".join(parts))
                parts = None
            continue
        if parts is None:
            parts = []
        if kind == "plain":
            parts.append(match.group("plain"))
        elif kind == "sq":
            parts.append(match.group("sq"))
        elif kind == "dq":
            parts.append(_DQ_ESCAPE.sub(r"\1", match.group("dq")))
        elif kind == "esc":
            parts.append(match.group("esc"))
        else:  # an opening quote with no closing one, or a backslash at the very end
            start = match.start()
            if text[start] == "'":
                raise ValueError("No closing quotation")
            if text[start] == '"':
                opened = _DQ_OPEN.match(text, start)
                assert opened is not None
                if opened.end() == len(text) - 1:  # a lone backslash is left at the end
                    raise ValueError("No escaped character")
                raise ValueError("No closing quotation")
            raise ValueError("No escaped character")
    if parts is not None:
        words.append("".join(parts))
    return words
