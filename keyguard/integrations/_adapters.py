"""What both integrations share: the keys a PEFT model accepts for one adapter, the diagnosis of an adapter file
against them, a checked load, and the comparison of every loaded tensor with the file.

Keys are compared in *saved form*: the model's key without the adapter name (``model.layers.0.q_proj.lora_A.weight``
for ``model.layers.0.q_proj.lora_A.<name>.weight``), the form adapter files use and ``set_peft_model_state_dict``
takes. The correspondence is read off the model itself, so it holds for whatever PEFT injected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from keyguard._dtypes import canonical_dtype
from keyguard._exceptions import KeyMismatchError, PlanError
from keyguard.engine._pipeline import diagnose
from keyguard.fixes._load import load_tensors
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Applicability, Drop
from keyguard.integrations._versions import installed_peft, saves_lora_only_biases
from keyguard.report import _kinds as kinds
from keyguard.report._build import EXAMPLES, make_finding
from keyguard.report._model import Example, Finding, Report, SourceRef, Summary
from keyguard.report._verdict import Check
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._resolve import read_keys

Strategy = Literal["auto", "strict"] | Plan
"""How keys are mapped before loading: the safe plan of the diagnosis (``"auto"``), no rewriting (``"strict"``), or
a ``Plan`` of your own (its rules at or above ``safe``; renames and drops only)."""

_SEVERITY_ORDER: Final = {"fatal": 0, "error": 1, "warning": 2, "info": 3}


# -- what the model accepts ------------------------------------------------------------------------------------------
def accepted_keys(model: Any, adapter_name: str) -> dict[str, str]:
    """Map every key ``model`` accepts for ``adapter_name``, in saved form, to its key in ``model.state_dict()``.

    Read off the model: the adapter's entries in every tuner layer (``lora_A``, ``lora_B``, the embedding factors,
    DoRA magnitudes, LoRA biases), the adapter's copy in each ``modules_to_save`` (or other auxiliary) wrapper through
    the wrapper's own load map, and base-layer biases when the adapter's ``bias`` setting trains them. This is the
    correspondence PEFT's ``get_peft_model_state_dict`` and ``set_peft_model_state_dict`` use.
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    live = model.state_dict(keep_vars=True)
    found: dict[str, str] = {}
    tuner_paths: list[str] = []
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, BaseTunerLayer):
            tuner_paths.append(prefix)
            for attr in module.adapter_layer_names:
                holder = getattr(module, attr, None)
                if holder is None or adapter_name not in holder:
                    continue
                entry = holder[adapter_name]
                if isinstance(entry, torch.Tensor):
                    found[f"{prefix}{attr}"] = f"{prefix}{attr}.{adapter_name}"
                    continue
                for name in entry.state_dict(keep_vars=True):
                    # DoRA's magnitude is saved without the ``.weight`` of the module that holds it now
                    dora = attr == "lora_magnitude_vector" and name == "weight"
                    found[f"{prefix}{attr}" if dora else f"{prefix}{attr}.{name}"] = (
                        f"{prefix}{attr}.{adapter_name}.{name}"
                    )
        elif isinstance(module, AuxiliaryTrainingWrapper):
            for saved, inner in module.adapter_state_dict_load_map(adapter_name).items():
                found[f"{prefix}{saved}"] = f"{prefix}{inner}"
    config = getattr(model, "peft_config", {}).get(adapter_name)
    bias = getattr(config, "bias", "none")
    if bias == "lora_only" and saves_lora_only_biases(installed_peft()):  # PEFT < 0.21 never saved them
        for prefix in tuner_paths:
            key = f"{prefix}base_layer.bias"
            found.setdefault(key, key)
    elif bias == "all":
        owned = set(found.values())
        for key in live:
            if key.endswith(".bias") and key not in owned and ".lora_" not in key and ".modules_to_save." not in key:
                found.setdefault(key, key)
    return {saved: key for saved, key in found.items() if key in live}


def expected_keyset(model: Any, saved_to_live: Mapping[str, str], label: str) -> KeySet:
    """The accepted keys with the shape and dtype of the model's tensors (meta tensors have both)."""
    live = model.state_dict(keep_vars=True)
    tensors = {
        saved: TensorInfo(tuple(int(d) for d in live[key].shape), canonical_dtype(live[key].dtype))
        for saved, key in saved_to_live.items()
    }
    return KeySet(tensors=tensors, format="module", location=label)


