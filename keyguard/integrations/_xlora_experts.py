"""X-LoRA experts, one at a time: their names, folders and heads, the X-LoRA model around the LoRA model, and the
check that an expert's tensors arrived (with the refusals that name what went wrong)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

from keyguard._exceptions import KeyMismatchError, UnsupportedModelError
from keyguard.fixes._plan import Plan
from keyguard.integrations._adapters import (
    Diagnosis,
    Strategy,
    compare,
    comparison_findings,
    finding,
    make_report,
    summary_of,
)
from keyguard.integrations._versions import check_set_adapter
from keyguard.report import _kinds as kinds
from keyguard.report._model import Finding, Report, SourceRef
from keyguard.report._verdict import Check
from keyguard.sources._keyset import KeySet
from keyguard.sources._resolve import read_keys

INTEGRATION: Final = "keyguard.integrations.xlora"
PEFT_PREFIX: Final = "base_model.model."
STOCK: Final = "stock PEFT"


def validate(strategy: Strategy) -> None:
    if not isinstance(strategy, Plan) and strategy not in ("auto", "strict"):
        raise ValueError(f"strategy must be 'auto', 'strict' or a Plan, not {strategy!r}")


def raise_unless_arrived(
    lora_model: Any,
    name: str,
    what: str,
    location: str,
    saved_to_live: Mapping[str, str],
    tensors: Mapping[str, Any],
    diagnosis: Diagnosis | None = None,
) -> None:
    comparison = compare(lora_model, saved_to_live, tensors)
    if comparison.ok:
        return
    live_to_saved = {live: saved for saved, live in saved_to_live.items()}
    findings = comparison_findings(
        comparison, adapter=name, where=what, saved_of=live_to_saved, ctx={"adapter": name, "path": location}
    )
    report = expert_report(findings, location, len(tensors), len(saved_to_live), len(comparison.equal), diagnosis)
    raise KeyMismatchError(f"{what}: the load did not take:\n\n{report.render('table')}", report)


def expert_report(
    findings: Sequence[Finding],
    location: str,
    checkpoint: int,
    expected: int,
    matched: int,
    diagnosis: Diagnosis | None = None,
    *,
    check: Check = "adapter-verify",
) -> Report:
    return make_report(
        findings,
        check=check,
        checkpoint=SourceRef(location=location, format="peft-adapter", tensors=checkpoint),
        expected=SourceRef(location="the X-LoRA LoRA model", format="module", tensors=expected),
        summary=summary_of(
            expected=expected, checkpoint=checkpoint, matched=matched, reports=[diagnosis.after] if diagnosis else []
        ),
    )


def refuse(kind: kinds.FindingKind, message: str, location: str, ctx: Mapping[str, Any]) -> KeyMismatchError:
    report = expert_report([finding(kind, message, ctx=ctx)], location, 0, 0, 0, check="refusal")
    return KeyMismatchError(f"refused ({kind.code} {kind.kind}):\n\n{report.render('table')}", report)


# -- experts: names, files, heads ------------------------------------------------------------------------------------
def xlora_config_of(lora_model: Any) -> tuple[str, Any] | None:
    """The X-LoRA model's own entry in the LoRA model's configs (a copy of the ``XLoraConfig``), with its name."""
    from peft.utils.peft_types import PeftType

    for name, config in lora_model.peft_config.items():
        if getattr(config, "peft_type", None) == PeftType.XLORA:
            return str(name), config
    return None


def order_finding(names: Sequence[str]) -> list[Finding]:
    """KG622 when X-LoRA experts in this order are not in the order PEFT saves them (sorted by name)."""
    names = [str(n) for n in names]
    if names == sorted(names):
        return []
    return [
        finding(
            kinds.XLORA_ORDER_NOT_SAVED,
            f"the experts are built in the order {', '.join(map(repr, names))}; PEFT saves the X-LoRA config sorted"
            f" by name ({', '.join(map(repr, sorted(names)))}), so a saved copy reloads with experts on other"
            " classifier outputs than the ones they are built (and trained) with",
            hint="build with keyguard.integrations.xlora.get_peft_model, which orders the experts as PEFT saves them",
            ctx={"adapter": None, "order": names, "saved_order": sorted(names)},
        )
    ]


def built_order(lora_model: Any) -> list[str]:
    """The experts' names in the order of the X-LoRA model's own config (the order its classifier weighs them)."""
    found = xlora_config_of(lora_model)
    return [str(n) for n in (found[1].adapters or {})] if found is not None else []


def expert_name(lora_model: Any, adapter_name: str, model_id: str) -> str:
    """The user's name for the expert PEFT passes as ``str(i)``: the i-th key of ``XLoraConfig.adapters``."""
    found = xlora_config_of(lora_model)
    if found is None or not str(adapter_name).isdigit():
        return adapter_name
    items = list(found[1].adapters.items())
    index = int(adapter_name)
    if index >= len(items) or items[index][1] != model_id:
        return adapter_name
    return str(items[index][0])


def check_name(lora_model: Any, name: str, folder: str, what: str) -> None:
    found = xlora_config_of(lora_model)
    own = found[0] if found is not None else None
    if name == own:
        raise refuse(
            kinds.XLORA_ADAPTER_NAMES,
            f"{what}: the expert's name is also the X-LoRA model's own adapter name ({own!r}); give the expert"
            " another name in XLoraConfig.adapters, or the X-LoRA model another adapter_name",
            folder,
            {"adapter": name, "path": folder, "taken_by": "x-lora"},
        )


