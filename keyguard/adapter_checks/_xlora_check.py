"""``--xlora``: would the adapter load into PEFT's X-LoRA, stock and through keyguard?

Two ways to answer, kept apart from the other checks:

- when the base can be built (a ``config.json`` folder) and PEFT is installed, ``keyguard.integrations.xlora.preflight``
  injects the LoRA layers into the model on the meta device and simulates stock PEFT exactly; its X-LoRA findings
  (KG550-KG557 but KG554, which judges expert names this check does not have, and KG560) are taken as they are;
- otherwise (a manifest or a checkpoint: no model, maybe no torch) a prediction from the keys alone: stock PEFT 0.21's
  key rewrite (``peft/tuners/xlora/model.py``, ``_load_adapter_into_lora_model``) drops leading dotted segments until
  the key starts with ``model.`` but not ``model.model.``, then prepends ``model.``; the LoRA model inside X-LoRA
  accepts ``model.<module path>.<role>``, so the rewrite is right only when the base model's top-level module is
  called ``model``, and on a key without any ``model.`` segment the loop never ends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Final

from keyguard.adapter_checks._findings import finding, plural
from keyguard.adapter_checks._peft_conventions import PREFIX
from keyguard.report import _kinds as kinds
from keyguard.report._model import Example, Finding
from keyguard.sources._keyset import KeySet

_STOCK: Final = "stock PEFT X-LoRA (peft.tuners.xlora)"
# the expert's name in a preflight: the name stock PEFT registers a first expert under, so that the preflight judges
# the adapter, not the naming of an X-LoRA config that does not exist yet (KG554)
_EXPERT: Final = "0"


def xlora_findings(
    folder: str, base: KeySet, canonical: Mapping[str, str | None], *, keyguard_ok: bool
) -> list[Finding]:
    """X-LoRA findings for the adapter in ``folder``.

    Args:
        folder: the adapter folder.
        base: the base model's keys (a ``config.json`` base lets the integration's preflight run).
        canonical: each adapter key and the PEFT-form key it stands for after the engine's plan (``None``: none).
        keyguard_ok: whether a load through keyguard would succeed (no error the safe plan leaves unfixed).
    """
    model = _meta_model(base)
    if model is not None:
        found = _preflight(model, folder)
        if found is not None:
            return found
    return predict(canonical, keyguard_ok=keyguard_ok)


def _meta_model(base: KeySet) -> Any:
    """The base model on the meta device, when ``base`` is a ``config.json`` folder and torch + transformers exist."""
    if base.format != "config" or not base.location or not base.architecture:
        return None
    try:
        import torch
        import transformers
    except ImportError:
        return None
    path = base.location if os.path.isfile(base.location) else os.path.join(base.location, "config.json")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            return getattr(transformers, base.architecture)(config)
    except Exception:  # the source reader built it once; anything failing now means: predict from the keys
        return None


def _preflight(model: Any, folder: str) -> list[Finding] | None:
    from keyguard._exceptions import UnsupportedVersionError

    try:
        from keyguard.integrations.xlora import preflight
    except ImportError:  # PEFT is not installed
        return None
    try:
        report = preflight(model, SimpleNamespace(adapters={_EXPERT: folder}))
    except UnsupportedVersionError:
        return None
    # its stock-PEFT findings, and KG560 (what keyguard's X-LoRA loader could not map), which they refer to
    return [f for f in report.findings if ("KG550" <= f.code <= "KG557" and f.code != "KG554") or f.code == "KG560"]


def stock_rewrite(key: str) -> str | None:
    """The key stock X-LoRA loads ``key`` under, or ``None`` when its rewrite loop never terminates."""
    while not (key.startswith("model.") and not key.startswith("model.model.")):
        cut = key.find(".")
        if cut < 0:
            return None  # peft slices key[0:] here: the key never changes again
        key = key[cut + 1 :]
    return "model." + key


def predict(canonical: Mapping[str, str | None], *, keyguard_ok: bool) -> list[Finding]:
    """Stock X-LoRA's fate from the keys alone (see the module docstring)."""
    via = (
        "through keyguard.integrations.xlora it would load (keys mapped by the safe plan, then verified)"
        if keyguard_ok
        else "keyguard would refuse it too until the other errors are fixed"
    )
    ctx_base = {"adapter": _EXPERT, "keyguard_loads": keyguard_ok, "predicted_from": "keys"}
    hangs = [key for key in canonical if stock_rewrite(key) is None]
    if hangs:
        return [
            finding(
                kinds.XLORA_STOCK_LOOPS_FOREVER,
                f"{_STOCK} would never return: {plural(len(hangs), 'key')} contain no `model.` segment for its key"
                f" rewrite to stop at; {via}",
                checkpoint_keys=hangs,
                examples=[Example(checkpoint=k, detail="no `model.` segment") for k in hangs],
                ctx={**ctx_base, "keys": len(hangs)},
            )
        ]
    wrong: list[tuple[str, str, str | None]] = []
    for key, target in canonical.items():
        rewritten = stock_rewrite(key)
        wanted = None if target is None else "model." + target.removeprefix(PREFIX)
        if rewritten != wanted:
            wrong.append((key, rewritten or "", wanted))
    if not wrong:
        return []
    return [
        finding(
            kinds.XLORA_STOCK_KEY_REWRITE_FAILS,
            f"{_STOCK} would fail: its key rewrite sends {plural(len(wrong), 'key')} of {len(canonical):,} to a name"
            f" the X-LoRA LoRA model does not have (it assumes the base model's top-level module is `model`); {via}",
            checkpoint_keys=[k for k, _, _ in wrong],
            examples=[
                Example(checkpoint=k, expected=got, detail=f"expected {want}" if want else "no such module")
                for k, got, want in wrong
            ],
            ctx={**ctx_base, "keys": len(wrong), "total": len(canonical)},
        )
    ]
