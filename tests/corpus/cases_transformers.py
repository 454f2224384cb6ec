"""Legacy layouts transformers 5 still converts when it loads them (``conversion_mapping.py``).

Each case builds a tiny model; the checkpoint is the legacy layout written by transformers' own
``revert_weight_conversion`` (or, where transformers cannot write it back, by the links run backward), and the
truth is checked by loading that checkpoint with ``from_pretrained`` and comparing every tensor by value
(``corpus._hf.round_trip``; see tests/corpus/test_truth.py). The old names are written here from reading the
conversion tables, so a wrong reading fails the round trip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from corpus._case import SPLIT, STACK, Case, Link
from corpus._hf import DECODER, hf_case, state, tiny

SOURCE = "transformers 5.24 round trip"
_QKV = {"q": "query", "k": "key", "v": "value"}


def rewriter(rules: Sequence[tuple[str, str]]) -> Callable[[str], str]:
    """New key -> old key, by regular-expression substitutions applied in order."""
    compiled = [(re.compile(p), r) for p, r in rules]

    def old(key: str) -> str:
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        return key

    return old


def gptneox_embed_out() -> Case:
    model = tiny("GPTNeoXConfig", "GPTNeoXForCausalLM", **{**DECODER, "num_key_value_heads": None})
    return hf_case(
        "gptneox_embed_out",
        model,
        shapes=("single_key",),
        source=f"{SOURCE}: GPTNeoXForCausalLM (`^embed_out.` -> `lm_head.`)",
        note="GPT-NeoX's output layer `embed_out.weight` is `lm_head.weight` now",
        old_name=rewriter([(r"^lm_head\.", "embed_out.")]),
    )


def mixtral_experts() -> Case:
    values = {**DECODER, "num_local_experts": 3, "num_experts_per_tok": 2}
    model = tiny("MixtralConfig", "MixtralForCausalLM", **values)
    links = []
    for layer in range(values["num_hidden_layers"]):
        old = f"model.layers.{layer}.block_sparse_moe.experts"
        new = f"model.layers.{layer}.mlp.experts"
        experts = range(values["num_local_experts"])
        gate_up = tuple(f"{old}.{e}.{w}.weight" for e in experts for w in ("w1", "w3"))
        links.append(Link(gate_up, (f"{new}.gate_up_proj",), STACK, parts=2))
        links.append(Link(tuple(f"{old}.{e}.w2.weight" for e in experts), (f"{new}.down_proj",), STACK))
    return hf_case(
        "mixtral_experts",
        model,
        shapes=("fused", "multi_segment"),
        source=f"{SOURCE}: mixtral (`block_sparse_moe` -> `mlp`, per-expert w1/w3/w2 -> stacked experts)",
        note="Mixtral per-expert `block_sparse_moe.experts.E.w1/w3/w2` -> stacked `mlp.experts.gate_up_proj/down_proj`",
        old_name=rewriter([(r"\.mlp\.gate\.", ".block_sparse_moe.gate.")]),
        data_links=links,
    )


def segformer_stages() -> Case:
    model = tiny(
        "SegformerConfig",
        "SegformerModel",
        num_encoder_blocks=2,
        depths=[1, 2],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        image_size=32,
    )
    return hf_case(
        "segformer_stages",
        model,
        shapes=("index_move", "multi_segment"),
        source=f"{SOURCE}: SegformerModel (`encoder.patch_embeddings.N.` -> `stages.N.patch_embeddings.`, ...)",
        note="index moves across segments: `encoder.block.N.M` -> `stages.N.blocks.M`, `encoder.layer_norm.N` ->"
        " `stages.N.layer_norm`; attention/mlp names change",
        old_name=rewriter(
            [
                (r"^stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
                (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.block.\1.\2."),
                (r"^stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
                (
                    r"attention\.([qkv])_proj",
                    lambda m: "attention.self." + _QKV[m[1]],
                ),
                (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
                (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
                (r"attention\.o_proj", "attention.output.dense"),
                (r"mlp\.fc([12])", r"mlp.dense\1"),
                (r"layernorm_before", "layer_norm_1"),
                (r"layernorm_after", "layer_norm_2"),
            ]
        ),
    )


def dinov2_swiglu() -> Case:
    model = tiny(
        "Dinov2Config",
        "Dinov2Model",
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
        use_swiglu_ffn=True,
    )
    links = [
        Link(
            (f"encoder.layer.{i}.mlp.weights_in.{p}",),
            (f"encoder.layer.{i}.mlp.gate_proj.{p}", f"encoder.layer.{i}.mlp.up_proj.{p}"),
            SPLIT,
        )
        for i in range(2)
        for p in ("weight", "bias")
    ]
    return hf_case(
        "dinov2_swiglu",
        model,
        shapes=("fused", "multi_segment"),
        source=f"{SOURCE}: Dinov2Model (`mlp.weights_in` chunked into gate/up, `attention.attention.query` -> ...)",
        note="a gate/up pair stored as one tensor `mlp.weights_in` (chunked on load); `attention.attention.query` ->"
        " `attention.q_proj`, `mlp.weights_out` -> `mlp.down_proj`",
        old_name=rewriter(
            [
                (
                    r"attention\.([qkv])_proj",
                    lambda m: "attention.attention." + _QKV[m[1]],
                ),
                (r"attention\.o_proj", "attention.output.dense"),
                (r"mlp\.down_proj", "mlp.weights_out"),
            ]
        ),
        data_links=links,
    )


def nomic_bert_wqkv() -> Case:
    model = tiny(
        "NomicBertConfig",
        "NomicBertModel",
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    links = [
        Link(
            (f"encoder.layers.{i}.attn.Wqkv.weight",),
            tuple(f"layers.{i}.self_attn.{p}_proj.weight" for p in "qkv"),
            SPLIT,
        )
        for i in range(2)
    ]
    return hf_case(
        "nomic_bert_wqkv",
        model,
        shapes=("fused", "multi_segment"),
        source=f"{SOURCE}: nomic_bert (`attn.Wqkv` chunked into q/k/v, `fc11`/`fc12` -> up/gate, `emb_ln`)",
        note="a fused `attn.Wqkv` the engine does not know, `encoder.layers` -> `layers`, `fc11/fc12/fc2` ->"
        " `up_proj/gate_proj/down_proj`, `norm1/2` -> `post_attention/post_mlp_layernorm`",
        old_name=rewriter(
            [
                (r"^embeddings\.LayerNorm", "emb_ln"),
                (r"^layers\.", "encoder.layers."),
                (r"self_attn\.o_proj", "attn.out_proj"),
                (r"mlp\.up_proj", "mlp.fc11"),
                (r"mlp\.gate_proj", "mlp.fc12"),
                (r"mlp\.down_proj", "mlp.fc2"),
                (r"post_attention_layernorm", "norm1"),
                (r"post_mlp_layernorm", "norm2"),
            ]
        ),
        data_links=links,
    )


def gte_fused() -> Case:
    model = tiny(
        "GteConfig",
        "GteModel",
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    links = []
    for i in range(2):
        for p in ("weight", "bias"):
            links.append(
                Link(
                    (f"encoder.layer.{i}.attention.qkv_proj.{p}",),
                    tuple(f"layers.{i}.self_attn.{x}_proj.{p}" for x in "qkv"),
                    SPLIT,
                )
            )
        links.append(
            Link(
                (f"encoder.layer.{i}.mlp.up_gate_proj.weight",),
                (f"layers.{i}.mlp.up_proj.weight", f"layers.{i}.mlp.gate_proj.weight"),
                SPLIT,
            )
        )
    return hf_case(
        "gte_fused",
        model,
        shapes=("fused", "multi_segment"),
        source=f"{SOURCE}: gte (`attention.qkv_proj` and `mlp.up_gate_proj` chunked, `attn_ln`/`mlp_ln` renamed)",
        note="`qkv_proj` under `attention`, and an `up_gate_proj` holding up *then* gate; `encoder.layer` -> `layers`",
        old_name=rewriter(
            [
                (r"^layers\.", "encoder.layer."),
                (r"self_attn\.o_proj", "attention.o_proj"),
                (r"post_attention_layernorm", "attn_ln"),
                (r"post_mlp_layernorm", "mlp_ln"),
            ]
        ),
        data_links=links,
    )


def bert_gamma_beta() -> Case:
    model = tiny(
        "BertConfig",
        "BertModel",
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    old_name = rewriter([(r"LayerNorm\.weight$", "LayerNorm.gamma"), (r"LayerNorm\.bias$", "LayerNorm.beta")])
    expected = state(model)
    return hf_case(
        "bert_gamma_beta",
        model,
        shapes=("single_key",),
        source=f"{SOURCE}: the `legacy` conversion (`LayerNorm.gamma/beta` -> `weight/bias`), checkpoint written here",
        note="TF-era BERT checkpoints name LayerNorm parameters `gamma`/`beta`",
        old_name=old_name,
        checkpoint={old_name(k): v.clone() for k, v in expected.items()},
    )


def vit_legacy() -> Case:
    model = tiny(
        "ViTConfig",
        "ViTModel",
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
    )
    return hf_case(
        "vit_legacy",
        model,
        shapes=("multi_segment",),
        source=f"{SOURCE}: ViTModel (`encoder.layer.` -> `layers.`, `attention.attention.query` -> `attention.q_proj`)",
        note="`encoder.layer.N.attention.attention.query` -> `layers.N.attention.q_proj`, `intermediate.dense` ->"
        " `mlp.fc1`, `output.dense` -> `mlp.fc2` (a name also used by `attention.output.dense`)",
        old_name=rewriter(
            [
                (r"^layers\.", "encoder.layer."),
                (
                    r"attention\.([qkv])_proj",
                    lambda m: "attention.attention." + _QKV[m[1]],
                ),
                (r"attention\.o_proj", "attention.output.dense"),
                (r"mlp\.fc1", "intermediate.dense"),
                (r"mlp\.fc2", "output.dense"),
            ]
        ),
    )


def exaone_gpt_names() -> Case:
    model = tiny("ExaoneConfig", "LlamaForCausalLM", **DECODER)
    case = hf_case(
        "exaone_gpt_names",
        model,
        shapes=("multi_segment", "prefix"),
        source=f"{SOURCE}: exaone (GPT-2-style names `transformer.h.N.attn.attention.q_proj` -> Llama names)",
        note="`transformer.h.N` -> `model.layers.N`, `attn.attention` -> `self_attn`, `ln_1/ln_2`,"
        " `mlp.c_fc_0/c_fc_1/c_proj` -> `gate/up/down_proj`, `transformer.wte/ln_f`",
        old_name=rewriter(
            [
                (r"^model\.embed_tokens\.", "transformer.wte."),
                (r"^model\.layers\.", "transformer.h."),
                (r"^model\.norm\.", "transformer.ln_f."),
                (r"\.self_attn\.o_proj\.", ".self_attn.out_proj."),
                (r"\.self_attn\.", ".attn.attention."),
                (r"\.input_layernorm\.", ".ln_1."),
                (r"\.post_attention_layernorm\.", ".ln_2."),
                (r"\.mlp\.gate_proj\.", ".mlp.c_fc_0."),
                (r"\.mlp\.up_proj\.", ".mlp.c_fc_1."),
                (r"\.mlp\.down_proj\.", ".mlp.c_proj."),
            ]
        ),
    )
    case.tags["from_pretrained"] = ("AutoModelForCausalLM", model.config)
    return case


def dory_layer_pairs() -> Case:
    values = {**DECODER, "num_hidden_layers": 3}
    model = tiny("DoryConfig", "DoryForCausalLM", **values)
    expected = state(model)

    def old_name(key: str) -> str:
        match = re.match(r"model\.layers\.(\d+)\.(self_attn|mlp|lambda_1|lambda_2)(.*)", key)
        if match is None:
            return key.replace("model.embed_tokens.", "backbone.embeddings.")
        layer, part, rest = int(match[1]), match[2], match[3]
        if part == "lambda_1":
            return f"backbone.layers.{2 * layer}.attn_alpha{rest}"
        if part == "lambda_2":
            return f"backbone.layers.{2 * layer + 1}.mlp_alpha{rest}"
        if part == "self_attn":
            return f"backbone.layers.{2 * layer}.mixer{rest.replace('.gate_proj.', '.g_proj.')}"
        return f"backbone.layers.{2 * layer + 1}.mixer{rest}"

    case = hf_case(
        "dory_layer_pairs",
        model,
        shapes=("index_map", "multi_segment"),
        source=f"{SOURCE}: dory (`LayerPairCollapse`: `layers.2i` attention, `layers.2i+1` mlp),"
        " checkpoint written here",
        note="one list interleaving two kinds of block: `backbone.layers.2i.mixer` -> `model.layers.i.self_attn`,"
        " `backbone.layers.2i+1.mixer` -> `model.layers.i.mlp`; `mixer.g_proj` -> `self_attn.gate_proj`",
        old_name=old_name,
        checkpoint={old_name(k): v.clone() for k, v in expected.items()},
    )
    return case


def sarvam_moe_qkv() -> Case:
    values = {
        **DECODER,
        "moe_intermediate_size": 8,
        "n_routed_experts": 3,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
        "head_dim": 8,
        "n_group": 1,
        "topk_group": 1,
    }
    model = tiny("SarvamMoEConfig", "Glm4MoeForCausalLM", **values)
    links = []
    for layer in range(values["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        links.append(
            Link(
                (f"{p}.attention.query_key_value.weight",),
                tuple(f"{p}.self_attn.{x}_proj.weight" for x in "qkv"),
                SPLIT,
            )
        )
        if layer >= values["first_k_dense_replace"]:
            experts = range(values["n_routed_experts"])
            gate_up = tuple(f"{p}.mlp.experts.{e}.{w}_proj.weight" for e in experts for w in ("gate", "up"))
            links.append(Link(gate_up, (f"{p}.mlp.experts.gate_up_proj",), STACK, parts=2))
            down = tuple(f"{p}.mlp.experts.{e}.down_proj.weight" for e in experts)
            links.append(Link(down, (f"{p}.mlp.experts.down_proj",), STACK))
    case = hf_case(
        "sarvam_moe_qkv",
        model,
        shapes=("fused", "multi_segment", "single_key"),
        source=f"{SOURCE}: sarvam_moe (`query_key_value` split by each target's size, qwen2_moe experts, renames)",
        note="a GQA `attention.query_key_value` split into q/k/v of unequal sizes, per-expert gate/up/down ->"
        " stacked, `attention` -> `self_attn`, `dense` -> `o_proj`, `query_layernorm` -> `q_norm`,"
        " `word_embeddings` -> `embed_tokens`, `gate.expert_bias` -> `gate.e_score_correction_bias`",
        old_name=rewriter(
            [
                (r"^model\.embed_tokens\.", "model.word_embeddings."),
                (r"\.self_attn\.o_proj\.", ".self_attn.dense."),
                (r"\.self_attn\.q_norm\.", ".self_attn.query_layernorm."),
                (r"\.self_attn\.k_norm\.", ".self_attn.key_layernorm."),
                (r"\.self_attn\.", ".attention."),
                (r"\.mlp\.gate\.e_score_correction_bias", ".mlp.gate.expert_bias"),
            ]
        ),
        data_links=links,
    )
    case.tags["from_pretrained"] = ("AutoModelForCausalLM", model.config)
    return case


def llava_prefixes() -> Case:
    import transformers

    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    text = transformers.LlamaConfig(**{**DECODER, "num_hidden_layers": 1})
    model = tiny(
        "LlavaConfig",
        "LlavaForConditionalGeneration",
        vision_config=vision,
        text_config=text,
        image_token_index=3,
        vision_feature_layer=-1,
    )
    return hf_case(
        "llava_prefixes",
        model,
        shapes=("prefix", "multi_segment"),
        source=f"{SOURCE}: llava (`language_model.model` -> `model.language_model`, `language_model.lm_head` ->"
        " `lm_head`, towers under `model.`)",
        note="prefixes re-nested: `language_model.model.X` -> `model.language_model.X` (two segments swap),"
        " `language_model.lm_head` -> `lm_head`, `vision_tower`/`multi_modal_projector` -> under `model.`",
        old_name=rewriter(
            [
                (r"^model\.language_model\.", "language_model.model."),
                (r"^lm_head\.", "language_model.lm_head."),
                (r"^model\.(vision_tower|multi_modal_projector)\.", r"\1."),
            ]
        ),
    )


def beit_backbone_fpn() -> Case:
    model = tiny(
        "BeitConfig",
        "BeitBackbone",
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
        out_indices=[1, 2, 3, 4],
        add_fpn=True,
        use_relative_position_bias=True,
    )
    return hf_case(
        "beit_backbone_fpn",
        model,
        shapes=("sequential", "multi_segment", "prefix"),
        source=f"{SOURCE}: BeitBackbone (`fpn1.0` -> `fpn.fpn1.conv_transpose1`, `fpn2.0` -> `fpn.fpn2`, ViT renames)",
        note="nn.Sequential slots become names: `fpn1.0/1/3` -> `fpn.fpn1.conv_transpose1/normalization/"
        "conv_transpose2`, `fpn2.0.weight` -> `fpn.fpn2.weight` (a numeric segment removed); `encoder.layer.N` ->"
        " `beit.layers.N` with ViT's attention/mlp renames",
        old_name=rewriter(
            [
                (r"^fpn\.fpn1\.conv_transpose1\.", "fpn1.0."),
                (r"^fpn\.fpn1\.normalization\.", "fpn1.1."),
                (r"^fpn\.fpn1\.conv_transpose2\.", "fpn1.3."),
                (r"^fpn\.fpn2\.", "fpn2.0."),
                (r"^beit\.embeddings\.", "embeddings."),
                (
                    r"^beit\.layers\.(\d+)\.relative_position_bias\.",
                    r"encoder.layer.\1.attention.attention.relative_position_bias.",
                ),
                (r"^beit\.layers\.", "encoder.layer."),
                (r"attention\.([qkv])_proj", lambda m: "attention.attention." + _QKV[m[1]]),
                (r"attention\.o_proj", "attention.output.dense"),
                (r"mlp\.fc1", "intermediate.dense"),
                (r"mlp\.fc2", "output.dense"),
            ]
        ),
    )


def granitemoe_fused_names() -> Case:
    values = {**DECODER, "num_local_experts": 3, "num_experts_per_tok": 2}
    model = tiny("GraniteMoeConfig", "GraniteMoeForCausalLM", **values)
    return hf_case(
        "granitemoe_fused_names",
        model,
        shapes=("multi_segment", "sequential"),
        source=f"{SOURCE}: granitemoe (`block_sparse_moe.input_linear.weight` -> `experts.gate_up_proj`, ...)",
        note="already-stacked experts renamed: `input_linear.weight` -> `experts.gate_up_proj` (a segment inserted,"
        " `.weight` dropped), `output_linear.weight` -> `experts.down_proj`, `router.layer.weight` -> `router.weight`",
        old_name=rewriter(
            [
                (r"block_sparse_moe\.experts\.gate_up_proj$", "block_sparse_moe.input_linear.weight"),
                (r"block_sparse_moe\.experts\.down_proj$", "block_sparse_moe.output_linear.weight"),
                (r"block_sparse_moe\.router\.weight$", "block_sparse_moe.router.layer.weight"),
            ]
        ),
    )


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f
    for f in (
        gptneox_embed_out,
        mixtral_experts,
        segformer_stages,
        dinov2_swiglu,
        nomic_bert_wqkv,
        gte_fused,
        bert_gamma_beta,
        vit_legacy,
        exaone_gpt_names,
        dory_layer_pairs,
        sarvam_moe_qkv,
        llava_prefixes,
        beit_backbone_fpn,
        granitemoe_fused_names,
    )
}
