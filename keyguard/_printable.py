"""Text that can always be printed and written as UTF-8, for paths that are not.

A file name that is not valid UTF-8 reaches Python as a string with surrogate escapes (``os.fsdecode``), which
cannot be encoded: printing it, or writing it into JSON, raises ``UnicodeEncodeError``. Reports and manifests show
such a name with its raw bytes escaped (``caf\\xe9.safetensors``); keyguard keeps the original string to open the
file.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` unchanged when it is valid Unicode; otherwise its undecodable bytes as ``\\xNN`` escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text
    try:  # a file name decoded with surrogateescape: show the bytes it stands for
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # any other lone surrogate
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
