"""Writing one fixed ``.safetensors`` file: atomic, checksummed while copied, verified before the rename.

When only names change and nothing of the source file is dropped, the new file is the new header followed by the
source's data section, byte for byte (offsets and alignment are unchanged). Otherwise every tensor is streamed to a
new, compact layout. The source is checked before and after the copy: a file that changed meanwhile is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from keyguard._atomic import atomic_output
from keyguard._exceptions import PlanError, SourceError, WriteError
from keyguard._progress import Progress
from keyguard._st_write import encode_header, layout
from keyguard._version import __version__
from keyguard.fixes._block_copy import ReadBack, Stream, copy_data_section
from keyguard.fixes._early_copy import EarlyCopy, pad_header
from keyguard.fixes._file_spans import FileSpan, check_sources, file_spans
from keyguard.fixes._output_plan import Change, OutputItem, source_path
from keyguard.fixes._tensor_data import TensorSource, write_item
from keyguard.fixes._write_verify import verify_written
from keyguard.sources._keyset import KeySet

METADATA_KEY = "keyguard.fix"


def fix_metadata(keys: KeySet, changes: list[Change]) -> dict[str, str]:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
    meta = dict(keys.metadata) if keys.format == "safetensors" else {}
    meta.setdefault("format", "pt")
    meta[METADATA_KEY] = f"keys rewritten by keyguard {__version__}: {summary}"
    return meta


def write_file(
    keys: KeySet,
    items: list[OutputItem],
    changes: list[Change],
    out: str,
    bar: Progress,
    *,
    stream: Stream,
    tensors: TensorSource,
    metadata: Mapping[str, str] | None = None,
    files: Mapping[str | None, FileSpan] | None = None,
    early: EarlyCopy | None = None,
) -> int:
    """Write one output file; ``early``, when given, is a copy of the data section already under way (``keyguard
    fix``): it is used when this write copies that same section and the new header fits before it, and cancelled
    otherwise."""
    rows = layout({i.name: (i.dtype, i.shape) for i in items})
    by_name = {i.name: i for i in items}
    meta = dict(metadata) if metadata is not None else fix_metadata(keys, changes)
    files = file_spans(keys) if files is None else files
    fast = keys.format in ("safetensors", "safetensors-sharded") and _same_layout(keys, items, files)
    base = 0
    if fast:
        # names change, bytes do not: keep the source's layout so the data section is copied as one block
        spans = {i.name: keys[i.sources[0]].offsets or (0, 0) for i in items}
        base = min((span[0] for span in spans.values()), default=0)  # tensors cover the data from its start
        rows = sorted(
            ((i.name, i.dtype, i.shape, spans[i.name][0] - base, spans[i.name][1] - base) for i in items),
            key=lambda row: (row[3], row[4]),
        )
    header = encode_header(rows, meta)
    checks: dict[str, int] = {}
    readback = ReadBack()  # the output's checksums, read back while the kernel copies (verification uses them)
    used = {keys[src].file for i in items for src in i.sources}
    sources = {source_path(keys, file): files[file] for file in used if file in files}
    # a new output gets the permissions of the file it is made from (a 0600 checkpoint stays private)
    like = source_path(keys, sorted(used, key=str)[0]) if used else keys.location
    if early is not None:
        source = source_path(keys, keys[items[0].sources[0]].file) if fast else ""
        padded = pad_header(header, early.data_start) if fast else None
        bounds = [(name, start, end) for name, _, _, start, end in rows]
        if padded is None or not early.matches(source, base, bounds):
            early.cancel()
        else:
            return _adopt(early, padded, rows, {i.sources[0]: i.name for i in items}, meta, out, like, bar, sources)
    try:
        with atomic_output(
            out, verify=lambda path: verify_written(path, rows, checks, meta, stream, bar, readback), like=like
        ) as f:
            check_sources(sources)  # the sources are still what read_keys saw...
            f.write(header)
            if fast:
                path = source_path(keys, keys[items[0].sources[0]].file)
                copy_data_section(path, base, rows, f, checks, bar, stream, readback)
            else:
                for name, _, _, start, end in rows:
                    write_item(keys, by_name[name], f, checks, bar, end - start, stream, tensors)
            check_sources(sources)  # ...and did not change while they were copied
    except PlanError:
        raise
    except SourceError as exc:
        raise WriteError(f"{out}: not written: reading the source failed: {exc}") from exc
    except OSError as exc:
        raise WriteError(f"{out}: writing failed: {exc}") from exc
    return len(header) + (rows[-1][4] if rows else 0)


def _adopt(
    early: EarlyCopy,
    header: bytes,
    rows: list[tuple[str, str, tuple[int, ...], int, int]],
    names: Mapping[str, str],
    meta: Mapping[str, str],
    out: str,
    like: str | None,
    bar: Progress,
    sources: Mapping[str, FileSpan],
) -> int:
    """Finish a write whose data section was copied early: the header (padded to the room before the data) last,
    then the same checks, fsync, verification and rename as any write."""
    try:
        temp, checks, readback = early.take(names)
        with atomic_output(
            out, verify=lambda path: verify_written(path, rows, checks, meta, None, bar, readback), temp=temp
        ) as f:
            os.pwrite(f.fileno(), header, 0)
            bar.update(early.end - early.data_start)
            check_sources(sources)  # the source did not change while it was copied
    except SourceError as exc:
        raise WriteError(f"{out}: not written: reading the source failed: {exc}") from exc
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(f"{out}: writing failed: {exc}") from exc
    return len(header) + (rows[-1][4] if rows else 0)


def _same_layout(keys: KeySet, items: list[OutputItem], files: Mapping[str | None, FileSpan]) -> bool:
    """True when every tensor of one source file is written unchanged, once, and nothing of that file is dropped."""
    if not items or any(i.op != "copy" for i in items):
        return False
    used = {keys[i.sources[0]].file for i in items}
    if len(used) != 1:
        return False
    span = files.get(used.pop())
    return span is not None and len({s for i in items for s in i.sources}) == span.count
