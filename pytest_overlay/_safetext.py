"""Printing hostile text safely: file names and file content from the tests under scrutiny.

File names may hold anything but ``/`` and NUL: newlines that would forge extra report lines,
terminal escape sequences, bidi overrides that reorder what is shown, or bytes that are not
UTF-8.  :func:`safe_path` makes all of them visible and inert; :func:`safe_line` does the same
for a line of a file's content.  Every module that prints a name the tests chose uses these.
"""

from __future__ import annotations

import unicodedata

__all__ = ["safe_line", "safe_path"]

_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
# Categories escaped as \u: controls (C0 and C1, DEL), format characters (bidi overrides,
# zero-width joiners), lone surrogates, and the Unicode line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x80 or 0xDC80 <= code <= 0xDCFF:
        # An ASCII control, or a byte that was not valid UTF-8 (os.fsdecode maps byte 0xNN to
        # the lone surrogate U+DCNN): both shown as the byte, \xNN.  C1 controls are code points
        # and take the \u form below, so \x80..\xff always means a raw byte.
        return f"\\x{code & 0xFF:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_path(path: str) -> str:
    r"""Return a printable, single-line form of the file name or path *path*.

    Backslashes are doubled; ``\n``, ``\t`` and ``\r`` keep their usual escapes; other control
    characters (including ESC and DEL) and undecodable bytes become ``\xNN``; C1 controls,
    format characters (``\u202e``, ``\u200b``...), lone surrogates and line/paragraph
    separators become ``\uNNNN``.  Printable text, spaces included, is unchanged.

    >>> safe_path("caf\u00e9/\x1b[31mred\n")
    'café/\\x1b[31mred\\n'
    """
    out: list[str] = []
    for char in path:
        named = _NAMED.get(char)
        if named is not None:
            out.append(named)
        elif unicodedata.category(char) in _UNSAFE_CATEGORIES:
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)


def safe_line(text: str) -> str:
    r"""Return a printable form of *text*, one line of a file's content.

    Unlike :func:`safe_path`, a tab stays a tab and backslashes are not doubled, so source code
    reads as written; everything a terminal could act on is escaped as :func:`safe_path` does:
    carriage returns and newlines as ``\r`` and ``\n``, other control characters (ESC and DEL)
    and undecodable bytes (lone surrogates from ``errors="surrogateescape"``) as ``\xNN``; C1
    controls, format characters, other lone surrogates and line/paragraph separators as
    ``\uNNNN``.  A literal ``\x1b`` in the file thus looks like an escaped ESC: ambiguous,
    but inert.  The result holds no control, format or separator character but tabs, and
    escaping it again changes nothing.

    >>> safe_line("\tok\x1b[2J\u202e")
    '\tok\\x1b[2J\\u202e'
    """
    # The common case.  isprintable() is false for every category escaped below (and for a few
    # harmless ones, such as no-break spaces, which the loop then keeps).
    if text.replace("\t", " ").isprintable():
        return text
    out: list[str] = []
    for char in text:
        if char == "\t":
            out.append(char)
        elif char in "\r\n":
            out.append(_NAMED[char])
        elif unicodedata.category(char) in _UNSAFE_CATEGORIES:
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)
