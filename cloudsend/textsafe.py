"""Foreign text (what a job wrote, what a host answered) made safe for the user's terminal."""

from __future__ import annotations

import re

# Terminal control sequences (CSI, OSC, other escapes) and C0/C1 controls but tab/newline:
# text a job wrote must not retitle, clear or recolour the user's terminal.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, clear screen
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window title, hyperlinks
    r"|\x1b[@-_]?"  # other escapes
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
MAX_SHOWN = 2_000  # characters of foreign text in one note or cell


def clean(text: object, limit: int = MAX_SHOWN) -> str:
    """Foreign text (a job's output, a host's answer) made safe to show: control sequences
    removed, cut to `limit` characters. Show it as a rich Text (never parsed as markup)."""
    value = str(text)
    if len(value) > limit * 4:
        value = value[: limit * 4]  # bound the regex's work on a huge line
    value = _ESCAPES.sub("", value)
    return value if len(value) <= limit else value[: limit - 3] + "..."
