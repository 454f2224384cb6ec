"""A LoRA adapter loaded into a ``PeftModel`` through a diagnosis, and the check that an adapter really arrived.

PEFT loads adapters with ``load_state_dict(strict=False)``: an adapter whose module paths do not match the model
"loads" with at most a warning and changes nothing. ``load_adapter`` maps the file's keys onto the keys the model
accepts for the adapter first, refuses what still does not fit, and compares every tensor afterwards;
``verify_adapter`` does the comparison for an adapter loaded any other way.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Final

from keyguard._exceptions import KeyMismatchError, UnsupportedModelError
from keyguard.integrations._adapters import (
    Strategy,
    accepted_for,
    compare,
    comparison_findings,
    diagnose_adapter,
    file_tensors,
    load_into,
    make_report,
    refusal,
    summary_of,
    unresolved_finding,
)
from keyguard.integrations._base_weights import replaced_findings
from keyguard.integrations._restore import ModelState
from keyguard.integrations._versions import check_peft_version, installed_peft, set_adapter_trainable
from keyguard.report._load_result import LoadResult
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
) -> LoadResult:
    """Load a LoRA adapter folder into ``peft_model`` under ``adapter_name``: diagnosed, mapped, loaded, verified.

    A new name is added with the folder's ``adapter_config.json`` (inactive and frozen, as ``PeftModel.load_adapter``
    leaves it); an existing LoRA adapter of that name is overwritten. The file's keys are diagnosed against the keys
    the model accepts for the adapter (its LoRA tensors and ``modules_to_save`` copies, and the base embedding layers
    PEFT saves with an adapter that targets them), the strategy's plan applied, the tensors loaded with PEFT's own
    ``set_peft_model_state_dict`` (assigned when they are on the meta device), and every one compared with the file.
    When the load is refused or interrupted (Ctrl-C included), the model is put back exactly as it was.

    Args:
        peft_model: a ``peft.PeftModel`` (or a model with LoRA layers injected and a ``peft_config``). For a plain
            transformers model, use ``from_pretrained`` (a drop-in for ``PeftModel.from_pretrained``).
        adapter_dir: a PEFT adapter folder (``adapter_config.json`` and ``adapter_model.safetensors`` / ``.bin``).
        adapter_name: the name to load it under.
        strategy: ``"auto"`` (the safe plan), ``"strict"`` (no rewriting) or a ``Plan``.

    Returns:
        A ``LoadResult``: the tensors loaded and verified, the plan applied, ``report`` (the diagnosis of the file as
        given, before the plan) and ``notes`` (KG620 when the file's copy of a base weight replaced the model's).

    Raises:
        KeyMismatchError: the keys do not fit even after the plan (nothing is loaded), or a tensor did not arrive;
            the message is the rendered report.
        UnsupportedModelError: ``peft_model`` is not a PEFT model (a plain transformers model, say).
        UnsupportedVersionError: the installed PEFT is outside 0.15.0 to 0.21.x.
        ValueError: the folder, or the model's adapter of that name, is not LoRA.
    """
    from peft.peft_model import set_peft_model_state_dict
    from peft.tuners.lora.config import LoraConfig

    check_peft_version(installed_peft(), _INTEGRATION)
    folder = os.fspath(adapter_dir)
    _require_peft_model(peft_model, folder)
    keys = _lora_keys(folder)
    state = ModelState.capture(peft_model)
    try:
        if adapter_name not in peft_model.peft_config:
            config = LoraConfig.from_pretrained(folder)
            config.inference_mode = True
            peft_model.add_adapter(adapter_name, config)
        return _load_checked(peft_model, folder, adapter_name, keys, strategy, set_peft_model_state_dict, state)
    except BaseException:  # refused, or interrupted: no half-made adapter, no injected layer, no loaded tensor
        state.restore()
        raise


def from_pretrained(
    model: Any,
    adapter_dir: str | os.PathLike[str],
    adapter_name: str = "default",
    *,
    is_trainable: bool = False,
    strategy: Strategy = "auto",
) -> Any:
    """``PeftModel.from_pretrained`` for a LoRA adapter folder, loaded through ``load_adapter``'s checks.

    Wraps a plain transformers ``model`` in the ``PeftModel`` class for the adapter's task type, with the folder's
    ``adapter_config.json``, then loads the file's tensors diagnosed, mapped and verified. When the load is refused or
    interrupted, ``model`` is put back exactly as it was (PEFT injects its LoRA layers into it in place).

    Args:
        model: the base model.
        adapter_dir: a PEFT LoRA adapter folder.
        adapter_name: the name to load it under.
        is_trainable: leave the adapter trainable (else it is frozen and the model put in eval mode, as PEFT does).
        strategy: ``"auto"`` (the safe plan), ``"strict"`` (no rewriting) or a ``Plan``.

    Returns:
        The ``PeftModel``. ``verify_adapter(peft_model, adapter_dir, adapter_name)`` reports on it at any time.

    Raises:
        KeyMismatchError, UnsupportedVersionError, ValueError: see ``load_adapter``.
        UnsupportedModelError: ``model`` is already a PEFT model (use ``load_adapter``).
    """
    from peft import PeftModel
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
    from peft.peft_model import set_peft_model_state_dict
    from peft.tuners.lora.config import LoraConfig

    check_peft_version(installed_peft(), _INTEGRATION)
    folder = os.fspath(adapter_dir)
    if isinstance(model, PeftModel) or hasattr(model, "peft_config"):
        raise UnsupportedModelError(
            f"keyguard.integrations.peft.from_pretrained wraps a plain model; this {type(model).__name__} already"
            f" holds PEFT adapters: load {folder} into it with keyguard.integrations.peft.load_adapter"
        )
    keys = _lora_keys(folder)
    config = LoraConfig.from_pretrained(folder)
    config.inference_mode = not is_trainable
    wrapper = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel) if config.task_type else PeftModel
    state = ModelState.capture(model)
    try:
        peft_model = wrapper(model, config, adapter_name)
        _load_checked(peft_model, folder, adapter_name, keys, strategy, set_peft_model_state_dict, state)
        if is_trainable:
            set_adapter_trainable(peft_model, adapter_name)
        else:
            peft_model.eval()
        return peft_model
    except BaseException:
        state.restore()
        raise


def _load_checked(
    peft_model: Any,
    folder: str,
    adapter_name: str,
    keys: KeySet,
    strategy: Strategy,
    set_state_dict: Any,
    state: ModelState,
) -> LoadResult:
    _require_lora(peft_model, adapter_name)
    what = f"adapter {adapter_name!r} ({folder})"
    accepted = accepted_for(peft_model, adapter_name, f"{type(peft_model).__name__}: the keys of {what}")
    diagnosis = diagnose_adapter(folder, accepted, strategy, keys=keys, model=peft_model)
    saved_to_live = diagnosis.saved_to_live
    if not diagnosis.ok:
        raise refusal(what, diagnosis)
    tensors = file_tensors(diagnosis)
    ctx = {"adapter": adapter_name, "path": folder}
    notes = replaced_findings(peft_model, saved_to_live, diagnosis.base_keys, tensors, where=what, ctx=ctx)
    live = peft_model.state_dict(keep_vars=True)
    for key in saved_to_live.values():  # an adapter overwritten, a base weight replaced: put back if interrupted
        state.keep(live[key])
    assigned = load_into(peft_model, adapter_name, saved_to_live, tensors, set_state_dict, what=what)
    comparison = compare(peft_model, saved_to_live, tensors)
    if not comparison.ok:
        live_to_saved = {live: saved for saved, live in saved_to_live.items()}
        findings = comparison_findings(comparison, adapter=adapter_name, where=what, saved_of=live_to_saved, ctx=ctx)
        report = make_report(
            findings,
            check="adapter-verify",
            checkpoint=SourceRef(location=folder, format="peft-adapter", tensors=len(keys)),
            expected=SourceRef(location=type(peft_model).__name__, format="module", tensors=len(saved_to_live)),
            summary=summary_of(expected=len(saved_to_live), checkpoint=len(keys), matched=len(comparison.equal)),
        )
        raise KeyMismatchError(f"{what}: the load did not take:\n\n{report.render('table')}", report)
    for note in notes:
        warnings.warn(f"keyguard {note.code} {note.kind}: {note.message}", UserWarning, stacklevel=3)
    return LoadResult(
        source=folder,
        target=f"adapter {adapter_name!r} of {type(peft_model).__name__}",
        loaded=len(tensors),
        verified=len(comparison.equal),
        plan=diagnosis.plan,
        report=diagnosis.report,
        left_out=[key for key in keys if key not in diagnosis.mapping],
        assigned=assigned,
        notes=notes,
    )


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
    accepted = accepted_for(peft_model, adapter_name, f"{type(peft_model).__name__}: the keys of {where}")
    diagnosis = diagnose_adapter(folder, accepted, "auto", keys=keys, model=peft_model)
    saved_to_live = diagnosis.saved_to_live
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


def _require_peft_model(model: Any, folder: str) -> None:
    if not isinstance(getattr(model, "peft_config", None), dict):
        raise UnsupportedModelError(
            f"keyguard.integrations.peft.load_adapter loads into a PEFT model; this {type(model).__name__} holds no"
            f" adapters (no peft_config). Wrap it and load {folder} in one step with"
            " keyguard.integrations.peft.from_pretrained(model, adapter_dir) (a drop-in for PeftModel.from_pretrained),"
            " or wrap it with peft.get_peft_model first"
        )


def _require_lora(peft_model: Any, adapter_name: str) -> None:
    from peft.utils.peft_types import PeftType

    configs = getattr(peft_model, "peft_config", None)
    if not isinstance(configs, dict) or adapter_name not in configs:
        known = ", ".join(map(repr, configs or {})) or "none"
        raise ValueError(f"the model has no adapter {adapter_name!r} (adapters: {known})")
    if getattr(configs[adapter_name], "peft_type", None) != PeftType.LORA:
        raise ValueError(f"adapter {adapter_name!r} of the model is {configs[adapter_name].peft_type}, not LoRA")