@dataclass(frozen=True)
class Accepted:
    """What a model accepts for one adapter: the keys it needs (saved form -> key in the model), and the base-model
    keys an adapter file may also carry (PEFT's saved embedding layers), which load when present."""

    required: dict[str, str]
    optional: dict[str, str]
    expected: KeySet  # the required keys, with shapes and dtypes
    label: str


def accepted_for(model: Any, adapter_name: str, label: str) -> Accepted:
    """The keys ``model`` accepts for ``adapter_name``: ``accepted_keys``, plus ``saved_base_keys`` as optional."""
    from keyguard.integrations._base_weights import saved_base_keys

    required = accepted_keys(model, adapter_name)
    optional = {k: v for k, v in saved_base_keys(model).items() if k not in required}
    return Accepted(required, optional, expected_keyset(model, required, label), label)


# -- diagnosis of the file -------------------------------------------------------------------------------------------
@dataclass
class Diagnosis:
    """An adapter file diagnosed against what the model accepts for it, with the plan chosen by the strategy."""

    folder: str
    report: Report  # the file as given
    plan: Plan
    mapping: dict[str, str]  # file key -> saved key, after the plan (dropped keys left out)
    after: Report  # the file after the plan
    saved_to_live: dict[str, str] = field(default_factory=dict)  # what the file loads into: required + base keys
    base_keys: list[str] = field(default_factory=list)  # saved keys of base-model tensors the file carries

    @property
    def ok(self) -> bool:
        return not self.after.errors()


def choose_plan(strategy: Strategy, report: Report) -> Plan:
    """The plan a strategy stands for (a user plan restricted to its ``safe`` rules, as ``load_state_dict`` does)."""
    if isinstance(strategy, Plan):
        return strategy.at_least(Applicability.safe)
    if strategy == "auto":
        return report.plan
    if strategy == "strict":
        return Plan()
    raise ValueError(f"strategy must be 'auto', 'strict' or a Plan, not {strategy!r}")


def plan_mapping(plan: Plan, keys: Iterable[str]) -> dict[str, str]:
    """Each file key's name after the plan; keys a ``drop`` rule names are left out.

    Raises:
        PlanError: the plan would make two keys collide, or holds a data rule (transpose, split, fuse), which
            adapter loading does not apply.
    """
    data_rules = [r.describe() for r in plan.rules if not r.renames and not isinstance(r, Drop)]
    if data_rules:
        raise PlanError(f"adapter loading applies renaming and drop rules only; refused: {'; '.join(data_rules)}")
    mapping = plan.mapping(keys)
    dropped = {k for rule in plan.rules if isinstance(rule, Drop) for k in rule.keys}
    return {key: new for key, new in mapping.items() if key not in dropped and new not in dropped}


def diagnose_adapter(
    folder: str, accepted: Accepted, strategy: Strategy, *, keys: KeySet | None = None, model: Any = None
) -> Diagnosis:
    """Diagnose an adapter folder's keys against what the model accepts, choose the plan, and diagnose the result.

    Base-model keys the file may carry (``accepted.optional``) are expected only when the file has them: a first
    diagnosis expects them all, and those its plan maps no file key onto are left out of the second (and final) one.
    ``model`` gives their shapes and dtypes.
    """
    from keyguard.integrations._base_weights import may_carry

    file_keys = keys if keys is not None else read_keys(folder)
    present: list[str] = []
    if accepted.optional and model is not None and may_carry(file_keys, accepted.optional):
        everything = expected_keyset(model, {**accepted.required, **accepted.optional}, accepted.label)
        first = diagnose(file_keys, everything)
        reached = set(plan_mapping(choose_plan(strategy, first), file_keys).values())
        present = [k for k in accepted.optional if k in reached]
    saved_to_live = {**accepted.required, **{k: accepted.optional[k] for k in present}}
    expected = expected_keyset(model, saved_to_live, accepted.label) if present else accepted.expected
    report = diagnose(file_keys, expected).model_copy(update={"check": "adapter-keys"})
    plan = choose_plan(strategy, report)
    mapping = plan_mapping(plan, file_keys)
    renamed = file_keys.evolve(tensors={new: file_keys[old] for old, new in mapping.items()})
    after = diagnose(renamed, expected).model_copy(update={"check": "adapter-keys"}) if plan.rules else report
    return Diagnosis(folder, report, plan, mapping, after, saved_to_live, present)


