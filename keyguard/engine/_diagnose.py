"""``diagnose``: explain every difference between the keys a model expects and the keys a checkpoint holds.

Order of work: exact matches; rounds of rule inference on what is left (each round's accepted rules rename the
open checkpoint keys, so combinations such as a DDP prefix plus a legacy rename are found in two rounds); shape,
dtype and transpose checks on every mapped pair; fused/split tensors; and what remains becomes missing or
unexpected, with known-harmless cases explained.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from keyguard.engine._findings import _Findings
from keyguard.engine._fused import _Fusions
from keyguard.engine._rounds import _Rounds
from keyguard.engine._state import MAX_ROUNDS
from keyguard.report._model import Report
from keyguard.sources._resolve import Source, read_keys


def diagnose(
    checkpoint: Source,
    expected: Source,
    *,
    ignore: Iterable[str] = (),
    container: str | None = None,
    architecture: str | None = None,
) -> Report:
    """Compare the keys a checkpoint holds with the keys a model expects, and explain every difference.

    Args:
        checkpoint: any source ``keyguard.read_keys`` accepts: the weights to load.
        expected: any source: what the model expects (a module, a ``config.json`` folder, a manifest, a checkpoint
            known to load).
        ignore: regular expressions; keys matching any of them (on either side) are left out and counted.
        container: for pickle checkpoints holding several state dicts, the one to read.
        architecture: for ``config.json`` folders, the model class to build.

    Returns:
        A ``Report``: findings grouped with stable codes, a summary, and the safe fix plan.
    """
    ck = read_keys(checkpoint, container=container)
    ex = read_keys(expected, architecture=architecture)
    return _Engine(ck, ex, [re.compile(p) for p in ignore]).run()


class _Engine(_Rounds, _Fusions, _Findings):
    # ------------------------------------------------------------------------------------------------ driver
    def run(self) -> Report:
        for _ in range(MAX_ROUNDS):
            if not self.cur or not self.open_e or not self._round():
                break
        self._finalize()
        self._fused_split()
        shape_bad = self._pair_findings()
        self._leftover_findings()
        self._ambiguity_findings()
        return self._report(shape_bad)
