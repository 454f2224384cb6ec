"""The registry of finding kinds: one stable code and name each, with the text of its docs page.

Codes are grouped by family and never reused: 1xx prefixes, 2xx renames, 3xx shapes and dtypes, 4xx missing,
unexpected and ambiguous keys, 5xx adapters, 6xx file integrity, 7xx what transformers' ``from_pretrained`` does with
a checkpoint. ``keyguard explain CODE`` prints a kind's page and
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
    "7": "Loader conversions (transformers from_pretrained)",
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
RESTRUCTURED = register(
    FindingKind(
        "KG203",
        "restructured",
        E,
        "A module is named differently in several places at once",
        "Finds modules whose keys changed in more than one segment, as converted checkpoints change them: several "
        "segments renamed together (`layers.N.attention.wq` -> `model.layers.N.self_attn.q_proj`), an index "
        "moved to another segment (`head.norms.N` -> `head.levels.N.norm`), segments merged or split (`proj.0` "
        "-> `proj0`), separators changed (`down_blocks_0_attn` -> `down_blocks.0.attn`), a layer wrapped in or "
        "unwrapped from an `nn.Sequential` (`fc.weight` -> `fc.0.weight`). keyguard aligns templates (keys with "
        "their numbers collapsed): two templates are the same tensors only when their leaf names agree, they "
        "hold as many keys, and their shapes agree index by index.",
        "None of these keys loads: `strict=True` fails on every one, `strict=False` leaves the model at its "
        "initial weights.",
        "Proven by the data, never by similarity alone. `safe` when the shapes force the correspondence (the only "
        "template of its shapes on both sides), nothing contradicts it (a key never leaves a subtree that matches "
        "as it stands; all leaves of a module go to one module), something corroborates it (its names agree, its "
        "sibling modules move the same way, or it stays inside a parent that matches) and it covers at least two "
        "keys. `unsafe` when several templates of equal shapes fit and the names choose (the module's own name "
        "equal up to spelling, or a published equivalent such as `wq` / `q_proj`, by a clear margin): applied "
        "only with `--unsafe-fixes`. Otherwise the candidates are "
        "reported as `ambiguous`. Each finding lists the evidence that decided (`ctx.changes[].evidence`).",
        "checkpoint `layers.0.feed_forward.w2.weight` -> model `model.layers.0.mlp.down_proj.weight`",
    )
)
RENUMBERED = register(
    FindingKind(
        "KG204",
        "renumbered",
        E,
        "Numbered blocks are numbered differently",
        "Finds numbered groups whose indices map to the model's by more than a constant offset: a flat list of "
        "blocks regrouped into stages (`blocks.K` -> `stages.S.blocks.B`), one list interleaving two kinds of "
        "module split into two families, 1-based or compound indices (`stage1-2`), an offset that applies under "
        "one sub-module only. Blocks are paired in order: the n-th block of the checkpoint's group with the n-th "
        "block of the model's, and the pairing must agree with every shape.",
        "The renumbered blocks never load, or, where numbers happen to overlap, load into the wrong block.",
        "As for `restructured`: `safe` only when the shapes force the correspondence and the blocks' neighbours "
        "move the same way; the plan holds the explicit index map (`remap` with `indices`), one readable line.",
        "checkpoint `blocks.5.attn.qkv.weight` -> model `stages.1.blocks.2.attn.qkv.weight`",
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
CONTESTED_MATCH = register(
    FindingKind(
        "KG405",
        "contested_match",
        E,
        "A key that matches as it stands has a rival reading",
        "Finds keys that match the model's keys by name where the rule explaining their neighbours reads them "
        "otherwise: a stale unprefixed copy (`model.norm.weight`) beside the prefixed key a DDP strip maps onto "
        "the same name (`module.model.norm.weight`); a pipeline stage saved with local indices (layers 0, 1 where "
        "the model has 1, 2), whose layer 1 matches by name but is the model's layer 2 when the blocks are paired "
        "in order. Exact matches are evidence, not truth: both readings are listed.",
        "Keeping the exact match silently loads the wrong tensor (a stale copy, another layer) with no error at "
        "all: `load_state_dict` succeeds and the model is wrong.",
        "Never fixed automatically (display only): write the mapping you mean in a plan (`--plan`), or drop the "
        "stale copy, then diagnose again.",
        "checkpoint `model.layers.1.mlp.up_proj.weight` matches as it stands, but the stage's blocks paired in "
        "order make it model `model.layers.2.mlp.up_proj.weight`",
    )
)

# -- 5xx adapters and 6xx file integrity: `keyguard check-adapter` (KG550..KG599 are kept for the X-LoRA integration)

INVALID_ADAPTER_CONFIG = register(
    FindingKind(
        "KG501",
        "invalid_adapter_config",
        E,
        "adapter_config.json is not valid",
        "Reads `adapter_config.json` the way PEFT's `LoraConfig` does and names every field whose value is invalid "
        "(a rank that is not a positive integer, a `bias` PEFT does not know, a `target_modules` that is neither a "
        "list nor a string), or says why the file is not a JSON object at all. Unknown fields are tolerated, as "
        "PEFT adds fields in most releases. The remaining checks run with the valid fields; those that depend on an "
        "invalid one are skipped.",
        "PEFT refuses the config, or builds layers from a wrong value, before any weight is read: the adapter "
        "cannot be loaded.",
        "No automatic fix: correct the named fields (the adapter's training script knows the true values).",
        '`"r": "8"`: r: Input should be a valid integer (got \'8\')',
    )
)
NO_MATCHING_MODULES = register(
    FindingKind(
        "KG502",
        "no_matching_modules",
        F,
        "No LoRA tensor reaches a module of the base model",
        "Raised when not one LoRA tensor of the adapter, as its keys stand, names a module of the base model that "
        "`target_modules` selects, under PEFT's naming (`base_model.model.<module path>.lora_A.weight`). The other "
        "findings say why: a stripped or doubled `base_model.model.` prefix, PEFT's adapter name left in the keys, "
        "or an adapter trained for another architecture.",
        "This is the silent failure: PEFT loads the adapter without an error (it loads adapter weights with "
        "`strict=False`), every LoRA layer keeps its initialisation, and the model behaves exactly like the base "
        "model. When `target_modules` selects no module at all, PEFT refuses the config instead.",
        "The naming findings carry the fix when there is one (a prefix to add or strip, a segment to rename); an "
        "adapter trained for another architecture cannot be fixed by renaming.",
        "adapter `model.layers.0.self_attn.q_proj.lora_A.weight` vs PEFT's "
        "`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`: 0 of 8 LoRA tensors match",
    )
)
UNMATCHED_TARGET = register(
    FindingKind(
        "KG503",
        "unmatched_target",
        W,
        "A target_modules entry matches no module of the base model",
        "Checks each entry of `target_modules` (and a regular expression given as a string) against the module "
        "paths of the base model with PEFT's matching rules: a list entry matches a module whose path equals it or "
        "ends with `.` + entry; a string must match a whole module path.",
        "An entry that matches nothing usually means the adapter was configured for another architecture "
        "(`query`/`value` are BERT's names, `q_proj`/`v_proj` Llama's, `c_attn` GPT-2's). PEFT ignores the entry "
        "as long as another one matches, so the layers the author meant to adapt are left alone.",
        "No automatic fix. Check that the base model is the one the adapter was trained on.",
        '`target_modules: ["q_proj", "query"]` on a Llama base: `query` matches no module',
    )
)
TARGET_WITHOUT_WEIGHTS = register(
    FindingKind(
        "KG504",
        "target_without_weights",
        E,
        "A targeted module has no LoRA weights in the adapter",
        "Lists the base modules `target_modules` selects (after `exclude_modules`, `layers_to_transform` / "
        "`layers_pattern` and `modules_to_save`) for which the adapter file holds no LoRA tensor at all.",
        "PEFT creates a LoRA layer on each of these modules and finds nothing to load into it: the layer keeps its "
        "initialisation (`lora_B` is zero), so whatever training did to it is lost without an error.",
        "No automatic fix: export the adapter again, or narrow `target_modules` to the modules that were trained.",
        "`model.layers.{0..31}.mlp.down_proj` targeted by `down_proj`, no `lora_A`/`lora_B` in the file",
    )
)
UNDECLARED_WEIGHTS = register(
    FindingKind(
        "KG505",
        "undeclared_weights",
        E,
        "The adapter holds weights its config does not declare",
        "Lists adapter tensors that name an existing base module under PEFT's naming but that the config does not "
        "account for: LoRA weights of a module `target_modules` does not select, a DoRA `lora_magnitude_vector` "
        "without `use_dora`, a `lora_B.bias` without `lora_bias`, or a `base_layer` tensor of a module without LoRA.",
        "PEFT builds no layer for these tensors, so loading the adapter skips them silently (they are unexpected "
        "keys of a non-strict load): the trained weights are never used.",
        "No automatic fix: add the modules to `target_modules` (or set the flag) if they were trained on purpose, "
        "or drop the tensors.",
        '`base_model.model.model.layers.0.mlp.up_proj.lora_A.weight` while `target_modules` is `["q_proj", "v_proj"]`',
    )
)
INCOMPLETE_LORA_PAIR = register(
    FindingKind(
        "KG506",
        "incomplete_lora_pair",
        E,
        "A LoRA module misses part of its tensors",
        "Checks that every module with LoRA weights has all of them: `lora_A` and `lora_B` (or "
        "`lora_embedding_A` and `lora_embedding_B` for embeddings), DoRA's `lora_magnitude_vector` when `use_dora` "
        "is set, and `lora_B.bias` when `lora_bias` is set.",
        "PEFT loads what is there and leaves the missing tensor at its initialisation without an error: a missing "
        "`lora_B` is zero (the module is unchanged), a missing `lora_A` is random, a missing magnitude rescales the "
        "layer wrongly.",
        "No automatic fix: export the adapter again.",
        "`base_model.model.model.layers.3.self_attn.v_proj.lora_A.weight` present, `lora_B.weight` absent",
    )
)
RANK_MISMATCH = register(
    FindingKind(
        "KG507",
        "rank_mismatch",
        E,
        "LoRA tensors have another rank than the config",
        "Compares the rank of each LoRA module's tensors (`lora_A` is `[r, in_features]`, `lora_B` is "
        "`[out_features, r]`) with the rank the config gives that module: `rank_pattern`'s first matching entry "
        "(PEFT's matching: the pattern must match the end of the module path) or else `r`. Also reports a "
        "`lora_A` and a `lora_B` that disagree with each other.",
        "PEFT builds each layer with the configured rank, and the load fails with a size mismatch.",
        "No automatic fix: set `r` / `rank_pattern` to the ranks the tensors were trained with.",
        "`q_proj`: config r=8, tensors lora_A [16, 4096], lora_B [4096, 16]",
    )
)
LORA_FEATURE_MISMATCH = register(
    FindingKind(
        "KG508",
        "lora_feature_mismatch",
        E,
        "LoRA tensors do not fit the base module's shape",
        "Checks `lora_A`'s input size and `lora_B`'s output size against the base module's weight: `[out, in]` for "
        "`nn.Linear`, `[in, out]` for GPT-2's `Conv1D` (PEFT handles it as `fan_in_fan_out`), and "
        "`lora_embedding_A` `[r, num_embeddings]` / `lora_embedding_B` `[embedding_dim, r]` for embeddings; also "
        "`lora_B.bias` and DoRA's magnitude against the output size.",
        "The load fails with a size mismatch. The adapter was trained on a model of another size (hidden size, "
        "vocabulary, number of heads).",
        "No automatic fix: use the base model the adapter was trained on.",
        "`model.layers.0.self_attn.q_proj`: lora_A [8, 2048] but the base weight is [4096, 4096] (in_features 4096)",
    )
)
SAVED_TENSOR_MISMATCH = register(
    FindingKind(
        "KG509",
        "saved_tensor_mismatch",
        E,
        "A full tensor saved with the adapter has another shape than the base model's",
        "Checks the full tensors an adapter carries besides LoRA weights against the base model: `modules_to_save` "
        '(a task head trained in full), biases saved with `bias="all"` or `"lora_only"`, and embeddings saved '
        "with `save_embedding_layers`.",
        "The load fails with a size mismatch, whatever `strict` is. Typically a classification head trained with "
        "another `num_labels`, or embeddings of a resized vocabulary.",
        "No automatic fix: build the base model with the adapter's size (`num_labels=...`, `resize_token_embeddings`).",
        "`base_model.model.score.weight`: adapter [5, 4096], base [2, 4096]",
    )
)
SAVED_TENSOR_MISSING = register(
    FindingKind(
        "KG510",
        "saved_tensor_missing",
        E,
        "A full tensor the config declares is not in the adapter",
        "Lists the tensors PEFT expects in full from the adapter and does not find: every tensor of each base "
        "module `modules_to_save` matches (PEFT's rule: the module path ends with the entry), and the biases "
        '`bias="all"` / `"lora_only"` asks for. Entries that match no module are not reported: PEFT adds '
        "`classifier` and `score` for every sequence-classification adapter.",
        "PEFT loads the adapter without an error and these modules keep the base model's weights: a task head "
        "stays at its random initialisation.",
        "No automatic fix: export the adapter again with the module's weights.",
        '`modules_to_save: ["classifier"]` but no `base_model.model.classifier.weight` in the file',
    )
)
MIXED_DTYPES = register(
    FindingKind(
        "KG511",
        "mixed_dtypes",
        W,
        "The adapter's tensors mix dtypes",
        "Reports the tensors whose dtype differs from the adapter's most common one.",
        "Loading casts each tensor to its layer's dtype, so the load succeeds; but mixed dtypes usually mean "
        "tensors from different exports or training runs were put together, or part of the adapter was saved "
        "after an accidental cast.",
        "No fix needed if the mix is intended; otherwise export the adapter again.",
        "F32 x 126, BF16 x 2: `base_model.model.lm_head.weight` (BF16)",
    )
)
UNTRAINED_LORA = register(
    FindingKind(
        "KG512",
        "untrained_lora",
        W,
        "A LoRA module is exactly zero",
        "With `--check-values`: reports LoRA modules whose zero-initialised factor is still all zeros, `lora_B` "
        "(or `lora_embedding_A` for embeddings). PEFT initialises that factor to zero, so an all-zero one means "
        "the module was never trained, or the export saved the initial values.",
        "The module's update `B @ A` is zero: the adapter loads and changes nothing there. When every module is "
        "zero, the whole adapter is a no-op.",
        "No automatic fix: check the training run and export the trained weights.",
        "32 of 32 `lora_B` tensors are all zeros: the adapter changes nothing",
    )
)
UNSUPPORTED_ADAPTER_TYPE = register(
    FindingKind(
        "KG513",
        "unsupported_adapter_type",
        W,
        "The adapter is not a LoRA adapter",
        "Reports a `peft_type` other than `LORA`. check-adapter knows LoRA's tensor layout only, so for other "
        "methods it checks the config, dtypes and (with `--check-values`) values, not module names or shapes.",
        "Nothing is wrong with the adapter as far as keyguard can tell; the structural checks simply did not run, "
        "so a passing result means less than for a LoRA adapter.",
        "None needed.",
        '`"peft_type": "IA3"`',
    )
)
NONFINITE_VALUES = register(
    FindingKind(
        "KG601",
        "nonfinite_values",
        E,
        "A tensor holds NaN or infinite values",
        "With `--check-values`: reads every floating-point tensor of the adapter, one at a time, and reports those "
        "holding NaN or +/-Inf, with how many.",
        "The adapter loads without an error and then poisons every output that passes through the module: a NaN "
        "in one LoRA factor turns the whole layer's output into NaN.",
        "No automatic fix: the training run diverged or the export was corrupted; export a good checkpoint again.",
        "`base_model.model.model.layers.7.self_attn.v_proj.lora_B.weight`: 3 NaN of 16,384 values",
    )
)

# -- 55x-56x: the X-LoRA and PEFT integrations (`keyguard.integrations.xlora`, `keyguard.integrations.peft`)

XLORA_STOCK_KEY_REWRITE_FAILS = register(
    FindingKind(
        "KG550",
        "xlora_stock_key_rewrite_fails",
        E,
        "Stock X-LoRA rewrites this adapter's keys wrongly",
        "Reported by `keyguard.integrations.xlora.preflight`, which knows the base model and the X-LoRA config. "
        "Stock PEFT loads each expert by rewriting every key: it drops leading segments until the key starts with "
        "`model.` (but not `model.model.`) and prepends `model.`. The LoRA model inside X-LoRA expects "
        "`model.<module path>...`, so the rewrite is right only when the base model's top-level module is called "
        "`model`. The finding lists the keys that end up wrong and what stock PEFT then does: a `KeyError` for a "
        '`modules_to_save` head (`classifier`, `score`), "Got unexpected keys", or a size mismatch.',
        "The X-LoRA model cannot be built with this adapter: BERT and GPT-2 experts, and every sequence "
        "classification expert, fail (peft#2132).",
        "Safe: `keyguard.integrations.xlora.get_peft_model` (or `guard()`) maps the file's keys onto the keys the "
        "LoRA model accepts for the adapter with the safe plan of a diagnosis, then verifies every tensor. The "
        "finding's fix names the plan; it is offered only when the prediction is that keyguard loads the adapter.",
        "`base_model.model.classifier.weight` -> stock `model.model.classifier.weight`; the LoRA model expects "
        "`model.classifier.weight` (BERT: `KeyError: 'model.classifier.weight'`)",
    )
)
XLORA_STOCK_LOOPS_FOREVER = register(
    FindingKind(
        "KG551",
        "xlora_stock_loops_forever",
        F,
        "Stock X-LoRA never returns on this adapter",
        "Finds adapter keys with no `model.` segment at all, such as an adapter exported with `base_model.model.` "
        "stripped from a BERT or GPT-2 model. Stock X-LoRA's key rewrite drops leading segments until the key starts "
        "with `model.`; on such a key the last segment never changes and the loop never ends.",
        "Building the X-LoRA model hangs with no message, one CPU core busy, until the process is killed.",
        "Safe when keyguard's diagnosis maps the keys (usually by adding the missing prefix): the guarded loader "
        "never rewrites keys that way. The finding's fix says whether it does.",
        "`bert.encoder.layer.0.attention.self.query.lora_A.weight` (no `model.` segment)",
    )
)
XLORA_STOCK_SILENT_PARTIAL_LOAD = register(
    FindingKind(
        "KG552",
        "xlora_stock_silent_partial_load",
        E,
        "Stock X-LoRA would load this adapter partly, without a word",
        "Lists tensors the LoRA model expects for the adapter that the file does not hold (after stock PEFT's key "
        "rewrite): a `lora_B` left out of an export, a layer the adapter never targeted. Stock PEFT never checks "
        "for missing keys.",
        "The X-LoRA model builds and runs, and the missing tensors keep their random initialisation: an expert that "
        "silently computes something else than what was trained.",
        "No automatic fix: keyguard refuses the load (`KeyMismatchError` naming the keys). Export the adapter again, "
        "or build the adapter config so that it targets only what the file holds.",
        "`base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight` is not in the file",
    )
)
XLORA_STOCK_META_TENSORS = register(
    FindingKind(
        "KG553",
        "xlora_stock_meta_tensors",
        E,
        "Stock X-LoRA leaves expert tensors on the meta device",
        "Reported by `preflight` when the X-LoRA model is to be built with `low_cpu_mem_usage=True`. PEFT then "
        "creates the expert layers and the X-LoRA classifier on the meta device inside `init_empty_weights`, and "
        "stock loading copies the file's tensors into them, which is a no-op (torch only warns). On a built model, "
        "`verify` reports meta tensors as KG562.",
        'The model has no expert weights at all; the first forward pass fails with "Tensor on device meta is not on '
        'the expected device".',
        "Safe: the guarded loader diagnoses and checks the adapter while the model is built, and assigns the file's "
        "tensors (cast to the dtype PEFT chose) when the guard exits, outside `init_empty_weights`. An X-LoRA "
        "classifier still on the meta device then is materialised with `nn.Linear`'s own initialisation, as without "
        "`low_cpu_mem_usage`.",
        "`model.model.layers.0.self_attn.q_proj.lora_A.0.weight`: meta",
    )
)
XLORA_ADAPTER_NAMES = register(
    FindingKind(
        "KG554",
        "xlora_adapter_names",
        E,
        "Stock X-LoRA registers the experts under other names",
        "Compares the names given in `XLoraConfig.adapters` with the names stock PEFT registers the experts under: "
        '`"0"`, `"1"`, ... in order. Any other name is then unknown to the LoRA model; names that are a '
        'permutation of `"0"`, `"1"`, ... end up attached to the wrong files. An expert called like the X-LoRA '
        "model's own adapter (`default`) is refused.",
        "With other names the model builds and its first forward pass raises `KeyError` on the first user-given "
        "name; with permuted numbers every expert silently gets another expert's classifier score.",
        "Safe: keyguard's loader registers each expert under the name given in `XLoraConfig.adapters` (the order "
        "PEFT's classifier uses), so forward works and `lora_A.<name>` names what the user named.",
        '`adapters={"math": ..., "code": ...}` -> stock registers `0` and `1`, then `set_adapter(["math", "code"])`',
    )
)
XLORA_MULTIPLE_SEQ_CLS = register(
    FindingKind(
        "KG555",
        "xlora_multiple_seq_cls",
        E,
        "Several experts train the same classification head",
        "Finds two or more experts whose `modules_to_save` wrap one module (the `classifier` or `score` head of "
        "sequence-classification adapters). PEFT can activate one `modules_to_save` copy at a time, and X-LoRA "
        "activates every expert at once.",
        'PEFT refuses to build the model: "Only one adapter can be set at a time for ModulesToSaveWrapper". This '
        "is a PEFT limitation, not a key problem.",
        "No fix: keyguard refuses the second such expert with this finding rather than work around PEFT. Use one "
        "sequence-classification expert, or experts trained without a head of their own.",
        "experts `a` and `b` both save `classifier`",
    )
)
XLORA_ADAPTER_LOADS = register(
    FindingKind(
        "KG556",
        "xlora_adapter_loads",
        Severity.info,
        "The expert loads",
        "Sums up, for one expert, what `preflight` predicts: that keyguard's guarded loader loads it, with which "
        "plan, and whether stock PEFT would load it too.",
        "Nothing is wrong; the finding says what the guarded load will do.",
        "None needed.",
        "expert `a` (./lora-a): loads through keyguard (strip prefix 'base_model.'); stock PEFT fails (KG550)",
    )
)
XLORA_ADAPTER_UNREADABLE = register(
    FindingKind(
        "KG557",
        "xlora_adapter_unreadable",
        E,
        "An expert is not a LoRA adapter keyguard can read",
        "Reports an X-LoRA expert whose folder cannot be read (no `adapter_config.json`, a broken weights file), "
        "whose `peft_type` is not `LORA`, or whose config PEFT refuses.",
        "X-LoRA mixes LoRA experts only; PEFT fails on such an expert, or loads something else than a LoRA.",
        "No automatic fix: point `XLoraConfig.adapters` at a LoRA adapter folder.",
        "expert `a`: ./lora-a: no such file or folder",
    )
)
LIVE_ADAPTER_KEYS_UNRESOLVED = register(
    FindingKind(
        "KG560",
        "live_adapter_keys_unresolved",
        E,
        "The adapter's keys do not fit the model, even after the plan",
        "Compares an adapter file's keys with the keys the PEFT model accepts for that adapter (its LoRA parameters "
        "and `modules_to_save` copies, as `set_peft_model_state_dict` takes them), applies the safe plan, and lists "
        "what is still missing, unexpected, mis-shaped or ambiguous. The message names the diagnosis findings that "
        "remain.",
        "PEFT loads adapters with `strict=False`: missing tensors keep their initialisation and unexpected ones are "
        'dropped, so the adapter "loads" and changes less than it should, or nothing at all.',
        "No automatic fix: the diagnosis findings listed say why. Write the mapping you mean in a `Plan` and pass it "
        "as `strategy=`.",
        "adapter `default`: 4 expected tensors missing (KG401), 4 keys unexpected (KG402)",
    )
)
LIVE_ADAPTER_TENSOR_DIFFERS = register(
    FindingKind(
        "KG561",
        "live_adapter_tensor_differs",
        E,
        "A tensor of the loaded adapter differs from the file",
        "Reads the adapter file and compares every tensor with the model's (after casting the file's to the "
        "model's dtype): the adapter's LoRA factors and `modules_to_save` copies.",
        "The adapter did not arrive: the tensor kept its initialisation (a typical outcome of module paths that do "
        "not match the model) or came from another key. The model runs and the adapter changes nothing, or "
        "something else than what was trained.",
        "No automatic fix: load the adapter again with `keyguard.integrations.peft.load_adapter`, which says why "
        "the keys did not match.",
        "`base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight` differs from the file "
        "(all zeros: still at its initialisation)",
    )
)
LIVE_ADAPTER_ON_META = register(
    FindingKind(
        "KG562",
        "live_adapter_on_meta",
        E,
        "Adapter tensors are on the meta device",
        "Lists adapter tensors of the model (and, for X-LoRA, classifier tensors) that are on the meta device: "
        "shapes without data.",
        "The first forward pass fails; nothing of the adapter was loaded.",
        "No automatic fix on a built model: load the adapter again through keyguard, which assigns the tensors.",
        "`base_model.lora_model.model.model.layers.0.self_attn.q_proj.lora_A.0.weight`: meta",
    )
)
LIVE_ADAPTER_VERIFIED = register(
    FindingKind(
        "KG563",
        "live_adapter_verified",
        Severity.info,
        "Every tensor of the adapter arrived",
        "Confirms, per adapter, that every tensor the model holds for it equals the file's and none is on the meta "
        "device.",
        "Nothing is wrong.",
        "None needed.",
        "adapter `a`: 8 of 8 tensors equal the file",
    )
)


# -- 7xx: what transformers' from_pretrained does with a checkpoint (keyguard.integrations.transformers) ------------
LOADER_RENAMED = register(
    FindingKind(
        "KG701",
        "loader_renamed",
        Severity.info,
        "transformers renames these keys while loading",
        "Lists checkpoint keys that `from_pretrained` renames itself with a `WeightRenaming` of its conversion "
        "mapping: the per-model tables of `transformers/conversion_mapping.py` (e.g. Mixtral's `block_sparse_moe` -> "
        "`mlp`) and the legacy renames every model gets (`LayerNorm.gamma`/`beta` -> `weight`/`bias`, `weight_g`/"
        "`weight_v` -> `parametrizations.weight.original0`/`1`). The message names each rename and how many keys "
        "it moves.",
        "Nothing is wrong: the keys differ from the model's, but the loader maps them. They are reported so that "
        "the difference is not mistaken for the reason a load fails; `load_state_dict` outside transformers would "
        "not do it.",
        "None needed for `from_pretrained`. To load the file elsewhere, `keyguard fix` writes the renamed keys.",
        "12 key(s) renamed by transformers' loader: `LayerNorm.gamma -> LayerNorm.weight` (6), `LayerNorm.beta -> "
        "LayerNorm.bias` (6)",
    )
)
LOADER_BASE_PREFIX = register(
    FindingKind(
        "KG702",
        "loader_base_prefix",
        Severity.info,
        "transformers adds or strips the base-model prefix",
        "Lists checkpoint keys that `from_pretrained` matches to the model by adding or removing the model's "
        "`base_model_prefix` (`model.`, `bert.`, `transformer.`): a base-model checkpoint loaded into a model with a "
        "task head, or the other way round.",
        "Nothing is wrong for `from_pretrained`, which does this for every key where it makes the key one the model "
        "has. A plain `load_state_dict` would report every one of them missing and unexpected.",
        "None needed for `from_pretrained`.",
        "21 checkpoint key(s) get the base-model prefix `model.` from the loader",
    )
)
LOADER_CONVERTED = register(
    FindingKind(
        "KG703",
        "loader_converted",
        Severity.info,
        "transformers converts these tensors while loading",
        "Lists checkpoint tensors that a `WeightConverter` of the model's conversion mapping turns into other "
        "tensors while loading: per-expert MoE weights stacked into one tensor (`experts.*.w1`/`w3` -> "
        "`experts.gate_up_proj`), fused projections split or concatenated. keyguard runs the conversion on meta "
        "tensors of the checkpoint's shapes, so the shapes it reports are the ones the loader will produce.",
        "Nothing is wrong when the converted shapes fit the model: the loader does the conversion. When they do "
        "not, the shape finding that follows says so, and KG707 when the conversion itself fails.",
        "None needed for `from_pretrained`.",
        "48 key(s) converted by `.experts.*.w1.weight + .experts.*.w3.weight -> .experts.gate_up_proj` into 2 "
        "tensor(s)",
    )
)
LOADER_TIED = register(
    FindingKind(
        "KG704",
        "loader_tied",
        Severity.info,
        "transformers ties these missing weights to another one",
        "Lists model weights absent from the checkpoint that the loader fills by tying them to their partner "
        "(`lm_head.weight` to `model.embed_tokens.weight` when `tie_word_embeddings` is set); the tie is symmetric, "
        "so a checkpoint holding only the head fills the embeddings.",
        "Nothing is wrong: tied weights are saved once.",
        "None needed.",
        "`lm_head.weight` is tied to `model.embed_tokens.weight` by the loader",
    )
)
LOADER_IGNORED_UNEXPECTED = register(
    FindingKind(
        "KG705",
        "loader_ignored_unexpected",
        Severity.info,
        "transformers drops these checkpoint keys by design",
        "Lists checkpoint keys the model does not have and that the loader drops without a warning: those matching "
        "the model's `_keys_to_ignore_on_load_unexpected`, and buffers older code saved (`rotary_emb.inv_freq`, "
        "`position_ids`) when the model computes them now.",
        "Nothing is wrong: the model declares these keys obsolete.",
        "None needed.",
        "`model.layers.{0..31}.self_attn.rotary_emb.inv_freq` (32 keys) dropped by the loader",
    )
)
LOADER_IGNORED_MISSING = register(
    FindingKind(
        "KG706",
        "loader_ignored_missing",
        Severity.info,
        "The model allows these weights to be missing",
        "Lists model keys absent from the checkpoint that match the model's `_keys_to_ignore_on_load_missing`: the "
        "loader initialises them without a warning.",
        "Usually nothing: the model declares them optional. They are initialised, not loaded.",
        "None needed.",
        "`classifier.bias` is allowed missing by the model",
    )
)
LOADER_CONVERSION_FAILED = register(
    FindingKind(
        "KG707",
        "loader_conversion_failed",
        E,
        "A conversion transformers applies while loading fails",
        "Runs each `WeightConverter` that matches checkpoint keys on meta tensors of their shapes and reports the "
        "ones that raise (too few experts, parts that cannot be concatenated, a chunk count that does not divide).",
        "`from_pretrained` raises `RuntimeError: We encountered some issues during automatic conversion of the "
        "weights`, after reading the checkpoint.",
        "No automatic fix: the checkpoint does not have the layout the model's conversion mapping expects. Check "
        "that the config (number of experts, sizes) is the checkpoint's.",
        "`.experts.*.w1.weight -> .experts.gate_up_proj` on `model.layers.0.mlp.experts.gate_up_proj`: RuntimeError",
    )
)
FROM_PRETRAINED_SILENT = register(
    FindingKind(
        "KG708",
        "from_pretrained_silent",
        E,
        "from_pretrained would load with weights left newly initialised",
        "Sums up what `from_pretrained` would do with the checkpoint as it stands: it does not fail on missing or "
        "unexpected keys; it initialises the missing weights at random, drops the unexpected tensors and only logs "
        "a warning. The findings above say which keys and why; this one says what the loader would make of them.",
        "The model loads, runs, and computes with random weights where the checkpoint's were meant to be: the "
        "classic silent failure (`Some weights of ... were not initialized from the model checkpoint`).",
        "`keyguard.integrations.transformers.from_pretrained` applies the safe plan through transformers' own "
        "`key_mapping`, loads, verifies every tensor, and raises instead of leaving weights initialised.",
        "from_pretrained would newly initialise 21 of 21 weights and drop 21 checkpoint tensors",
    )
)
FROM_PRETRAINED_RAISES = register(
    FindingKind(
        "KG709",
        "from_pretrained_raises",
        E,
        "from_pretrained would raise",
        "Sums up the findings that make `from_pretrained` raise: shapes that differ from the model's (unless "
        "`ignore_mismatched_sizes=True`, which initialises those weights instead) and conversions that fail.",
        "The load fails after reading the checkpoint, with `RuntimeError`.",
        "No automatic fix: the checkpoint and the config describe different models (vocabulary, hidden size, "
        "number of experts). Use the checkpoint's config.",
        "from_pretrained would raise: 2 shape mismatch(es)",
    )
)
LOADED_TENSOR_DIFFERS = register(
    FindingKind(
        "KG710",
        "loaded_tensor_differs",
        E,
        "A weight of the loaded model differs from the checkpoint",
        "After a guarded `from_pretrained`, compares every weight of the model with the checkpoint's tensor it was "
        "loaded from (converted the way the loader converts it, cast to the model's dtype); tied weights must be "
        "the same tensor as their partner.",
        "The weight did not arrive: it kept its initialisation or came from another tensor.",
        "No automatic fix; the guarded load raises `KeyMismatchError` with this finding instead of returning the "
        "model.",
        "`model.layers.0.mlp.down_proj.weight` differs from the checkpoint (largest difference 0.8)",
    )
)
LOADED_VERIFIED = register(
    FindingKind(
        "KG711",
        "loaded_verified",
        Severity.info,
        "Every weight of the loaded model equals the checkpoint",
        "Confirms that a guarded `from_pretrained` loaded every weight from the checkpoint, each equal to the "
        "file's tensor (converted and cast as the loader does), and tied weights tied.",
        "Nothing is wrong.",
        "None needed.",
        "all 21 weights equal the checkpoint",
    )
)
USER_KEY_MAPPING = register(
    FindingKind(
        "KG712",
        "user_key_mapping",
        Severity.info,
        "Your key_mapping renames these keys",
        "Lists checkpoint keys renamed by the `key_mapping` passed to `from_pretrained` (or to the diagnosis), "
        "before the model's own conversions.",
        "Nothing is wrong: the keys are renamed as asked. Keys your mapping moves onto names the model does not "
        "have show up in the findings that follow.",
        "None needed.",
        "21 key(s) renamed by key_mapping `^module\\.` -> ``",
    )
)

# -- 620-629: loads through the integrations (`keyguard.integrations.peft`, `keyguard.integrations.xlora`)

ADAPTER_BASE_WEIGHT_REPLACED = register(
    FindingKind(
        "KG620",
        "adapter_base_weight_replaced",
        W,
        "The adapter's copy of a base weight replaced the model's",
        "Compares, before loading, each base-model tensor an adapter file carries besides its LoRA tensors with the "
        "model's. PEFT saves the embedding layers with an adapter whose `target_modules` name an embedding "
        "(`save_embedding_layers`, on by default then), or whose vocabulary was resized; loading the adapter loads "
        "them too. Reported when the file's copy differs from the model's.",
        "The base weight is shared: every other adapter (every X-LoRA expert) and the base model itself now use the "
        "file's copy. That is what stock PEFT does, and right when the adapter was trained on a model whose "
        "embedding differs (new tokens); wrong when the adapter was trained on another base model.",
        "None: keyguard loads the file's copy as PEFT does, verifies it arrived, and says so. To keep the model's "
        "embedding, save the adapter again with `save_embedding_layers=False`.",
        "`model.model.decoder.embed_tokens.base_layer.weight` differs from the model's (largest difference 0.37)",
    )
)
XLORA_EXPERT_ORDER = register(
    FindingKind(
        "KG621",
        "xlora_expert_order",
        E,
        "X-LoRA experts are paired with other classifier outputs than the config says",
        "Compares the order of the experts in the built X-LoRA model (the order in which its classifier's outputs "
        "weigh them) with the order of `XLoraConfig.adapters` given to `verify`.",
        "The X-LoRA classifier gives output k to the k-th expert. PEFT saves the X-LoRA config with its keys "
        "sorted, so a model built with experts `math, code` reloads with `PeftModel.from_pretrained` as `code, "
        "math`: every expert silently receives the weight the classifier learnt for another one.",
        "No automatic fix on a built model: rebuild it from a config in the right order. keyguard's "
        "`xlora.get_peft_model` builds experts in the order PEFT saves them (sorted by name), so that a saved model "
        "reloads with every expert on its own classifier output.",
        "classifier output 0 goes to `code`, the config says `math`",
    )
)
XLORA_ORDER_NOT_SAVED = register(
    FindingKind(
        "KG622",
        "xlora_order_not_saved",
        W,
        "A saved copy of this X-LoRA model would reload its experts in another order",
        "Checks whether the experts' order (the order of `XLoraConfig.adapters`) is the order PEFT writes them in "
        "when the model is saved: sorted by name.",
        "After `save_pretrained` and `PeftModel.from_pretrained`, the experts come back sorted by name and pair with "
        "other classifier outputs than the ones they were trained with (KG621); nothing fails.",
        "Build the model with `keyguard.integrations.xlora.get_peft_model`, which orders the experts as PEFT will "
        "save them, or name the experts so that their sorted order is the order you mean.",
        '`adapters={"math": ..., "code": ...}` is saved as `{"code": ..., "math": ...}`',
    )
)
