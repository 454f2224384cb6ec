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
                    lambda m: "attention.self." + {"q": "query", "k": "key", "v": "value"}[m[1]],
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
                    lambda m: "attention.attention." + {"q": "query", "k": "key", "v": "value"}[m[1]],
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
                    lambda m: "attention.attention." + {"q": "query", "k": "key", "v": "value"}[m[1]],
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
    )
}
