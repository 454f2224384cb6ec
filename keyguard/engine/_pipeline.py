"""``diagnose``: explain every difference between the keys a model expects and the keys a checkpoint holds.

Order of work: exact matches; rounds of rule inference on what is left (each round's accepted rules rename the
open checkpoint keys, so combinations such as a DDP prefix plus a legacy rename are found in two rounds); shape,
dtype and transpose checks on every mapped pair; fused/split tensors; and what remains becomes missing or
unexpected, with known-harmless cases explained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from keyguard._gc import cyclic_gc_paused
from keyguard._regex import compile_patterns
from keyguard.engine._alignment_stage import _AlignmentStage
from keyguard.engine._audit import _PlanAudit
from keyguard.engine._emit_findings import _Findings
from keyguard.engine._fused import _Fusions
from keyguard.engine._rounds import _Rounds
from keyguard.engine._state import MAX_ROUNDS
from keyguard.report._model import Report
from keyguard.sources._keyset import KeySet
from keyguard.sources._resolve import Source, read_keys


def diagnose(
    checkpoint: Source,
    expected: Source,
    *,
    ignore: Iterable[str] = (),
    container: str | None = None,
    architecture: str | None = None,
    hints: Mapping[str, str] | None = None,
    match_values: bool = False,
) -> Report:
    """Compare the keys a checkpoint holds with the keys a model expects, and explain every difference.

    Args:
        checkpoint: any source ``keyguard.read_keys`` accepts: the weights to load.
        expected: any source: what the model expects (a module, a ``config.json`` folder, a manifest, a checkpoint
            known to load).
        ignore: regular expressions; keys matching any of them (on either side) are left out and counted.
        container: for pickle checkpoints holding several state dicts, the one to read.
        architecture: for ``config.json`` folders, the model class to build.
        hints: the user's choices where keyguard finds several candidates: checkpoint key -> expected key. A hint
            decides for the whole group of numbered keys the checkpoint key belongs to (``layers.0.attn.wq`` for
            every layer), is checked against shapes like any other correspondence, and is recorded in the plan as
            the user's choice.
        match_values: compare tensor bytes where keys stay ambiguous or were matched by names, when both sides
            hold data (files or state dicts): equal bytes make a mapping safe. Reads the tensors it compares (the
            default reads headers only).

    Returns:
        A ``Report``: findings grouped with stable codes, a summary, and the safe fix plan.

    The engine runs with Python's cyclic garbage collector paused (process-wide; restored after, also on errors):
    its tables of every key hold no reference cycles, and collections would rescan them again and again.
    """
    compile_patterns(ignore, "ignore")  # PatternError before reading anything
    ck = read_keys(checkpoint, container=container)
    ex = read_keys(expected, architecture=architecture)
    values = None
    if match_values:
        from keyguard.engine._fingerprints import Fingerprints

        values = (Fingerprints(checkpoint, ck, container=container), Fingerprints(expected, ex))
    return diagnose_keys(ck, ex, ignore=ignore, hints=hints, values=values)


def diagnose_keys(
    checkpoint: KeySet,
    expected: KeySet,
    *,
    ignore: Iterable[str] = (),
    hints: Mapping[str, str] | None = None,
    align: bool = True,
    values: tuple[Callable[[str], bytes | None], Callable[[str], bytes | None]] | None = None,
) -> Report:
    """``diagnose`` on key sets already read. ``align=False`` leaves out template alignment (whole modules matched
    by shape): the adapter checks use it, where both sides come from one architecture and only naming rules
    (prefixes, segments, adapter names) can be at fault."""
    patterns = compile_patterns(ignore, "ignore")
    with cyclic_gc_paused():  # tables of every key, none in a cycle: see keyguard._gc
        engine = _Engine(checkpoint, expected, patterns, dict(hints or {}))
        engine.aligning = align
        engine.values = values
        return engine.run()


class _Engine(_Rounds, _AlignmentStage, _Fusions, _PlanAudit, _Findings):
    # ------------------------------------------------------------------------------------------------ driver
    def run(self) -> Report:
        for _ in range(MAX_ROUNDS):
            if not self.cur or not self.open_e or not self._round():
                break
        if self.aligning:
            self._align()
        else:
            self._match_held_by_name()
        self._deferred_groups()
        self._deferred_lookalikes()
        self._settle_by_values()
        self._finalize()
        self._audit_plans()
        self._fused_split()
        self._fused_by_shape()
        shape_bad = self._pair_findings()
        self._leftover_findings()
        self._ambiguity_findings()
        return self._report(shape_bad)
