"""Tiny transformers models for the corpus: seeded data, the legacy layout written by transformers itself, and the
round trip through transformers' own loader that proves a case's truth."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from corpus._case import Case, Link, seeded

#: Sizes shared by the tiny decoders (the smallest the classes accept).
DECODER: dict[str, Any] = {
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 32,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def tiny(config_class: str, model_class: str, **values: Any) -> Any:
    """A transformers model built from a tiny config, every float tensor filled with ``seeded`` data."""
    import torch
    import transformers

    config = getattr(transformers, config_class)(**values)
    config.architectures = [model_class]
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(seeded(name, tensor.shape, tensor.dtype))
    return model


def state(model: Any) -> dict[str, Any]:
    """The model's state dict, each tensor its own contiguous copy."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def legacy(model: Any) -> dict[str, Any]:
    """The layout transformers writes with ``save_pretrained(save_original_format=True)``: its conversions reverted."""
    from transformers.core_model_loading import revert_weight_conversion

    reverted = revert_weight_conversion(model, state(model))
    return {k: v.detach().clone().contiguous() for k, v in reverted.items()}


def hf_case(
    name: str,
    model: Any,
    *,
    shapes: tuple[str, ...],
    source: str,
    note: str,
    old_name: Callable[[str], str | None],
    data_links: Iterable[Link] = (),
    checkpoint: dict[str, Any] | None = None,
    orphans: Iterable[str] = (),
) -> Case:
    """A case over a transformers model: the expected side is its state dict, the checkpoint the legacy layout
    (``legacy(model)`` unless given). ``old_name`` gives the legacy name of each expected key that is only renamed
    (``None`` when a data link covers it or the legacy layout lacks it)."""
    expected = state(model)
    extra = list(data_links)
    covered = {k for link in extra for k in link.new}
    links = [Link((old,), (key,)) for key in expected if key not in covered and (old := old_name(key)) is not None]
    links.extend(extra)
    ckpt = legacy(model) if checkpoint is None else checkpoint
    case = Case(name, shapes, source, note, ckpt, expected, links, tuple(orphans))
    case.tags["from_pretrained"] = (type(model).__name__, model.config)
    return case


def round_trip(case: Case) -> list[str]:
    """Load ``case.checkpoint`` with transformers' own ``from_pretrained`` and compare every tensor with
    ``case.expected`` by value; the problems found (none: transformers agrees with the truth)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    class_name, config = case.tags["from_pretrained"]
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in case.checkpoint.items()}, os.path.join(folder, "model.safetensors"))
        with open(os.path.join(folder, "config.json")) as f:
            json.load(f)  # written by transformers: must be readable
        model, info = getattr(transformers, class_name).from_pretrained(folder, output_loading_info=True)
    problems = [f"{kind}: {keys}" for kind, keys in info.items() if keys and kind != "mismatched_keys"]
    problems += [f"mismatched: {info['mismatched_keys']}"] if info.get("mismatched_keys") else []
    loaded = model.state_dict()
    for key, want in case.expected.items():
        got = loaded.get(key)
        if got is None:
            problems.append(f"{key}: not in the loaded model")
        elif not torch.equal(got.to(want.dtype), want):
            problems.append(f"{key}: loaded data differs from the truth")
    return problems
