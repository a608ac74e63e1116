"""Foreign text (what a job wrote, what a host answered) made safe for the user's terminal."""

from __future__ import annotations

import codecs
import re

# Terminal control sequences (CSI, OSC, other escapes) and C0/C1 controls but tab/newline:
# text a job wrote must not retitle, clear or recolour the user's terminal.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, clear screen
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window title, hyperlinks
    r"|\x1b[@-_]?"  # other escapes
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
    # bidirectional overrides and isolates: they reorder what the user reads
    r"|[\u202a-\u202e\u2066-\u2069]"
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


# the start of a control sequence cut off at the end of a chunk: held back for the next one
_PARTIAL = re.compile(r"(?:\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?|\r)\Z")


class TerminalFilter:
    """A job's log on its way to a terminal (`cloudsend logs`), chunk by chunk: the same
    controls as `clean` removed (newlines and tabs kept, a carriage return made a newline,
    nothing cut), a sequence split between two chunks removed too. Bytes that are not
    UTF-8 show as U+FFFD."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""

    def feed(self, data: bytes, final: bool = False) -> bytes:
        text = self._held + self._decoder.decode(data, final)
        self._held = ""
        if not final:
            partial = _PARTIAL.search(text)
            if partial is not None:
                self._held, text = text[partial.start() :], text[: partial.start()]
        if len(self._held) > 4096:  # an escape that never ends: drop what it swallowed
            self._held = ""
        # a carriage return (progress bars) starts a new line instead of overwriting one
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        return _ESCAPES.sub("", text).encode()