def check_heads(lora_model: Any, name: str, folder: str, what: str) -> None:
    """Refuse now what PEFT refuses once every expert is loaded: two experts in one ``modules_to_save`` wrapper."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    found = xlora_config_of(lora_model)
    experts = [n for n in (found[1].adapters if found else [name]) if n in lora_model.peft_config] or [name]
    for path, module in lora_model.named_modules():
        if not isinstance(module, AuxiliaryTrainingWrapper):
            continue
        try:
            check_set_adapter(module, experts)
        except ValueError:
            holders = [n for n in experts if n in getattr(module, "modules_to_save", {})] or experts
            raise refuse(
                kinds.XLORA_MULTIPLE_SEQ_CLS,
                f"{what}: experts {', '.join(map(repr, holders))} each train their own copy of"
                f" {path.removeprefix('model.')!r} (modules_to_save); PEFT activates one such copy at a time and X-LoRA"
                f' activates every expert, so PEFT would refuse the model once built ("Only one adapter can be set at'
                ' a time for ModulesToSaveWrapper"). A PEFT limitation: keyguard reports it and does not work around'
                " it.",
                folder,
                {"adapter": name, "path": folder, "module": path, "experts": holders},
            ) from None


def read_lora_keys(folder: str, name: str, what: str) -> KeySet:
    keys = read_keys(folder)
    config = keys.adapter
    peft_type = getattr(config, "peft_type", None)
    if keys.format != "peft-adapter" or peft_type not in (None, "LORA"):
        raise refuse(
            kinds.XLORA_ADAPTER_UNREADABLE,
            f"{what}: not a LoRA adapter folder ({keys.format}, peft_type {peft_type!r}); X-LoRA mixes LoRA experts",
            folder,
            {"adapter": name, "path": folder, "peft_type": peft_type},
        )
    return keys


def adapter_folder(model_id: str, subfolder: str | None, hub_kwargs: Mapping[str, Any]) -> str:
    """A local folder holding the adapter: the path itself, or its files fetched into the Hugging Face cache."""
    path = os.path.join(model_id, subfolder) if subfolder else model_id
    if os.path.isdir(path):
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    options = dict(hub_kwargs)
    token = options.pop("use_auth_token", None)
    if token is not None:
        options.setdefault("token", token)
    config: str = hf_hub_download(model_id, "adapter_config.json", subfolder=subfolder, **options)
    for weights in ("adapter_model.safetensors", "adapter_model.bin"):
        try:
            hf_hub_download(model_id, weights, subfolder=subfolder, **options)
            break
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
    return os.path.dirname(config)


# -- the X-LoRA model around a LoRA model ----------------------------------------------------------------------------
def xlora_model_of(lora_model: Any) -> Any:
    """The ``XLoraModel`` built around ``lora_model``: X-LoRA replaced each LoRA layer's ``forward`` with a method
    of an X-LoRA layer that holds the model. ``None`` before that happened."""
    from peft.tuners.lora import LoraLayer

    for module in lora_model.modules():
        if isinstance(module, LoraLayer):
            owner = getattr(module.__dict__.get("forward"), "__self__", None)
            model = getattr(owner, "model", None)
            if model is not None and hasattr(model, "internal_xlora_classifier"):
                return model
    return None


def materialise_classifier(lora_model: Any) -> None:
    """Give a meta X-LoRA classifier real tensors, initialised as ``nn.Linear`` does (as without
    ``low_cpu_mem_usage``), on the device of the experts."""
    xlora = xlora_model_of(lora_model)
    classifier = getattr(xlora, "internal_xlora_classifier", None)
    if classifier is None or not any(p.is_meta for p in classifier.parameters()):
        return
    device = next((t.device for t in lora_model.parameters() if not t.is_meta), "cpu")
    classifier.to_empty(device=device)
    for layer in classifier.modules():
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()


def models_of(xlora_model: Any) -> tuple[Any, Any]:
    """``(XLoraModel, its LoRA model)`` from a ``PeftModel`` or an ``XLoraModel``."""
    from peft.tuners.xlora.model import XLoraModel

    candidate = xlora_model
    for _ in range(3):
        if isinstance(candidate, XLoraModel):
            return candidate, candidate.lora_model
        candidate = getattr(candidate, "base_model", None)
    raise UnsupportedModelError(
        f"not an X-LoRA model: a {type(xlora_model).__name__} with no XLoraModel inside (build one with"
        " keyguard.integrations.xlora.get_peft_model; for a LoRA adapter use keyguard.integrations.peft.verify_adapter)"
    )


def experts_of(xlora_config: Any) -> list[tuple[str, str]]:
    """``(name, folder)`` of every expert, subfolders joined as PEFT does for Hub X-LoRA models."""
    items = [(str(n), str(p)) for n, p in (xlora_config.adapters or {}).items()]
    subfolders = getattr(xlora_config, "_subfolders", None)
    if subfolders:
        return [(n, os.path.join(p, s)) for (n, p), s in zip(items, subfolders)]
    return items
