"""``--xlora``: would the adapter load into PEFT's X-LoRA, stock and through keyguard?

A local predictor of stock PEFT's key rewrite (peft 0.21.2, ``peft/tuners/xlora/model.py``,
``_load_adapter_into_lora_model``): drop leading dotted segments until the key starts with ``model.`` but not
``model.model.``, then prepend ``model.``. The LoRA model inside X-LoRA accepts ``model.<module path>.<role>``, so the
rewrite is right only when the base model's top-level module is called ``model``; on a key without any ``model.``
segment the loop never ends. Kept apart from the other checks so that it can be replaced by
``keyguard.integrations.xlora`` once that predicts from files alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from keyguard.adapters._findings import finding, plural
from keyguard.adapters._peft import PREFIX
from keyguard.report import _kinds as kinds
from keyguard.report._model import Example, Finding

_STOCK: Final = "stock PEFT X-LoRA (peft.tuners.xlora)"


def stock_rewrite(key: str) -> str | None:
    """The key stock X-LoRA loads ``key`` under, or ``None`` when its rewrite loop never terminates."""
    while not (key.startswith("model.") and not key.startswith("model.model.")):
        cut = key.find(".")
        if cut < 0:
            return None  # peft slices key[0:] here: the key never changes again
        key = key[cut + 1 :]
    return "model." + key


def xlora_findings(canonical: Mapping[str, str | None], *, keyguard_ok: bool) -> list[Finding]:
    """Findings for stock X-LoRA, given each adapter key and the PEFT-form key it stands for (``None``: unknown).

    ``keyguard_ok``: whether a load through keyguard would succeed (no error the safe plan leaves unfixed).
    """
    hangs = [key for key in canonical if stock_rewrite(key) is None]
    via = (
        "through keyguard.integrations.xlora it would load (keys mapped by the safe plan, then verified)"
        if keyguard_ok
        else "keyguard would refuse it too until the other errors are fixed"
    )
    if hangs:
        return [
            finding(
                kinds.XLORA_STOCK_HANGS,
                f"{_STOCK} would loop forever: {plural(len(hangs), 'key')} contain no `model.` segment for its key"
                f" rewrite to stop at; {via}",
                checkpoint_keys=hangs,
                examples=[Example(checkpoint=k, detail="no `model.` segment") for k in hangs],
                ctx={"keys": len(hangs), "keyguard_loads": keyguard_ok},
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
            kinds.XLORA_STOCK_INCOMPATIBLE,
            f"{_STOCK} would fail: its key rewrite sends {plural(len(wrong), 'key')} of {len(canonical):,} to a name"
            f" the X-LoRA LoRA model does not have (it assumes the base model's top-level module is `model`); {via}",
            checkpoint_keys=[k for k, _, _ in wrong],
            examples=[
                Example(checkpoint=k, expected=got, detail=f"expected {want}" if want else "no such module")
                for k, got, want in wrong
            ],
            ctx={"keys": len(wrong), "total": len(canonical), "keyguard_loads": keyguard_ok},
        )
    ]
