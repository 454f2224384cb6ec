"""Wrapper and pipeline layouts where keys that match as they stand are not the right tensors (issue 9's two
"smaller facts"): a stale unprefixed copy beside the prefixed keys, and a pipeline stage saved with local indices."""

from __future__ import annotations

from collections.abc import Callable

from corpus._case import Case, Link, seeded
from corpus._hf import DECODER, state, tiny


def stale_unprefixed_copy() -> Case:
    """A DDP checkpoint (``module.``) that also holds an older, unprefixed ``model.norm.weight``."""
    expected = state(tiny("LlamaConfig", "LlamaForCausalLM", **DECODER))
    checkpoint = {f"module.{k}": v.clone() for k, v in expected.items()}
    stale = "model.norm.weight"
    checkpoint[stale] = seeded("stale copy of model.norm.weight", expected[stale].shape)
    return Case(
        "stale_unprefixed_copy",
        ("prefix", "exact_match_trap"),
        "issue 9 (seen in practice): a DDP wrapper's `module.` keys plus one stale unprefixed copy",
        "`module.model.norm.weight` is the tensor to load; the unprefixed `model.norm.weight` beside it is stale",
        checkpoint,
        expected,
        [Link((f"module.{k}",), (k,)) for k in expected],
        (stale,),
    )


def pipeline_stage_local_indices() -> Case:
    """The last stage of a 3-layer pipeline (layers 1 and 2, global names) saved with local indices 0 and 1."""
    full = state(tiny("LlamaConfig", "LlamaForCausalLM", **{**DECODER, "num_hidden_layers": 3}))
    expected = {k: v for k, v in full.items() if not k.startswith(("model.embed_tokens.", "model.layers.0."))}

    def local(key: str) -> str:
        if key.startswith("model.layers."):
            index, rest = key.removeprefix("model.layers.").split(".", 1)
            return f"model.layers.{int(index) - 1}.{rest}"
        return key

    links = [Link((local(k),), (k,)) for k in expected]
    return Case(
        "pipeline_stage_local_indices",
        ("index_map", "exact_match_trap"),
        "issue 9 (seen in practice): a pipeline stage holding layers 1, 2 saved with local indices 0, 1",
        "`model.layers.0/1` in the checkpoint are the model's `model.layers.1/2`: the matching `layers.1` is"
        " shifted too",
        {local(k): v.clone() for k, v in expected.items()},
        expected,
        links,
    )


CASES: dict[str, Callable[[], Case]] = {f.__name__: f for f in (stale_unprefixed_copy, pipeline_stage_local_indices)}