def refusal(what: str, diagnosis: Diagnosis) -> KeyMismatchError:
    """The error for keys that still do not fit after the plan: the rendered report of the file after the plan, and
    the cause and the way out when the keys that do not fit are base-model weights saved with the adapter."""
    from keyguard.integrations._base_weights import refusal_hint

    rules = len(diagnosis.plan.rules)
    hint = refusal_hint(diagnosis.after)
    return KeyMismatchError(
        f"{what}: the adapter's keys do not fit the model even after the plan ({rules} rule(s) applied); nothing of"
        f" it was loaded.{' ' + hint if hint else ''}\n\n{diagnosis.after.render('table')}",
        diagnosis.after,
    )


# -- loading and comparing -------------------------------------------------------------------------------------------
def file_tensors(diagnosis: Diagnosis) -> dict[str, Any]:
    """The file's tensors under their saved-form names (same tensor objects the file was read into)."""
    tensors = load_tensors(diagnosis.folder)
    return {new: tensors[old] for old, new in diagnosis.mapping.items()}


def load_into(
    model: Any,
    adapter_name: str,
    saved_to_live: Mapping[str, str],
    tensors: Mapping[str, Any],
    set_state_dict: Callable[..., Any],
    *,
    what: str,
) -> bool:
    """Load ``tensors`` (saved form, exactly the accepted keys) with PEFT's own ``set_peft_model_state_dict``.

    Tensors on the meta device are assigned (``low_cpu_mem_usage=True``: ``load_state_dict(assign=True)`` and the
    adapter moved to its base layer's device), each cast first to the dtype PEFT gave the meta tensor. Returns
    whether it assigned.

    Raises:
        KeyMismatchError: PEFT reports unexpected keys (it would have dropped them).
    """
    live = model.state_dict(keep_vars=True)
    assign = any(live[key].is_meta for key in saved_to_live.values())
    state = dict(tensors)
    if assign:
        state = {saved: t.to(dtype=live[saved_to_live[saved]].dtype) for saved, t in state.items()}
    result = set_state_dict(
        model, state, adapter_name=adapter_name, ignore_mismatched_sizes=False, low_cpu_mem_usage=assign
    )
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise KeyMismatchError(
            f"{what}: PEFT reported {len(unexpected)} unexpected key(s) after keyguard's plan, which a stock load"
            f" drops: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}",
            None,
        )
    return assign


@dataclass
class Comparison:
    """Every accepted tensor of one adapter compared with the file."""

    equal: list[str] = field(default_factory=list)  # model keys
    differ: dict[str, str] = field(default_factory=dict)  # model key -> why
    meta: list[str] = field(default_factory=list)  # model keys
    absent: list[str] = field(default_factory=list)  # model keys the file has no tensor for

    @property
    def ok(self) -> bool:
        return not (self.differ or self.meta or self.absent)


def compare(model: Any, saved_to_live: Mapping[str, str], tensors: Mapping[str, Any]) -> Comparison:
    """Compare each accepted tensor of the model with the file's (cast to the model's dtype, on its device)."""
    import torch

    live = model.state_dict(keep_vars=True)
    out = Comparison()
    for saved, key in saved_to_live.items():
        current = live[key]
        if current.is_meta:
            out.meta.append(key)
            continue
        stored = tensors.get(saved)
        if stored is None:
            out.absent.append(key)
            continue
        if tuple(current.shape) != tuple(stored.shape):
            out.differ[key] = f"shape {list(current.shape)}, file {list(stored.shape)}"
            continue
        expected = stored.to(device=current.device, dtype=current.dtype)
        with torch.no_grad():
            if torch.equal(current.detach(), expected):
                out.equal.append(key)
                continue
            if not current.detach().any():
                out.differ[key] = "all zeros: still at its initialisation"
            else:
                gap = (current.detach().double() - expected.double()).abs().max().item()
                out.differ[key] = f"differs from the file (largest difference {gap:.3g})"
    return out


