"""Base-model weights saved with an adapter: PEFT's ``save_embedding_layers``.

PEFT saves a model's input and output embedding layers with an adapter whose ``target_modules`` name an embedding
(``save_embedding_layers="auto"`` turns it on then), and when the vocabulary was resized; loading the adapter loads
them too, over the base model's (for a LoRA-wrapped embedding the key is ``<path>.base_layer.weight``). keyguard
accepts these keys when a file has them, compares the file's copy with the model's before loading (KG620 when they
differ: loaded anyway, as PEFT does, and said), verifies them after, and names the cause and the way out when they
do not fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from keyguard.report import _kinds as kinds
from keyguard.report._build import make_finding
from keyguard.report._model import Example, Finding, Report

_ERROR_CODES: Final = frozenset({"KG301", "KG302", "KG304", "KG402", "KG403"})


def saved_base_keys(model: Any) -> dict[str, str]:
    """Keys of the base-model tensors PEFT may save with an adapter of ``model`` (a ``PeftModel`` or a tuner such as
    X-LoRA's LoRA model): the input and output embedding layers, in the model's own key form (saved form and key in
    the model are the same). The base layer of a LoRA-wrapped embedding; never an adapter's own tensors."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            layer = getattr(model, getter)()
        except (AttributeError, NotImplementedError, TypeError):
            continue
        if layer is not None:
            layers.append(layer)
    if not layers:
        return {}
    wanted = {id(layer) for layer in layers}
    live = model.state_dict(keep_vars=True)
    found: dict[str, str] = {}
    for path, module in model.named_modules():
        if id(module) not in wanted or isinstance(module, AuxiliaryTrainingWrapper):
            continue
        if isinstance(module, BaseTunerLayer):
            owner, inner = f"{path}.base_layer", module.get_base_layer()
        else:
            owner, inner = path, module
        for name in inner.state_dict(keep_vars=True):
            key = f"{owner}.{name}"
            if key in live:
                found[key] = key
    return found


def may_carry(file_keys: Iterable[str], optional: Iterable[str]) -> bool:
    """Whether any file key could be one of the ``optional`` keys under another prefix (a cheap test that spares a
    second diagnosis for the usual adapter, which carries none)."""
    tails = {".".join(key.split(".")[-3:]) for key in optional}
    return any(key.endswith(tail) for key in file_keys for tail in tails)


def replaced_findings(
    model: Any,
    saved_to_live: Mapping[str, str],
    base_keys: Iterable[str],
    tensors: Mapping[str, Any],
    *,
    where: str,
    ctx: Mapping[str, Any],
) -> list[Finding]:
    """KG620 for each base weight whose copy in the file differs from the model's (compared before loading)."""
    import torch

    live = model.state_dict(keep_vars=True)
    differ: dict[str, str] = {}
    for saved in base_keys:
        held, stored = live[saved_to_live[saved]], tensors[saved]
        if held.is_meta or tuple(held.shape) != tuple(stored.shape):
            continue  # nothing to compare with: the shape check refuses a wrong shape before this
        with torch.no_grad():
            theirs = stored.to(device=held.device, dtype=held.dtype)
            if not torch.equal(held.detach(), theirs):
                gap = (held.detach().double() - theirs.double()).abs().max().item()
                differ[saved] = f"largest difference {gap:.3g}"
    if not differ:
        return []
    return [
        make_finding(
            kinds.ADAPTER_BASE_WEIGHT_REPLACED,
            f"{where}: the file carries its own copy of {len(differ):,} base-model weight(s) (the embedding layers"
            " PEFT saves with an adapter that targets them), which differ from the model's: loaded over them, as"
            " stock PEFT does; every adapter of the model and the base model now use the file's copy",
            expected_keys=list(differ),
            examples=[Example(expected=k, detail=why) for k, why in differ.items()],
            hint="to keep the model's own embedding, save the adapter again with save_embedding_layers=False",
            ctx={**ctx, "keys": list(differ)},
        )
    ]


def refusal_hint(after: Report) -> str:
    """The cause and the way out when keys that do not fit name base-model embedding weights, else ``""``."""
    suspects = [
        key
        for f in after.errors()
        if f.code in _ERROR_CODES
        for key in (*f.checkpoint_keys, *f.expected_keys)
        if _looks_like_embedding(key)
    ]
    if not suspects:
        return ""
    return (
        f"The file carries base-model weights ({suspects[0]}{', ...' if len(suspects) > 1 else ''}): PEFT saves the"
        " embedding layers with an adapter whose target_modules name an embedding (save_embedding_layers), or whose"
        " vocabulary was resized. Here they do not fit the model: if the adapter was trained with added tokens,"
        " resize the model's embeddings first (model.resize_token_embeddings(n)); if it was trained on another base"
        " model, load it into that one; or save the adapter again with save_embedding_layers=False."
    )


def _looks_like_embedding(key: str) -> bool:
    return (
        key.endswith(".base_layer.weight")
        and any(name in key for name in ("embed", "wte", "word_embeddings", "lm_head", "shared"))
    ) or key.endswith(("embed_tokens.weight", "lm_head.weight", "wte.weight", "word_embeddings.weight"))
