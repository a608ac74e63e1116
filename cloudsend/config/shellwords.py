"""`shlex.split` in linear time.

`shlex.shlex` builds each word a character at a time (`self.token += c` on an attribute), which
is quadratic in a word's length: a 1 MB argument took ~17 s. `split` gives the same words and
the same ValueError messages as `shlex.split(text)` (POSIX mode, no comments), a regex match
per word (tests/test_hardening_tests.py compares the two on generated strings).
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
# one word: plain runs, quoted strings and escapes, up to whitespace or a quote left open
_WORD = re.compile(r"""(?:[^ \t\r\n'"\\]+|'[^']*'|"(?:""" + _DQ_BODY + r""")"|\\[\s\S])+""")
# the parts of one word
_PART = re.compile(
    r"""(?P<plain>[^'"\\]+)|'(?P<sq>[^']*)'|"(?P<dq>""" + _DQ_BODY + r""")"|\\(?P<esc>[\s\S])"""
)
_DQ_OPEN = re.compile('"' + _DQ_BODY)
# inside double quotes only the quote and the backslash itself are escaped (POSIX shells)
_DQ_ESCAPE = re.compile(r'\\(["\\])')
_SPACE = re.compile(r"[ \t\r\n]*")
_WHITESPACE = re.compile(r"[ \t\r\n]+")
_SPECIAL = re.compile(r"""['"\\]""")


def split(text: str) -> list[str]:
    """The words of `text` as `shlex.split(text)` gives them (ValueError on a quote left open
    or a trailing backslash)."""
    if _SPECIAL.search(text) is None:  # nothing to unquote
        return [word for word in _WHITESPACE.split(text) if word]
    words: list[str] = []
    pos, size = 0, len(text)
    while True:
        space = _SPACE.match(text, pos)
        assert space is not None  # `*` matches the empty string
        pos = space.end()
        if pos >= size:
            return words
        match = _WORD.match(text, pos)
        end = match.end() if match else pos
        if end < size and text[end] not in " \t\r\n":
            raise _open_quote(text, end)
        word = text[pos:end]
        words.append(_unquote(word) if _SPECIAL.search(word) else word)
        pos = end


def _unquote(word: str) -> str:
    parts = []
    for match in _PART.finditer(word):
        kind = match.lastgroup
        if kind == "dq":
            parts.append(_DQ_ESCAPE.sub(r"\1", match.group("dq")))
        else:
            parts.append(match.group(kind or "plain"))
    return "".join(parts)


def _open_quote(text: str, at: int) -> ValueError:
    """What shlex says where a word stops short of whitespace: a quote left open, or a
    backslash at the very end."""
    if text[at] == "'":
        return ValueError("No closing quotation")
    if text[at] == '"':
        opened = _DQ_OPEN.match(text, at)
        assert opened is not None
        if opened.end() == len(text) - 1:  # a lone backslash is left at the end
            return ValueError("No escaped character")
        return ValueError("No closing quotation")
    return ValueError("No escaped character")
