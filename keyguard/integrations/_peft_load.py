"""A LoRA adapter loaded into a ``PeftModel`` through a diagnosis, and the check that an adapter really arrived.

PEFT loads adapters with ``load_state_dict(strict=False)``: an adapter whose module paths do not match the model
"loads" with at most a warning and changes nothing. ``load_adapter`` maps the file's keys onto the keys the model
accepts for the adapter first, refuses what still does not fit, and compares every tensor afterwards;
``verify_adapter`` does the comparison for an adapter loaded any other way.
"""

from __future__ import annotations

import os
from typing import Any, Final

from keyguard._exceptions import KeyMismatchError
from keyguard.integrations._adapters import (
    Strategy,
    accepted_keys,
    compare,
    comparison_findings,
    diagnose_adapter,
    expected_keyset,
    file_tensors,
    load_into,
    make_report,
    refusal,
    summary_of,
    unresolved_finding,
)
from keyguard.integrations._versions import check_peft_version, installed_peft
from keyguard.report._model import Report, SourceRef
from keyguard.sources._keyset import KeySet
from keyguard.sources._resolve import read_keys

_INTEGRATION: Final = "keyguard.integrations.peft"


def load_adapter(
    peft_model: Any,
    adapter_dir: str | os.PathLike[str],
    adapter_name: str = "default",
    *,
    strategy: Strategy = "auto",
) -> Report:
    """Load a LoRA adapter folder into ``peft_model`` under ``adapter_name``: diagnosed, mapped, loaded, verified.

    A new name is added with the folder's ``adapter_config.json`` (inactive and frozen, as ``PeftModel.load_adapter``
    leaves it); an existing LoRA adapter of that name is overwritten. The file's keys are diagnosed against the keys
    the model accepts for the adapter, the strategy's plan applied, the tensors loaded with PEFT's own
    ``set_peft_model_state_dict`` (assigned when they are on the meta device), and every one compared with the file.

    Args:
        peft_model: a ``peft.PeftModel`` (or a model with LoRA layers injected and a ``peft_config``).
        adapter_dir: a PEFT adapter folder (``adapter_config.json`` and ``adapter_model.safetensors`` / ``.bin``).
        adapter_name: the name to load it under.
        strategy: ``"auto"`` (the safe plan), ``"strict"`` (no rewriting) or a ``Plan``.

    Returns:
        The diagnosis of the file as given (``report.plan``: the safe plan).

    Raises:
        KeyMismatchError: the keys do not fit even after the plan (nothing is loaded), or a tensor did not arrive;
            the message is the rendered report.
        UnsupportedVersionError: the installed PEFT is not 0.21.x.
        ValueError: the folder, or the model's adapter of that name, is not LoRA.
    """
    from peft.peft_model import set_peft_model_state_dict
    from peft.tuners.lora.config import LoraConfig

    check_peft_version(installed_peft(), _INTEGRATION)
    folder = os.fspath(adapter_dir)
    keys = _lora_keys(folder)
    added = adapter_name not in peft_model.peft_config
    if added:
        config = LoraConfig.from_pretrained(folder)
        config.inference_mode = True
        peft_model.add_adapter(adapter_name, config)
    try:
        return _load_checked(peft_model, folder, adapter_name, keys, strategy, set_peft_model_state_dict)
    except Exception:
        if added:  # leave no half-made adapter behind
            peft_model.delete_adapter(adapter_name)
        raise