def comparison_findings(
    comparison: Comparison, *, adapter: str, where: str, saved_of: Mapping[str, str], ctx: Mapping[str, Any]
) -> list[Finding]:
    """KG561/KG562 for the tensors that did not arrive; KG563 when every one did. ``saved_of``: model key -> saved
    key, for every tensor of the adapter."""
    out: list[Finding] = []
    if comparison.meta:
        out.append(
            finding(
                kinds.LIVE_ADAPTER_ON_META,
                f"{where}: {len(comparison.meta):,} tensor(s) of adapter {adapter!r} are on the meta device (no data)",
                expected_keys=comparison.meta,
                examples=[Example(expected=k, detail="meta") for k in comparison.meta],
                ctx={**ctx, "count": len(comparison.meta)},
            )
        )
    troubled = {**comparison.differ, **dict.fromkeys(comparison.absent, "the file holds no tensor for it")}
    if troubled:
        out.append(
            finding(
                kinds.LIVE_ADAPTER_TENSOR_DIFFERS,
                f"{where}: {len(troubled):,} of {len(saved_of):,} tensor(s) of adapter {adapter!r} differ from the"
                " file: the adapter did not arrive there",
                expected_keys=list(troubled),
                examples=[Example(expected=k, detail=why) for k, why in troubled.items()],
                ctx={**ctx, "count": len(troubled), "total": len(saved_of)},
            )
        )
    if not out:
        out.append(
            finding(
                kinds.LIVE_ADAPTER_VERIFIED,
                f"{where}: all {len(comparison.equal):,} tensor(s) of adapter {adapter!r} equal the file",
                expected_keys=comparison.equal,
                examples=[],
                ctx={**ctx, "count": len(comparison.equal)},
            )
        )
    return out


def unresolved_finding(diagnosis: Diagnosis, *, adapter: str, where: str, ctx: Mapping[str, Any]) -> Finding:
    """KG560: what still does not fit after the plan, naming the diagnosis findings."""
    errors = diagnosis.after.errors()
    listed = "; ".join(f"{f.code} {f.kind}: {f.message}" for f in errors[:4])
    more = f"; +{len(errors) - 4} more" if len(errors) > 4 else ""
    keys = [k for f in errors for k in f.checkpoint_keys]
    expected = [k for f in errors for k in f.expected_keys]
    return finding(
        kinds.LIVE_ADAPTER_KEYS_UNRESOLVED,
        f"{where}: the keys of adapter {adapter!r} do not fit the model even after the plan"
        f" ({len(diagnosis.plan.rules)} rule(s)): {listed}{more}",
        checkpoint_keys=keys,
        expected_keys=expected,
        examples=[ex for f in errors for ex in f.examples][:EXAMPLES],
        hint="`keyguard diagnose` on the adapter folder shows the same findings; pass a Plan as strategy= to map"
        " keys the safe plan cannot",
        ctx={**ctx, "findings": [{"code": f.code, "kind": f.kind, "message": f.message} for f in errors]},
    )


# -- findings and reports --------------------------------------------------------------------------------------------
finding = make_finding


def make_report(
    findings: Iterable[Finding], *, check: Check, checkpoint: SourceRef, expected: SourceRef, summary: Summary
) -> Report:
    """A report of ``check`` over ``findings`` (most severe first, stable within a severity); ``ok`` when none is an
    error."""
    ordered = sorted(findings, key=lambda f: _SEVERITY_ORDER[f.severity.value])
    return Report(
        check=check,
        ok=not any(f.severity.at_least(kinds.Severity.error) for f in ordered),
        checkpoint=checkpoint,
        expected=expected,
        summary=summary,
        findings=ordered,
    )


def summary_of(
    *, expected: int, checkpoint: int, matched: int, fixable: int = 0, reports: Sequence[Report] = ()
) -> Summary:
    """Counts for a report built here; missing/unexpected/shape/ambiguous come from the diagnoses in ``reports``."""
    return Summary.of(
        expected=expected,
        checkpoint=checkpoint,
        matched=matched,
        fixable=fixable,
        missing=sum(r.summary.missing for r in reports),
        unexpected=sum(r.summary.unexpected for r in reports),
        shape_mismatches=sum(r.summary.shape_mismatches for r in reports),
        ambiguous=sum(r.summary.ambiguous for r in reports),
    )


def describe_plan(plan: Plan) -> str:
    """``"no rewriting"`` or the plan's rules, for messages."""
    return "; ".join(rule.describe() for rule in plan.rules) or "no rewriting"
