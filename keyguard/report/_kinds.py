"""The registry of finding kinds: one stable code and name each, with the text of its docs page.

Codes are grouped by family and never reused: 1xx prefixes, 2xx renames, 3xx shapes and dtypes, 4xx missing,
unexpected and ambiguous keys, 5xx adapters, 6xx file integrity. ``keyguard explain CODE`` prints a kind's page and
the docs site is generated from this table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Severity(str, enum.Enum):
    """How bad a finding is. ``error``: ``load_state_dict(strict=True)`` (or a stock PEFT load) would fail, or a
    tensor would be silently skipped or mis-shaped. ``fatal``: nothing would load at all."""

    info = "info"
    warning = "warning"
    error = "error"
    fatal = "fatal"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    def at_least(self, other: Severity) -> bool:
        return self.rank >= other.rank


_SEVERITY_RANK: Final = {Severity.info: 0, Severity.warning: 1, Severity.error: 2, Severity.fatal: 3}


@dataclass(frozen=True)
class FindingKind:
    """A kind of finding and its documentation (What it does / Why is this bad? / Fix safety / Example)."""

    code: str
    kind: str
    severity: Severity
    title: str
    what: str
    why: str
    fix_safety: str
    example: str

    @property
    def family(self) -> str:
        return _FAMILIES[self.code[2]]


_FAMILIES: Final = {
    "1": "Prefixes",
    "2": "Renames",
    "3": "Shapes and dtypes",
    "4": "Missing, unexpected and ambiguous keys",
    "5": "Adapters",
    "6": "File integrity",
}

KINDS: Final[dict[str, FindingKind]] = {}


def register(kind: FindingKind) -> FindingKind:
    """Add a kind to the registry; codes and names are unique forever."""
    if kind.code in KINDS or any(k.kind == kind.kind for k in KINDS.values()):
        raise ValueError(f"finding kind {kind.code} / {kind.kind} registered twice")
    KINDS[kind.code] = kind
    return kind


def lookup(code_or_kind: str) -> FindingKind | None:
    """Find a kind by code (``KG101``, ``kg101``, ``101``) or by name (``extra_prefix``, ``extra-prefix``)."""
    text = code_or_kind.strip()
    upper = text.upper()
    if not upper.startswith("KG"):
        upper = "KG" + upper
    if upper in KINDS:
        return KINDS[upper]
    name = text.lower().replace("-", "_")
    return next((k for k in KINDS.values() if k.kind == name), None)


E, W, F = Severity.error, Severity.warning, Severity.fatal

EXTRA_PREFIX = register(
    FindingKind(
        "KG101",
        "extra_prefix",
        E,
        "Checkpoint keys carry an extra prefix",
        "Finds a group of checkpoint keys that match the model's keys once a leading prefix is removed, such as "
        "`module.` (left by `DistributedDataParallel` / `DataParallel`), `_orig_mod.` (left by `torch.compile`) "
        "or a doubled `model.`.",
        "`load_state_dict(strict=True)` reports every one of these keys twice, as missing and as unexpected; "
        "`strict=False` silently loads none of them and leaves the model at its initial weights.",
        "Safe when stripping the prefix maps the group one-to-one onto keys the model expects, none of which "
        "already exists in the checkpoint, with equal shapes. The fix is `strip_prefix` (or a `replace_prefix` "
        "narrowed to the affected keys when a plain strip would also rename keys that already match).",
        "checkpoint `module.encoder.layer.0.attention.self.query.weight` -> model "
        "`encoder.layer.0.attention.self.query.weight`",
    )
)
MISSING_PREFIX = register(
    FindingKind(
        "KG102",
        "missing_prefix",
        E,
        "Checkpoint keys lack a prefix the model expects",
        "Finds a group of checkpoint keys that match the model's keys once a prefix is added, typically base-model "
        "weights loaded into a task model (`encoder.` vs `bert.encoder.`) or an adapter exported without PEFT's "
        "`base_model.model.` wrapper.",
        "The model reports the whole group as missing and the checkpoint's keys as unexpected; with "
        "`strict=False` nothing is loaded.",
        "Safe when adding the prefix is one-to-one onto expected keys with equal shapes and no collision. The rule "
        "is limited to the first segments the group starts with, so unrelated keys are never renamed.",
        "checkpoint `encoder.layer.0.output.dense.weight` -> model `bert.encoder.layer.0.output.dense.weight`",
    )
)
REPLACED_PREFIX = register(
    FindingKind(
        "KG103",
        "replaced_prefix",
        E,
        "Checkpoint keys use another prefix",
        "Finds a group of checkpoint keys whose leading segments differ from the model's: a renamed trunk "
        "(`transformer.` vs `model.`) or re-nested sub-models (`language_model.model.` vs `model.language_model.`).",
        "Every key of the group is reported as missing and as unexpected; nothing in it loads.",
        "Safe when the replacement is one-to-one onto expected keys with equal shapes and no collision.",
        "checkpoint `transformer.layers.0.mlp.fc1.weight` -> model `model.layers.0.mlp.fc1.weight`",
    )
)
RENAMED = register(
    FindingKind(
        "KG201",
        "renamed",
        E,
        "A key segment is named differently",
        "Finds a segment renamed, inserted or removed inside otherwise equal keys: legacy LayerNorm `gamma`/`beta` "
        "instead of `weight`/`bias`, a block list renamed (`h.` vs `blocks.`), PEFT's adapter name present or "
        "absent (`lora_A.weight` vs `lora_A.default.weight`).",
        "These keys never load: `strict=True` fails and `strict=False` leaves the tensors at their initial values.",
        "Safe when the rename is one-to-one onto expected keys with equal shapes, no collision, and no competing "
        "rename explains the same keys (or the rename is a known convention such as `gamma` -> `weight`). Otherwise "
        "the candidates are reported as `ambiguous`.",
        "checkpoint `encoder.layer.0.output.LayerNorm.gamma` -> model `encoder.layer.0.output.LayerNorm.weight`",
    )
)
INDEX_SHIFT = register(
    FindingKind(
        "KG202",
        "index_shift",
        E,
        "Block indices are offset",
        "Finds numbered blocks whose indices differ by a constant: a pipeline-parallel stage saved with global "
        "layer numbers loaded into a model that numbers its layers from 0, or the reverse.",
        "The offset blocks are reported as missing and unexpected; those that happen to overlap load into the "
        "wrong layer.",
        "Safe when one constant offset maps the whole numbered group one-to-one onto expected blocks with equal "
        "shapes.",
        "checkpoint `model.layers.16.mlp.up_proj.weight` -> model `model.layers.0.mlp.up_proj.weight`",
    )
)
SHAPE_MISMATCH = register(
    FindingKind(
        "KG301",
        "shape_mismatch",
        E,
        "A tensor has another shape",
        "Reports keys present on both sides (possibly after the plan's renames) whose shapes differ, and says why "
        "when it can: a resized vocabulary (embedding or LM head rows), a changed `num_labels` (classifier rows).",
        "`load_state_dict` raises `size mismatch` for these keys, whatever `strict` is.",
        "No automatic fix: the model must be built with the checkpoint's size (`resize_token_embeddings`, "
        "`num_labels=...`), or the key left out and initialised (`--ignore`).",
        "`model.embed_tokens.weight`: checkpoint [32000, 4096], model [32003, 4096] (vocabulary resized by 3)",
    )
)
TRANSPOSED = register(
    FindingKind(
        "KG302",
        "transposed",
        E,
        "A 2-D tensor is stored transposed",
        "Reports 2-D tensors whose shape is the model's reversed, as GPT-2's `Conv1D` stores weights "
        "`[in, out]` where `nn.Linear` expects `[out, in]`.",
        "`load_state_dict` raises `size mismatch`; a square weight would load silently transposed.",
        "Unsafe: transposing changes the data. Applied only with `--unsafe-fixes`, per key, and said so.",
        "`h.0.attn.c_attn.weight`: checkpoint [768, 2304], model [2304, 768]",
    )
)
FUSED_SPLIT = register(
    FindingKind(
        "KG303",
        "fused_split",
        E,
        "Tensors are fused on one side and split on the other",
        "Finds a fused tensor on one side whose parts are separate on the other: `qkv_proj` vs `q_proj`/`k_proj`/"
        "`v_proj`, `gate_up_proj` vs `gate_proj`/`up_proj`, per-expert MoE weights vs stacked experts (as "
        "transformers 5 stores them). The sizes along the fused dimension must add up.",
        "Both sides' keys are reported as missing and unexpected; nothing in the group loads.",
        "Unsafe: splitting or concatenating changes data and the part order is inferred from the names. Applied "
        "only with `--unsafe-fixes`.",
        "checkpoint `layers.0.self_attn.qkv_proj.weight` [3072, 1024] -> model `q_proj`, `k_proj`, `v_proj` "
        "[1024, 1024] each",
    )
)
DTYPE_MISMATCH = register(
    FindingKind(
        "KG304",
        "dtype_mismatch",
        W,
        "A tensor has another dtype",
        "Reports keys whose dtypes differ between the checkpoint and the model.",
        "`load_state_dict` casts while copying, so loading succeeds; but a float tensor paired with an integer "
        "one usually means the names were matched wrongly, and with `assign=True` the model takes the "
        "checkpoint's dtype.",
        "No fix needed for float-to-float casts. A float/integer pair prevents any rename of that key from being "
        "marked safe.",
        "`lm_head.weight`: checkpoint bf16, model f32",
    )
)
MISSING = register(
    FindingKind(
        "KG401",
        "missing",
        E,
        "The model expects keys the checkpoint lacks",
        "Lists expected keys that no rule explains, grouped, with the closest checkpoint keys as hints. Known "
        "harmless cases say so: a weight tied to one that is present (`lm_head.weight` tied to the embeddings), a "
        "task head absent from a base checkpoint, `num_batches_tracked` of old BatchNorm checkpoints.",
        "`strict=True` refuses to load; `strict=False` leaves these tensors at their initial (often random) values.",
        "No automatic fix. If the keys are missing on purpose, exclude them: `--ignore REGEX`.",
        "`classifier.weight`, `classifier.bias` (a task head: initialised when fine-tuning from a base checkpoint)",
    )
)
UNEXPECTED = register(
    FindingKind(
        "KG402",
        "unexpected",
        E,
        "The checkpoint holds keys the model does not expect",
        "Lists checkpoint keys that no rule explains, grouped, with the closest expected keys as hints. Known "
        "harmless cases say so: legacy buffers such as `rotary_emb.inv_freq`, `position_ids` or GPT-2's "
        "`attn.bias`, and non-persistent buffers of the model.",
        "`strict=True` refuses to load. They may also be the real weights under a name no rule could infer.",
        "No automatic fix. Drop them when writing a fixed checkpoint (`--drop-unexpected`, which lists every key "
        "it drops) or exclude them (`--ignore REGEX`).",
        "`model.layers.0.self_attn.rotary_emb.inv_freq` (a legacy buffer, recomputed at init)",
    )
)
AMBIGUOUS = register(
    FindingKind(
        "KG403",
        "ambiguous",
        E,
        "Several mappings fit",
        "Reports keys that more than one rule could map (two renames explain the same keys equally well), or "
        "whose mapping would collide with a key that already exists. Every candidate is shown.",
        "Picking one silently could put a tensor under the wrong name; between same-shaped tensors that corrupts "
        "the model without any error.",
        "Display only: never applied. Write the mapping you mean in a plan (`--plan`) after checking it.",
        "`attn.q.weight` could be `attn.query.weight` or `attn.key.weight` (same shape)",
    )
)
NO_OVERLAP = register(
    FindingKind(
        "KG404",
        "no_overlap",
        F,
        "No checkpoint key matches the model",
        "Raised when not a single checkpoint key matches an expected key as they stand.",
        "This is the silent failure: `load_state_dict(strict=False)` (and many loaders) load nothing, report "
        "nothing, and the model keeps its initial weights; a LoRA adapter leaves the base model unchanged.",
        "The other findings say why; the safe plan shows how many keys it can map.",
        "checkpoint `module.layers.0.weight` ... vs model `layers.0.weight` ...: 0 of 312 keys match",
    )
)
