"""Names we did not write (class folders, label files, checkpoints' metadata) made safe to show.

A class name comes from a folder name or a file someone else made: it may hold a terminal escape
sequence, a newline that forges another result line, bytes that are not UTF-8 (Python keeps them as
lone surrogates, which no encoder accepts), or a leading "=" that a spreadsheet runs as a formula.

    >>> printable("caf\\udce9\\x1b[31m")     # a non-UTF-8 byte and an ANSI colour
    'caf\\\\xe9\\\\x1b[31m'
    >>> spreadsheet_cell("=HYPERLINK(1)")  # OWASP's advice for CSV injection: a leading quote
    "'=HYPERLINK(1)"
    >>> displayable("a\\\\b\\x1b")  # a message: an escape for ESC, the backslash left as it is
    'a\\\\b\\\\x1b'

Ordinary Unicode (accents, CJK, emoji) passes through unchanged; only what cannot be shown as text is
written as a Python escape, so that two different names never look the same.
"""

import math
import unicodedata

# Characters that start a formula (or a DDE call) in Excel, LibreOffice and Google Sheets.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def escaped(character: str) -> str:
    """One character as a Python escape: \\xNN for a byte that was not UTF-8 or a control, \\uNNNN else."""
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by os.fsdecode as a lone surrogate
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every control, format (e.g. right-to-left override), separator other than the plain space,
    lone surrogate and backslash written as an escape: one line, as it would be typed, safe on a terminal."""
    return escape_unshowable(text, backslash=True)


def displayable(text: object) -> str:
    """str(`text`) as `printable` writes it, except that a backslash stays as it is: for a message (an error's
    text, a warning, a CSV cell) that may already hold names made printable, which this leaves unchanged, so
    that applying it where the line is printed never escapes anything twice."""
    return escape_unshowable(str(text), backslash=False)


def escape_unshowable(text: str, backslash: bool) -> str:
    """`text` with what cannot be shown as text escaped, and backslashes too if `backslash`."""
    out = []
    for character in text:
        category = unicodedata.category(character)
        if character == "\\":
            # doubled, so that an escape we write is never confused with one in the name
            out.append("\\\\" if backslash else character)
        elif character == " " or category[0] not in "CZ":
            out.append(character)
        else:
            out.append(escaped(character))
    return "".join(out)


def spreadsheet_cell(text: str) -> str:
    """`text` for one cell of a CSV file: displayable (a backslash in a Windows path stays one backslash), and
    with a leading quote where a spreadsheet would otherwise read it as a formula."""
    text = displayable(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def shown(value: object, limit: int = 80) -> str:
    """A value read from a file, for a one-line message: as Python writes it (repr escapes what cannot be shown),
    cut to `limit` characters; an int too long for repr (over 4300 digits) by its number of digits."""
    if isinstance(value, int) and abs(value).bit_length() > 256:
        return f"<a number of about {math.floor(abs(value).bit_length() * math.log10(2)) + 1} digits>"
    text = displayable(repr(value))  # (displayable: what a custom __repr__ might still hold)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