def _load_checked(
    peft_model: Any, folder: str, adapter_name: str, keys: KeySet, strategy: Strategy, set_state_dict: Any
) -> Report:
    _require_lora(peft_model, adapter_name)
    what = f"adapter {adapter_name!r} ({folder})"
    saved_to_live = accepted_keys(peft_model, adapter_name)
    expected = expected_keyset(peft_model, saved_to_live, f"{type(peft_model).__name__}: the keys of {what}")
    diagnosis = diagnose_adapter(folder, expected, strategy, keys=keys)
    if not diagnosis.ok:
        raise refusal(what, diagnosis)
    tensors = file_tensors(diagnosis)
    load_into(peft_model, adapter_name, saved_to_live, tensors, set_state_dict, what=what)
    comparison = compare(peft_model, saved_to_live, tensors)
    if not comparison.ok:
        live_to_saved = {live: saved for saved, live in saved_to_live.items()}
        findings = comparison_findings(
            comparison, adapter=adapter_name, where=what, saved_of=live_to_saved, ctx={"adapter": adapter_name}
        )
        report = make_report(
            findings,
            check="adapter-verify",
            checkpoint=SourceRef(location=folder, format="peft-adapter", tensors=len(keys)),
            expected=SourceRef(location=type(peft_model).__name__, format="module", tensors=len(saved_to_live)),
            summary=summary_of(expected=len(saved_to_live), checkpoint=len(keys), matched=len(comparison.equal)),
        )
        raise KeyMismatchError(f"{what}: the load did not take:\n\n{report.render('table')}", report)
    return diagnosis.report


def verify_adapter(peft_model: Any, adapter_dir: str | os.PathLike[str], adapter_name: str = "default") -> Report:
    """Check an adapter loaded into ``peft_model`` by any means against its folder.

    Diagnoses the file's keys against the keys the model accepts for the adapter (with the safe plan), then compares
    every tensor the model holds for the adapter with the file's: an adapter whose module paths do not match the model
    "loads" with PEFT and leaves its tensors at their initialisation, which shows here.

    Returns:
        A ``Report``: KG560 when keys do not fit even after the safe plan, KG561 for tensors that differ from the
        file, KG562 for tensors on the meta device, KG563 (info) when every tensor arrived.

    Raises:
        ValueError: the model has no LoRA adapter of that name.
    """
    check_peft_version(installed_peft(), _INTEGRATION)
    folder = os.fspath(adapter_dir)
    _require_lora(peft_model, adapter_name)
    keys = read_keys(folder)
    where = f"adapter {adapter_name!r} ({folder})"
    ctx = {"adapter": adapter_name, "path": folder}
    saved_to_live = accepted_keys(peft_model, adapter_name)
    expected = expected_keyset(peft_model, saved_to_live, f"{type(peft_model).__name__}: the keys of {where}")
    diagnosis = diagnose_adapter(folder, expected, "auto", keys=keys)
    findings = [] if diagnosis.ok else [unresolved_finding(diagnosis, adapter=adapter_name, where=where, ctx=ctx)]
    comparison = compare(peft_model, saved_to_live, file_tensors(diagnosis))
    live_to_saved = {live: saved for saved, live in saved_to_live.items()}
    findings += comparison_findings(comparison, adapter=adapter_name, where=where, saved_of=live_to_saved, ctx=ctx)
    return make_report(
        findings,
        check="adapter-verify",
        checkpoint=SourceRef(location=folder, format="peft-adapter", tensors=len(keys)),
        expected=SourceRef(location=type(peft_model).__name__, format="module", tensors=len(saved_to_live)),
        summary=summary_of(
            expected=len(saved_to_live),
            checkpoint=len(keys),
            matched=len(comparison.equal),
            reports=[diagnosis.after],
        ),
    )


def _lora_keys(folder: str) -> KeySet:
    keys = read_keys(folder)
    peft_type = getattr(keys.adapter, "peft_type", None)
    if keys.format != "peft-adapter" or peft_type not in (None, "LORA"):
        raise ValueError(f"{folder}: not a LoRA adapter folder ({keys.format}, peft_type {peft_type!r})")
    return keys


def _require_lora(peft_model: Any, adapter_name: str) -> None:
    from peft.utils.peft_types import PeftType

    configs = getattr(peft_model, "peft_config", None)
    if not isinstance(configs, dict) or adapter_name not in configs:
        known = ", ".join(map(repr, configs or {})) or "none"
        raise ValueError(f"the model has no adapter {adapter_name!r} (adapters: {known})")
    if getattr(configs[adapter_name], "peft_type", None) != PeftType.LORA:
        raise ValueError(f"adapter {adapter_name!r} of the model is {configs[adapter_name].peft_type}, not LoRA")
