"""Writing a fixed checkpoint: atomic, verified, and losing nothing.

safetensors in, safetensors out: when only names change and nothing is dropped, the new file is the new header
followed by the source's data section, byte for byte (offsets and alignment are unchanged). Otherwise every tensor
is streamed to a new, compact layout. Either way each tensor's bytes are checksummed while they are copied, the
output is written to a temporary file beside the target, fsynced, re-read and checked (header against the plan,
every tensor's checksum against the source's), and only then renamed into place. Sharded checkpoints are written
shard by shard into a temporary folder that is renamed into place at the end. A PyTorch pickle (read with
``weights_only=True``) or a ``torch.distributed.checkpoint`` folder is written out as safetensors. Tensors whose
data a rule changes (transpose, split, fuse) go through torch, one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from keyguard._exceptions import WriteError
from keyguard._progress import Progress
from keyguard.fixes._block_copy import Stream
from keyguard.fixes._early_copy import EarlyCopy
from keyguard.fixes._file_write import write_file
from keyguard.fixes._output_plan import Change, item_nbytes, plan_output
from keyguard.fixes._plan import Plan
from keyguard.fixes._sharded_write import write_sharded
from keyguard.fixes._tensor_data import TensorSource, scratch_folder
from keyguard.sources._keyset import KeySet


@dataclass
class WriteResult:
    """What ``write_fixed`` did: the output path, every change per key, and the bytes written."""

    output: str
    changes: list[Change]
    bytes_written: int
    files: list[str]

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)


def write_fixed(
    keys: KeySet,
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    drop: Sequence[str] = (),
    progress: bool | Progress | None = None,
) -> WriteResult:
    """Write ``keys``' checkpoint with ``plan`` applied to ``output``; verified and atomic.

    Args:
        keys: the source, as read by ``keyguard.read_keys`` (safetensors, sharded safetensors, a PyTorch pickle, or
            a DCP folder).
        plan: the rules to apply (all of them: filter with ``plan.at_least(...)`` first).
        output: a ``.safetensors`` file, or a folder for sharded sources (created; it must not exist yet, unless
            it is the source itself: in-place).
        drop: source or new key names to leave out (``--drop-unexpected``).
        progress: show the writing and verifying phases on stderr (default: when stderr is a terminal), or a
            ``keyguard._progress.Progress`` already showing earlier phases (reading, diagnosing) to continue.

    Raises:
        PlanError: the plan would collide keys or does not fit the tensors; nothing is written.
        WriteError: writing or verification failed; nothing is left at ``output``.
    """
    return write_fixed_early(keys, plan, output, drop=drop, progress=progress, early=None)


def write_fixed_early(
    keys: KeySet,
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    drop: Sequence[str] = (),
    progress: bool | Progress | None = None,
    early: EarlyCopy | None,
) -> WriteResult:
    """``write_fixed``, using ``early`` (the source's data section being copied into a temporary file for
    ``output`` since before the plan was known, by ``keyguard fix``) where the write copies that section unchanged;
    ``early`` is cancelled otherwise, and on any failure."""
    try:
        return _write_fixed(keys, plan, os.fspath(output), drop, progress, early)
    finally:
        if early is not None:
            early.cancel()  # nothing when the write took it over


def _write_fixed(
    keys: KeySet,
    plan: Plan,
    out: str,
    drop: Sequence[str],
    progress: bool | Progress | None,
    early: EarlyCopy | None,
) -> WriteResult:
    items, changes = plan_output(keys, plan, drop=drop)
    own = not isinstance(progress, Progress)
    bar = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    total = sum(item_nbytes(i) for i in items)
    bar.phase("writing", total)
    bar.phase("verifying", total)  # shown, waiting, from the start: the write is done once it is verified
    bar.phase("writing")
    # a pickle's tensors are loaded from a private copy, one file at a time, and not kept after the write
    tensors = TensorSource(keys, scratch_folder(out), {s for i in items for s in i.sources})
    try:
        with Stream() as stream:
            if keys.format == "safetensors-sharded":
                written, files = write_sharded(keys, items, changes, out, bar, stream, tensors)
            else:
                written = write_file(keys, items, changes, out, bar, stream=stream, tensors=tensors, early=early)
                files = [out]
    except WriteError:
        raise
    except OSError as exc:  # staging folder, companions, renames
        raise WriteError(f"{out}: writing failed: {exc}") from exc
    finally:
        if own:
            bar.close()
        tensors.close()
    return WriteResult(out, changes, written, files)
