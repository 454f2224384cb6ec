"""``check_adapter``: would a stock PEFT load take every tensor of an exported LoRA adapter? From the files alone.

Order of work: read the config leniently (its problems are findings); sort the adapter's keys by PEFT's naming into
LoRA tensors of base modules, base tensors saved in full or from inside a LoRA-wrapped module, and keys that name
nothing of the base. When any key names nothing, the engine explains why (``diagnose`` of the adapter's keys
against the keys PEFT would expect), and the keys its plan maps are checked under their mapped names, so a stripped
prefix is one finding with a fix rather than every module missing. Then module by module: declared and present,
complete pairs, ranks, shapes against the base; saved tensors; dtypes; values and X-LoRA on request.

Where each stage lives: filing the keys, PEFT's expected keys and the engine's reading in ``_adapter_keys``; the
checks on modules and saved tensors in ``_structure_checks``; here, the entry points, the checks that read dtypes
and values (and X-LoRA's), and the report.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Final

from keyguard._dtypes import dtype_label
from keyguard._exceptions import SourceError
from keyguard.adapter_checks._config_read import read_config
from keyguard.adapter_checks._findings import finding, plural
from keyguard.adapter_checks._peft_conventions import EMBEDDING_A, LORA_B
from keyguard.adapter_checks._structure_checks import StructureChecks
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Applicability
from keyguard.report import _kinds as kinds
from keyguard.report._model import Example, Report, SourceRef, Summary
from keyguard.sources._adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_weights
from keyguard.sources._keyset import KeySet
from keyguard.sources._resolve import Source, read_keys

_ADAPTER_FILES: Final = (ADAPTER_CONFIG, *ADAPTER_WEIGHTS)
_ORDER: Final = {"fatal": 0, "error": 1, "warning": 2, "info": 3}


def check_adapter(
    adapter_dir: str | os.PathLike[str],
    base: Source,
    *,
    check_values: bool = False,
    xlora: bool = False,
    container: str | None = None,
    architecture: str | None = None,
) -> Report:
    """Check an exported PEFT LoRA adapter against the base model it is meant for, from the files alone.

    Whatever would make a stock PEFT load fail, or silently skip or mis-shape a tensor, is an error. Checks, each a
    finding kind (``keyguard explain KG5xx``): the config is valid; every LoRA tensor names a module of the base
    under PEFT's naming (the engine explains prefix and rename problems, with the fix); ``target_modules`` entries
    match modules, declared modules have weights and weights are declared; pairs are complete; ranks agree with
    ``r`` / ``rank_pattern`` and shapes with the base (``Conv1D`` and embeddings included); ``modules_to_save``
    tensors fit; dtypes agree.

    Args:
        adapter_dir: the adapter folder (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``), or
            one of those files.
        base: what the adapter is for: a checkpoint (file or sharded folder), a ``config.json`` folder, a keyguard
            manifest, or anything else ``keyguard.read_keys`` accepts (a ``KeySet`` is used as is).
        check_values: also read every tensor (one at a time; needs torch): NaN / Inf are errors, an all-zero
            ``lora_B`` (untrained) is a warning.
        xlora: also predict whether PEFT's X-LoRA would load the adapter, stock and through keyguard.
        container: for a pickle base holding several state dicts, the one to read.
        architecture: for a ``config.json`` base, the model class to build.

    Returns:
        A ``Report`` like ``diagnose``'s: ``checkpoint`` is the adapter, ``expected`` the base; ``plan`` holds the safe
        renames of the adapter's keys, if any.

    Raises:
        SourceError: the adapter folder or the base cannot be read (an invalid ``adapter_config.json`` is a finding).
    """
    folder = adapter_folder(adapter_dir)
    config = read_config(folder)
    weights = _read_weights(folder)
    base_keys = read_keys(base, container=container, architecture=architecture)
    if base_keys.format == "peft-adapter":
        raise SourceError(
            base_keys.location, "base-is-adapter", "is a PEFT adapter; the base must be the model it was trained on"
        )
    return _Check(folder, config, weights, base_keys).run(check_values=check_values, xlora=xlora)


def adapter_folder(path: str | os.PathLike[str]) -> str:
    """The adapter folder ``path`` names (the folder itself, or a file inside it)."""
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) in _ADAPTER_FILES:
        return os.path.dirname(path) or "."
    return path


def _read_weights(folder: str) -> KeySet:
    path = adapter_weights(folder)  # the rule shards follow: symlinks stay in the adapter's own tree
    if path.endswith(".safetensors"):
        from keyguard.sources._safetensors import read_safetensors

        keys = read_safetensors(path)
    else:
        from keyguard.sources._pickle import read_pickle

        keys = read_pickle(path)
    return keys.evolve(format="peft-adapter", location=folder, files=(os.path.basename(path),))


class _Check(StructureChecks):
    # ------------------------------------------------------------------------------------------------ driver
    def run(self, *, check_values: bool, xlora: bool) -> Report:
        peft_type = self.config.peft_type
        if peft_type not in (None, "LORA") and self.cfg.usable("peft_type"):
            self.findings.append(
                finding(
                    kinds.UNSUPPORTED_ADAPTER_TYPE,
                    f"the adapter's peft_type is {peft_type!r}: only LoRA's module names and shapes are known to"
                    " keyguard, so only the config, dtypes and values are checked",
                    examples=[],
                    ctx={"peft_type": peft_type},
                )
            )
        else:
            self._structure()
        self._dtypes()
        if check_values:
            self._values()
        if xlora:
            self._xlora()
        return self._report()

    # -------------------------------------------------------------------------------------------- the values
    def _dtypes(self) -> None:
        counts = Counter(info.dtype for info in self.adapter.tensors.values() if info.dtype is not None)
        if len(counts) < 2:
            return
        common = counts.most_common(1)[0][0]
        odd = [k for k, info in self.adapter.tensors.items() if info.dtype is not None and info.dtype != common]
        text = ", ".join(f"{dtype_label(d)} x{n:,}" for d, n in counts.most_common())
        self.findings.append(
            finding(
                kinds.MIXED_DTYPES,
                f"the adapter's tensors mix dtypes ({text}); {plural(len(odd), 'tensor')} differ from the most common"
                f" one, {dtype_label(common)}",
                checkpoint_keys=odd,
                examples=[Example(checkpoint=k, detail=dtype_label(self.adapter[k].dtype)) for k in odd],
                ctx={"dtypes": dict(counts), "most_common": common},
            )
        )

    def _values(self) -> None:
        from keyguard.adapter_checks._values import scan

        path = os.path.join(self.folder, self.adapter.files[0])
        facts = scan(path, list(self.adapter))
        bad = [k for k, v in facts.items() if v.nan or v.inf]
        if bad:
            self.findings.append(
                finding(
                    kinds.NONFINITE_VALUES,
                    f"{plural(len(bad), 'tensor')} {'holds' if len(bad) == 1 else 'hold'} NaN or infinite values;"
                    " every output through those modules"
                    " becomes NaN",
                    checkpoint_keys=bad,
                    examples=[
                        Example(
                            checkpoint=k,
                            detail=f"{facts[k].nan:,} NaN, {facts[k].inf:,} Inf of {facts[k].numel:,} values",
                        )
                        for k in bad
                    ],
                    ctx={"tensors": {k: {"nan": facts[k].nan, "inf": facts[k].inf} for k in bad[:50]}},
                )
            )
        factors = []
        for roles in self.lora.values():
            key = roles.get(LORA_B) or roles.get(EMBEDDING_A)  # the factor PEFT initialises to zero
            if key is not None:
                factors.append(key)
        zero = [k for k in factors if facts[k].all_zero]
        if zero:
            every = len(zero) == len(factors)
            tail = "the adapter changes nothing" if every else "those modules are unchanged"
            self.findings.append(
                finding(
                    kinds.UNTRAINED_LORA,
                    f"{len(zero):,} of {plural(len(factors), 'zero-initialised LoRA factor')} (lora_B, or"
                    f" lora_embedding_A for embeddings) are all zeros: {tail}; was the adapter trained?",
                    checkpoint_keys=zero,
                    examples=[Example(checkpoint=k, detail="all zeros") for k in zero],
                    ctx={"zero": len(zero), "factors": len(factors)},
                )
            )

    def _xlora(self) -> None:
        from keyguard.adapter_checks._xlora_check import xlora_findings

        unexplained = set(self.unknown)
        canonical: dict[str, str | None] = {}
        for key in self.adapter:
            if key in self.renamed:
                canonical[key] = self.renamed[key]
            else:
                canonical[key] = None if key in unexplained else key
        ok = self._loads_through_keyguard()
        self.findings.extend(xlora_findings(self.folder, self.base_keys, canonical, keyguard_ok=ok))

    def _loads_through_keyguard(self) -> bool:
        """No error is left once the safe plan has renamed what it can."""
        safe_plan_maps_all = not self.unknown and all(
            self.engine is None or self.engine.plan.rename_key(k) == new for k, new in self.renamed.items()
        )
        for f in self.findings:
            if not f.severity.at_least(kinds.Severity.error):
                continue
            if f.fix is not None and f.fix.applicability is Applicability.safe:
                continue
            if f.code == kinds.NO_MATCHING_MODULES.code and self.renamed and safe_plan_maps_all:
                continue
            return False
        return True

    # ---------------------------------------------------------------------------------------------- the report
    def _report(self) -> Report:
        expected = self.expected
        matched = sum(1 for k in self.adapter if k in expected)
        fixable = sum(1 for new in self.renamed.values() if new in expected)
        present = set(self.adapter) | set(self.renamed.values())
        missing = sum(1 for k in expected if k not in present)
        codes: Counter[str] = Counter()
        for f in self.findings:
            codes[f.code] += len(f.checkpoint_keys)
        unexpected = codes[kinds.UNDECLARED_WEIGHTS.code] + codes[kinds.UNEXPECTED.code]
        shape = sum(
            codes[k.code] for k in (kinds.RANK_MISMATCH, kinds.LORA_FEATURE_MISMATCH, kinds.SAVED_TENSOR_MISMATCH)
        )
        ambiguous = codes[kinds.AMBIGUOUS.code]
        summary = Summary.of(
            expected=len(expected),
            checkpoint=len(self.adapter),
            matched=matched,
            fixable=fixable,
            missing=missing,
            unexpected=unexpected,
            shape_mismatches=shape,
            ambiguous=ambiguous,
            empty=1.0 if not self.adapter else 0.0,
        )
        findings = sorted(self.findings, key=lambda f: (_ORDER[f.severity.value], f.code))
        engine = self.engine
        return Report(
            check="adapter-files",
            ok=not any(f.severity.at_least(kinds.Severity.error) for f in findings),
            checkpoint=SourceRef(location=self.folder, format="peft-adapter", tensors=len(self.adapter)),
            expected=SourceRef(
                location=self.base_keys.location, format=self.base_keys.format, tensors=len(self.base_keys)
            ),
            summary=summary,
            findings=findings,
            plan=engine.plan if engine is not None else Plan(),
            unsafe_plan=engine.unsafe_plan if engine is not None else Plan(),
        )
