"""The zip container of a PyTorch checkpoint, checked before ``torch.load`` sees it.

``torch.save`` writes a zip whose entries are stored, not compressed: ``<name>/data.pkl`` (the pickle, about a
hundred bytes per tensor), one ``<name>/data/<key>`` entry per storage, and a few small records. ``torch.load``
inflates a compressed entry in memory, whatever size it declares, so a 2 MB file whose ``data.pkl`` inflates to
2 GiB takes gigabytes before a single opcode is read. Only the central directory is read here (a few hundred bytes
per entry), and what no checkpoint holds is refused:

- an entry whose data does not lie inside the file, or overlaps another entry's (several entries sharing one
  compressed stream is how the densest zip bombs are built);
- a compression method torch cannot read, or a compressed entry inflating more than ``MAX_RATIO`` times;
- a pickle larger than ``MAX_PICKLE``, or compressed entries declaring more than ``MAX_PICKLE`` in all.
"""

from __future__ import annotations

import zipfile
from typing import Final

from keyguard._exceptions import SourceError

#: No state dict's pickle comes near this (a million tensors take about 250 MB).
MAX_PICKLE: Final = 512 * 1024 * 1024
#: Deflate reaches about 1000:1 on runs of zeros; pickles compress about 5:1. Only compressed entries are checked.
MAX_RATIO: Final = 100
_SMALL: Final = 1024 * 1024  # entries below this inflate to nothing worth refusing, whatever their ratio
_LOCAL_HEADER: Final = 30  # fixed part of a zip local file header, before the name and the extra field


def check_zip(path: str, size: int) -> None:
    """Refuse a checkpoint zip that could not be a state dict, from its central directory alone.

    Raises:
        SourceError: ``zip-bomb`` (declared sizes or ratios no checkpoint has) or ``invalid-zip`` (entries outside
            the file, overlapping, or unreadable central directory).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise SourceError(path, "invalid-zip", f"is not a readable zip archive ({exc})") from None
    inflated = 0
    end_of_previous = 0
    previous = ""
    for info in sorted(infos, key=lambda i: i.header_offset):
        name = info.filename
        start = info.header_offset
        data_end = start + _LOCAL_HEADER + len(info.orig_filename.encode("utf-8", "surrogateescape"))
        data_end += info.compress_size
        if start < end_of_previous:
            raise SourceError(
                path,
                "invalid-zip",
                f"zip entries {previous!r} and {name!r} overlap (entries sharing data are how zip bombs are built)",
            )
        if data_end > size:
            raise SourceError(path, "invalid-zip", f"zip entry {name!r} claims data past the end of the file")
        end_of_previous, previous = data_end, name
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise SourceError(
                path,
                "invalid-zip",
                f"zip entry {name!r} uses compression method {info.compress_type}, which torch.load cannot read",
            )
        if name.endswith(".pkl") and info.file_size > MAX_PICKLE:
            raise _bomb(path, f"its pickle {name!r} declares {info.file_size:,} bytes", info.file_size)
        if info.compress_type == zipfile.ZIP_STORED:
            continue
        inflated += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _SMALL and ratio > MAX_RATIO:
            raise _bomb(
                path,
                f"zip entry {name!r} inflates {info.compress_size:,} bytes to {info.file_size:,} ({ratio:,.0f}:1)",
                info.file_size,
            )
        if inflated > MAX_PICKLE:
            raise _bomb(path, f"its compressed entries inflate to more than {MAX_PICKLE:,} bytes", inflated)


def _bomb(path: str, what: str, declared: int) -> SourceError:
    return SourceError(
        path,
        "zip-bomb",
        f"refused before loading: {what}; no PyTorch checkpoint does (torch.save stores entries uncompressed)",
        declared=declared,
    )
