"""The diagnosis of a checkpoint against a transformers model, the way ``from_pretrained`` loads it.

The checkpoint's keys go through the replayed loader (``_hf_loader.simulate``). What the loader handles itself
becomes informational KG70x findings; what is left — the loader's view of the checkpoint against the model's keys,
minus the weights it ties and the keys its patterns allow — goes to ``keyguard.diagnose``, whose findings explain
what will really fail or be silently skipped. KG708 / KG709 sum up what ``from_pretrained`` would do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from keyguard.integrations._hf_loader import LoaderView
from keyguard.report import _kinds as kinds
from keyguard.report._build import make_finding
from keyguard.report._model import Example, Finding, Report, SourceRef
from keyguard.sources._keyset import KeySet, TensorInfo

_ORDER = {"fatal": 0, "error": 1, "warning": 2, "info": 3}


def loader_keysets(view: LoaderView, checkpoint: KeySet, model_name: str) -> tuple[KeySet, KeySet]:
    """The loader's view of the checkpoint and the model's keys, both without what the loader settles itself.

    Dtypes are left out of the expected side: ``from_pretrained`` casts every tensor to the model's dtype.
    """
    dropped = set(view.ignored_unexpected)
    ours = {k: v for k, v in view.tensors.items() if k not in dropped}
    settled = set(view.tied) | set(view.ignored_missing)
    theirs = {k: TensorInfo(v.shape, None) for k, v in view.expected.items() if k not in settled}
    loader_side = checkpoint.evolve(tensors=ours, location=f"{checkpoint.location} (as from_pretrained reads it)")
    model_side = KeySet(tensors=theirs, format="module", location=f"<{model_name} on meta>", architecture=model_name)
    return loader_side, model_side


def loader_findings(view: LoaderView) -> list[Finding]:
    """KG701..KG707 for what the loader does with the checkpoint's keys."""
    out: list[Finding] = []
    by_kind: dict[str, list[Any]] = {}
    for step in view.steps:
        by_kind.setdefault(step.kind, []).append(step)
    for kind, code in (("user_mapping", kinds.USER_KEY_MAPPING), ("rename", kinds.LOADER_RENAMED)):
        steps = by_kind.get(kind, [])
        if not steps:
            continue
        keys = list(dict.fromkeys(k for s in steps for k in s.sources))
        listed = ", ".join(f"`{s.label}` ({len(s.sources)})" for s in steps)
        who = "your key_mapping" if kind == "user_mapping" else "transformers' loader"
        out.append(
            make_finding(
                code,
                f"{len(keys):,} key(s) renamed by {who}: {listed}",
                checkpoint_keys=keys,
                examples=_examples(steps),
                ctx={"renames": [{"rename": s.label, "count": len(s.sources)} for s in steps]},
            )
        )
    prefix_steps = by_kind.get("base_prefix", [])
    if prefix_steps:
        keys = list(dict.fromkeys(k for s in prefix_steps for k in s.sources))
        actions = " and ".join(f"{s.label} ({len(s.sources)})" for s in prefix_steps)
        out.append(
            make_finding(
                kinds.LOADER_BASE_PREFIX,
                f"{len(keys):,} checkpoint key(s) match the model once the loader adjusts the base-model prefix"
                f" `{view.base_model_prefix}.`: {actions}",
                checkpoint_keys=keys,
                examples=_examples(prefix_steps),
                ctx={"base_model_prefix": view.base_model_prefix},
            )
        )
    for step in by_kind.get("convert", []):
        failed = sorted(t for t in step.targets if t in view.conversion_errors)
        ok = [t for t in step.targets if t not in view.conversion_errors]
        if ok:
            out.append(
                make_finding(
                    kinds.LOADER_CONVERTED,
                    f"{len(step.sources):,} key(s) converted by `{step.label}` into {len(ok):,} tensor(s)",
                    checkpoint_keys=[s for s in step.sources if any(s in view.origin[t] for t in ok)],
                    examples=[
                        Example(checkpoint=view.origin[t][0], expected=t, detail=_shape(view.tensors.get(t)))
                        for t in ok
                    ],
                    ctx={"conversion": step.label, "targets": len(ok)},
                )
            )
        if failed:
            out.append(
                make_finding(
                    kinds.LOADER_CONVERSION_FAILED,
                    f"`{step.label}` fails on {len(failed):,} tensor(s): {view.conversion_errors[failed[0]]}",
                    checkpoint_keys=[s for t in failed for s in view.origin.get(t, [])],
                    examples=[Example(expected=t, detail=view.conversion_errors[t]) for t in failed],
                    ctx={"conversion": step.label, "errors": {t: view.conversion_errors[t] for t in failed}},
                )
            )
    if view.tied:
        out.append(
            make_finding(
                kinds.LOADER_TIED,
                f"{len(view.tied):,} missing weight(s) tied by the loader: "
                + ", ".join(f"`{t}` <- `{s}`" for t, s in list(view.tied.items())[:3]),
                expected_keys=list(view.tied),
                examples=[Example(expected=t, detail=f"tied to {s}") for t, s in view.tied.items()],
                ctx={"tied": dict(view.tied)},
            )
        )
    if view.ignored_unexpected:
        originals = [o for k in view.ignored_unexpected for o in view.origin.get(k, [k])]
        out.append(
            make_finding(
                kinds.LOADER_IGNORED_UNEXPECTED,
                f"{len(originals):,} checkpoint key(s) dropped by the loader by design (the model declares them"
                " obsolete)",
                checkpoint_keys=originals,
            )
        )
    if view.ignored_missing:
        out.append(
            make_finding(
                kinds.LOADER_IGNORED_MISSING,
                f"{len(view.ignored_missing):,} model key(s) absent from the checkpoint are allowed missing by the"
                " model (initialised without a warning)",
                expected_keys=view.ignored_missing,
            )
        )
    return out


