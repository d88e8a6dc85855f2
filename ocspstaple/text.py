"""Text for one line of output, whatever a file name or a value holds.

A path may hold a newline, a NUL (from a config file) or a terminal escape
sequence; an option value may be 10 KB long.  Every message is one line
(cron mails it, journald and monitoring read it line by line), so these are
shown escaped, the way Python's repr() would show them.
"""
from __future__ import annotations

#: C0 and C1 controls and DEL (Unicode category Cc), and the other characters
#: str.splitlines() breaks on
_BREAKING = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPES = {c: chr(c).encode("unicode_escape").decode("ascii") for c in _BREAKING}
#: the longest option value shown in a message; the rest is elided
MAX_SHOWN = 80


def one_line(text: str) -> str:
    """``text`` with every control character (newline, NUL, ESC...) escaped."""
    return text.translate(_ESCAPES)


def shown(value: object) -> str:
    """A value as a message quotes it: repr(), cut to MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 5] + "[...]"


def plugin_text(text: str) -> str:
    """one_line, and no "|": it starts a monitoring plugin's perfdata."""
    return one_line(text).replace("|", "\\x7c")
