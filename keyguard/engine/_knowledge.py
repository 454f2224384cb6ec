"""What the ecosystem is known to do to keys: wrapper prefixes, legacy names, fused tensors, legacy buffers.

Knowledge explains findings (``module.`` is left by DDP) and breaks ties between equally good renames (``gamma``
-> ``weight`` rather than ``gamma`` -> ``bias``); it never makes an inconsistent mapping safe.
"""

from __future__ import annotations

import re
from typing import Final

#: Leading prefixes that wrappers and loaders add, and who adds them.
KNOWN_PREFIXES: Final[dict[str, str]] = {
    "module.": "DistributedDataParallel / DataParallel",
    "_orig_mod.": "torch.compile",
    "_fsdp_wrapped_module.": "FSDP (FullyShardedDataParallel, v1)",
    "_checkpoint_wrapped_module.": "activation checkpointing (checkpoint_wrapper)",
    "_fsdp_wrapped_module._checkpoint_wrapped_module.": "FSDP around activation checkpointing",
    "_fpw_module.": "FSDP's FlattenParamsWrapper (torch < 2.0)",
    "_fsdp_wrapped_module._fpw_module.": "FSDP with its FlattenParamsWrapper (torch < 2.0)",
    "0.auto_model.": "sentence-transformers",
    "base_model.model.": "PEFT's PeftModel wrapper",
    "model.": "a wrapper module attribute (Lightning, a loader prepending `model.`)",
    "model.model.": "a loader prepending `model.` to keys that already carry it",
    "student.": "a distillation wrapper",
    "teacher.": "a distillation wrapper",
    "ema.": "an EMA wrapper",
    "model_ema.": "an EMA wrapper",
    "backbone.": "a backbone wrapper",
    "encoder.": "an encoder wrapper",
}

#: Attributes under which a transformers task model (``LlamaForCausalLM``) holds its base model (``LlamaModel``):
#: a checkpoint saved from the base model lacks them, and holds no task head.
BASE_MODEL_ATTRIBUTES: Final = frozenset(
    {"model.", "transformer.", "bert.", "roberta.", "deberta.", "distilbert.", "gpt_neox.", "albert.", "electra."}
)
BASE_MODEL_ORIGIN: Final = (
    "saved from a base model, e.g. LlamaModel, without the task head; the task model, e.g. LlamaForCausalLM, holds"
    " the base model under this attribute"
)

#: Segment renames that are conventions, not guesses.
KNOWN_RENAMES: Final[dict[str, str]] = {
    "gamma": "weight",  # legacy LayerNorm parameter names (TF ports, old BERT checkpoints)
    "beta": "bias",
    "block_sparse_moe": "mlp",  # Mixtral before transformers 5
}

#: PEFT's default adapter name, inserted into LoRA keys inside a PeftModel and removed when saving.
PEFT_ADAPTER_SEGMENTS: Final = frozenset(
    {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}
)

#: Fused projections and the parts they hold, in order along dim 0.
FUSIONS: Final[dict[str, tuple[str, ...]]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "W_pack": ("q_proj", "k_proj", "v_proj"),
    "query_key_value": ("query", "key", "value"),
    "qkv": ("q", "k", "v"),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "w13": ("w1", "w3"),
}

#: Stacked-expert tensors (transformers 5) and the per-expert weights they stack, per naming family.
STACKED_EXPERTS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "gate_up_proj": (("gate_proj", "up_proj"), ("w1", "w3")),
    "down_proj": (("down_proj",), ("w2",)),
}

_LEGACY_BUFFERS: Final = re.compile(
    r"(?:^|.*\.)(?:rotary_emb\.(?:inv_freq|original_inv_freq|cos_cached|sin_cached)|position_ids|"
    r"attn\.(?:masked_)?bias|attention\.(?:masked_)?bias|num_batches_tracked|_float_tensor)"
)
_TASK_HEADS: Final = re.compile(
    r"^(?:classifier|score|qa_outputs|cls|pre_classifier|pooler|head|fc|logits_proj|heads?|lm_head)(?:\.|$)"
)


def prefix_origin(prefix: str) -> str | None:
    """Who usually adds ``prefix`` (``module.`` -> DDP), for messages."""
    if prefix in KNOWN_PREFIXES:
        return KNOWN_PREFIXES[prefix]
    parts = [p + "." for p in prefix.rstrip(".").split(".")]
    found = [KNOWN_PREFIXES[p] for p in parts if p in KNOWN_PREFIXES]
    if len(found) == len(parts) and len(found) > 1 and prefix.startswith(("module.", "_orig_mod.")):
        return " + ".join(found)
    if prefix == "module._orig_mod." or prefix == "_orig_mod.module.":
        return "DistributedDataParallel + torch.compile"
    return None


def missing_prefix_origin(prefix: str) -> str | None:
    """Why checkpoint keys lack ``prefix``: a base model's weights loaded into a task model (``model.``), else
    who usually adds the prefix."""
    if prefix in BASE_MODEL_ATTRIBUTES:
        return BASE_MODEL_ORIGIN
    return prefix_origin(prefix)


def is_legacy_buffer(key: str) -> bool:
    """Buffers older code saved that current models recompute (``rotary_emb.inv_freq``, ``position_ids``, ...)."""
    return _LEGACY_BUFFERS.fullmatch(key) is not None


def is_task_head(key: str) -> bool:
    """Keys of a task head (classifier, score, an untied lm_head, ...), absent from base-model checkpoints by design
    (a tied lm_head is reported as tied, before this is asked)."""
    return _TASK_HEADS.match(key) is not None


def is_known_rename(old: str, new: str) -> bool:
    """True when renaming segment ``old`` to ``new`` is a known convention."""
    return bool(KNOWN_RENAMES.get(old) == new or KNOWN_RENAMES.get(new) == old)