def outcome_finding(view: LoaderView, ignore: Sequence[str] = ()) -> Finding | None:
    """What ``from_pretrained`` would do with the checkpoint as it stands: KG709 when it would raise (a tensor whose
    name matches with another shape, a failed conversion), KG708 when it would load with weights left initialised."""
    shapes = sorted(
        k
        for k, info in view.tensors.items()
        if k in view.expected and info.shape is not None and info.shape != view.expected[k].shape
    )
    conversions = len(view.conversion_errors)
    if shapes or conversions:
        reasons = []
        if shapes:
            reasons.append(f"{len(shapes):,} shape mismatch(es), e.g. `{shapes[0]}`")
        if conversions:
            reasons.append(f"{conversions:,} failed conversion(s)")
        return make_finding(
            kinds.FROM_PRETRAINED_RAISES,
            "from_pretrained would raise RuntimeError: " + " and ".join(reasons),
            ctx={"shape_mismatches": len(shapes), "conversion_errors": conversions},
            count=0,
        )
    loaded = set(view.tensors) - set(view.ignored_unexpected)
    settled = set(view.tied) | set(view.ignored_missing)
    patterns = [re.compile(p) for p in ignore]

    def allowed(key: str) -> bool:
        return any(p.search(key) for p in patterns)

    initialised = sorted(k for k in view.expected if k not in loaded and k not in settled and not allowed(k))
    dropped = sorted(k for k in loaded if k not in view.expected and not allowed(k))
    if not initialised and not dropped:
        return None
    total = len(view.expected) - len(settled)
    return make_finding(
        kinds.FROM_PRETRAINED_SILENT,
        f"from_pretrained would not fail: it would newly initialise {len(initialised):,} of {total:,} weight(s)"
        f" and drop {len(dropped):,} checkpoint tensor(s), with only a logged warning",
        hint="keyguard.integrations.transformers.from_pretrained applies the safe plan (key_mapping) and verifies"
        " every weight, or raises",
        ctx={"initialised": len(initialised), "dropped": len(dropped), "weights": total},
        count=0,
    )


def merge(view: LoaderView, engine: Report, checkpoint: KeySet, model_name: str, ignore: Sequence[str] = ()) -> Report:
    """One report: the loader's findings, the engine's on what is left, and the outcome."""
    findings = loader_findings(view)
    findings += _in_checkpoint_terms(view, engine.findings)
    outcome = outcome_finding(view, ignore)
    if outcome is not None:
        findings.append(outcome)
    findings.sort(key=lambda f: _ORDER[f.severity.value])
    return engine.model_copy(
        update={
            "ok": not any(f.severity.at_least(kinds.Severity.error) for f in findings),
            "checkpoint": SourceRef(location=checkpoint.location, format=checkpoint.format, tensors=len(checkpoint)),
            "expected": SourceRef(location=model_name, format="transformers", tensors=len(view.expected)),
            "findings": findings,
        }
    )


def _in_checkpoint_terms(view: LoaderView, findings: list[Finding]) -> list[Finding]:
    """The engine saw loader keys; a key the loader renamed is named by its checkpoint key in the examples too."""
    renamed = {k: v[0] for k, v in view.origin.items() if len(v) == 1 and v[0] != k}
    if not renamed:
        return findings
    out = []
    for finding in findings:
        examples = [
            ex.model_copy(
                update={"detail": f"{ex.detail + '; ' if ex.detail else ''}in the file: {renamed[ex.checkpoint]}"}
            )
            if ex.checkpoint in renamed
            else ex
            for ex in finding.examples
        ]
        out.append(finding.model_copy(update={"examples": examples}))
    return out


def _examples(steps: list[Any]) -> list[Example]:
    return [Example(checkpoint=s.sources[0], expected=s.targets[0], detail=s.label) for s in steps if s.sources]


def _shape(info: TensorInfo | None) -> str | None:
    return None if info is None or info.shape is None else str(list(info.shape))
