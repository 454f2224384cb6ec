"""``verify``: an X-LoRA model that is already built, checked against its experts' files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyguard._exceptions import SourceError
from keyguard.integrations._adapters import (
    accepted_for,
    compare,
    comparison_findings,
    diagnose_adapter,
    file_tensors,
    finding,
    make_report,
    summary_of,
    unresolved_finding,
)
from keyguard.integrations._versions import check_peft_version, installed_peft
from keyguard.integrations._xlora_experts import (
    INTEGRATION,
    built_order,
    experts_of,
    models_of,
    order_finding,
    xlora_config_of,
)
from keyguard.report import _kinds as kinds
from keyguard.report._model import Example, Finding, Report, SourceRef
from keyguard.sources._resolve import read_keys


def verify(xlora_model: Any, xlora_config: Any) -> Report:
    """Check an X-LoRA model that is already built against its experts' files.

    For each expert of ``xlora_config.adapters``: that it is registered under its name (not PEFT's ``"0"``, ``"1"``,
    ...), that the file's keys fit what the LoRA model accepts for it (after the safe plan), that every tensor the
    model holds for it equals the file's, and that none is on the meta device; and that the X-LoRA classifier is not
    on the meta device.

    And that the experts are in the config's order: the X-LoRA classifier gives output k to the model's k-th
    expert, and a model saved and reloaded with ``PeftModel.from_pretrained`` comes back with its experts sorted by
    name (KG621 when the orders differ; KG622 when a saved copy of the model would not keep its order).

    Returns:
        A ``Report``: KG554, KG557, KG560, KG561, KG562 and KG621 findings for problems, KG622 as a warning, a KG563
        finding per verified expert.
    """
    check_peft_version(installed_peft(), INTEGRATION)
    xlora, lora_model = models_of(xlora_model)
    own = (xlora_config_of(lora_model) or ("", None))[0]
    findings: list[Finding] = [
        *_order_findings(xlora, experts_of(xlora_config)),
        *order_finding(built_order(lora_model)),
    ]
    diagnoses: list[Report] = []
    totals = [0, 0, 0]  # expected, checkpoint, matched
    for index, (name, folder) in enumerate(experts_of(xlora_config)):
        ctx: dict[str, Any] = {"adapter": name, "path": folder}
        where = f"X-LoRA expert {name!r} ({folder})"
        registered = _registered_name(lora_model, name, index, own)
        if registered != name:
            findings.append(_registration_finding(name, index, registered, where, ctx))
        if registered is None:
            continue
        try:
            keys = read_keys(folder)
        except SourceError as exc:
            findings.append(finding(kinds.XLORA_ADAPTER_UNREADABLE, f"{where}: {exc}", ctx=ctx))
            continue
        accepted = accepted_for(lora_model, registered, f"{where}: the keys the LoRA model accepts")
        diagnosis = diagnose_adapter(folder, accepted, "auto", keys=keys, model=lora_model)
        saved_to_live = diagnosis.saved_to_live
        diagnoses.append(diagnosis.after)
        if not diagnosis.ok:
            findings.append(unresolved_finding(diagnosis, adapter=name, where=where, ctx=ctx))
        comparison = compare(lora_model, saved_to_live, file_tensors(diagnosis))
        live_to_saved = {live: saved for saved, live in saved_to_live.items()}
        findings += comparison_findings(comparison, adapter=name, where=where, saved_of=live_to_saved, ctx=ctx)
        totals[0] += len(saved_to_live)
        totals[1] += len(keys)
        totals[2] += len(comparison.equal)
    classifier = getattr(xlora, "internal_xlora_classifier", None)
    meta = (
        [f"internal_xlora_classifier.{n}" for n, p in classifier.named_parameters() if p.is_meta] if classifier else []
    )
    if meta:
        findings.append(
            finding(
                kinds.LIVE_ADAPTER_ON_META,
                f"the X-LoRA classifier has {len(meta)} tensor(s) on the meta device (built with"
                " low_cpu_mem_usage=True and never loaded): the forward pass fails",
                expected_keys=meta,
                examples=[Example(expected=k, detail="meta") for k in meta],
                ctx={"adapter": None, "count": len(meta)},
            )
        )
    return make_report(
        findings,
        check="xlora-verify",
        checkpoint=SourceRef(location=locations(xlora_config), format="peft-adapter", tensors=totals[1]),
        expected=SourceRef(location=f"{type(xlora_model).__name__} (X-LoRA)", format="module", tensors=totals[0]),
        summary=summary_of(expected=totals[0], checkpoint=totals[1], matched=totals[2], reports=diagnoses),
    )


def _order_findings(xlora: Any, experts: list[tuple[str, str]]) -> list[Finding]:
    """KG621 when the model's experts (in the order its classifier weighs them) are the config's in another order."""
    built = [str(n) for n in (getattr(getattr(xlora, "xlora_config", None), "adapters", None) or {})]
    given = [name for name, _ in experts]
    if built == given or sorted(built) != sorted(given):
        return []
    moved = [(k, b, g) for k, (b, g) in enumerate(zip(built, given)) if b != g]
    return [
        finding(
            kinds.XLORA_EXPERT_ORDER,
            f"the model's experts are {', '.join(map(repr, built))}, the config's {', '.join(map(repr, given))}: the"
            f" X-LoRA classifier gives output k to the model's k-th expert, so {len(moved)} expert(s) receive the"
            " weight meant for another one (a model saved and reloaded with PeftModel.from_pretrained comes back"
            " sorted by name)",
            examples=[Example(expected=g, detail=f"classifier output {k} goes to {b!r}") for k, b, g in moved],
            hint="rebuild the model from the config in the order it was trained with; keyguard's"
            " xlora.get_peft_model builds experts in the order PEFT saves them, so that reloading keeps it",
            ctx={"adapter": None, "model_order": built, "config_order": given},
            count=len(moved),
        )
    ]


def _registered_name(lora_model: Any, name: str, index: int, own: str) -> str | None:
    """The name the expert is registered under: its own (keyguard), ``str(index)`` (stock PEFT), or none."""
    from peft.utils.peft_types import PeftType

    def is_lora(candidate: str) -> bool:
        config = lora_model.peft_config.get(candidate)
        return candidate != own and getattr(config, "peft_type", None) == PeftType.LORA

    if is_lora(name):
        return name
    return str(index) if is_lora(str(index)) else None


def _registration_finding(name: str, index: int, registered: str | None, where: str, ctx: Mapping[str, Any]) -> Finding:
    if registered is None:
        message = f"{where}: the LoRA model holds no adapter for this expert, neither as {name!r} nor as {str(index)!r}"
    else:
        message = (
            f"{where}: registered as {registered!r} (stock PEFT's numbering), while X-LoRA activates the experts by"
            f" the names in XLoraConfig.adapters: the forward pass fails on {name!r}, or uses another file's expert"
        )
    return finding(
        kinds.XLORA_ADAPTER_NAMES,
        message,
        hint="build the model with keyguard.integrations.xlora.get_peft_model, which registers experts by name",
        ctx={**ctx, "registered": registered},
    )


def locations(xlora_config: Any) -> str:
    return ", ".join(folder for _, folder in experts_of(xlora_config)) or "<no experts>"
