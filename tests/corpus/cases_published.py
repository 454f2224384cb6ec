"""Original checkpoints of published models, read into transformers by the conversion scripts their model folders
publish (OpenAI's Whisper and CLIP, NVIDIA's Megatron-LM GPT-2, state-spaces' Mamba, Meta's Segment Anything).

The expected side of each case is built by transformers from a tiny config; the checkpoint is written from it by
running the truth backward under the names the original code registers, which are written here as data from reading
the published script (its rename table, or the modules it copies one by one) and the original module's layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from corpus._case import SPLIT, TRANSPOSE, Case, Link, from_expected, seeded
from corpus._hf import state, tiny
from corpus.cases_transformers import rewriter

_SCRIPT = "published script read: transformers"


# --- OpenAI Whisper -------------------------------------------------------------------------------------------------

#: Hugging Face name -> OpenAI name, from the rename table of transformers' ``convert_openai_to_hf.py``
#: (``WHISPER_MAPPING``), read backward. Applied in order.
_WHISPER = [
    (r"^model\.", ""),
    (r"\.layers\.", ".blocks."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.([qkv])_proj\.", lambda m: ".attn." + {"q": "query", "k": "key", "v": "value"}[m[1]] + "."),
    (r"\.self_attn\.out_proj\.", ".attn.out."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (
        r"\.encoder_attn\.([qkv])_proj\.",
        lambda m: ".cross_attn." + {"q": "query", "k": "key", "v": "value"}[m[1]] + ".",
    ),
    (r"\.encoder_attn\.out_proj\.", ".cross_attn.out."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"\.embed_tokens\.", ".token_embedding."),
    (r"\.embed_positions\.weight$", ".positional_embedding"),
]


#: whisper/model.py registration order: the encoder's sinusoid buffer before its children, the decoder's positional
#: Parameter before token_embedding; a block: attn, attn_ln, cross_attn, cross_attn_ln, mlp, mlp_ln; an attention:
#: query, key, value, out.
_WHISPER_STEM = ("positional_embedding", "conv1", "conv2", "token_embedding")
_WHISPER_BLOCK = ("attn.query", "attn.key", "attn.value", "attn.out", "attn_ln", "cross_attn.query", "cross_attn.key")
_WHISPER_BLOCK += ("cross_attn.value", "cross_attn.out", "cross_attn_ln", "mlp.0", "mlp.2", "mlp_ln")


def _whisper_order(key: str) -> tuple[int, int, int]:
    tower, _, rest = key.partition(".")
    side = 0 if tower == "encoder" else 1
    if rest.startswith("blocks."):
        _, index, inner = rest.split(".", 2)
        return (side, 1 + int(index), next(i for i, p in enumerate(_WHISPER_BLOCK) if inner.startswith(p + ".")))
    stem = next((i for i, p in enumerate(_WHISPER_STEM) if rest.startswith(p)), None)
    return (side, 0, stem) if stem is not None else (side, 999, 0)


def whisper_openai() -> Case:
    model = tiny(
        "WhisperConfig",
        "WhisperForConditionalGeneration",
        vocab_size=64,
        num_mel_bins=8,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=8,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    expected = state(model)
    old = rewriter(_WHISPER)
    links = [Link((old(k),), (k,)) for k in expected if k != "proj_out.weight"]  # proj_out: tied to embed_tokens
    return from_expected(
        "whisper_openai",
        shapes=("multi_segment", "in_segment", "sequential", "prefix"),
        source=f"{_SCRIPT} models/whisper/convert_openai_to_hf.py (WHISPER_MAPPING; loads into `model.model`);"
        " OpenAI whisper/model.py registration order",
        note="OpenAI `decoder.blocks.N.cross_attn.query` -> `model.decoder.layers.N.encoder_attn.q_proj`, `mlp.0/2` ->"
        " `fc1/fc2` (a Sequential slot becomes a name), `attn_ln`/`mlp_ln` -> `self_attn_layer_norm`/"
        "`final_layer_norm`, `positional_embedding` -> `embed_positions.weight` (a segment inserted), `ln_post`/`ln`"
        " -> `layer_norm`; encoder and decoder blocks share every shape",
        expected=expected,
        links=links,
        order=_whisper_order,
    )


# --- OpenAI CLIP ----------------------------------------------------------------------------------------------------

_CLIP_TOWER = [
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm([12])\.", r".ln_\1."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]


def clip_openai() -> Case:
    """OpenAI's CLIP (``ViT-B/32.pt`` layout) into ``CLIPModel``: fused ``in_proj`` split, projections transposed."""
    text = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}
    vision = {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, "image_size": 16, "patch_size": 8}
    model = tiny(
        "CLIPConfig",
        "CLIPModel",
        text_config={**text, "num_attention_heads": 2, "max_position_embeddings": 8},
        vision_config={**vision, "num_attention_heads": 2},
        projection_dim=8,
    )
    expected = state(model)
    old = rewriter(_CLIP_TOWER)
    links = [
        Link(("text_projection",), ("text_projection.weight",), TRANSPOSE),
        Link(("visual.proj",), ("visual_projection.weight",), TRANSPOSE),
    ]
    for key in expected:
        if key.endswith("projection.weight"):
            continue
        if ".self_attn." in key and "out_proj" not in key:
            if ".q_proj." in key:  # the fused in_proj: q, k, v stacked along rows
                fused = old(re.sub(r"\.self_attn\.q_proj\.(weight|bias)$", r".attn.in_proj_\1", key))
                parts = tuple(key.replace(".q_proj.", f".{x}_proj.") for x in "qkv")
                links.append(Link((fused,), parts, SPLIT))
            continue
        links.append(Link((old(key),), (key,)))
    # clip/model.py: CLIP's own Parameters first, then visual (its Parameters, conv1, ln_pre, transformer, ln_post),
    # the text transformer, token_embedding, ln_final; a block attn (in_proj, out_proj), ln_1, mlp, ln_2. The JIT
    # archives OpenAI publishes also hold three integer entries that build_model deletes.
    first = ["positional_embedding", "text_projection", "logit_scale"]
    visual = ["visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1", "visual.ln_pre"]
    inner = [".attn.in_proj_weight", ".attn.in_proj_bias", ".attn.out_proj", ".ln_1", ".mlp.c_fc", ".mlp.c_proj"]

    def order(key: str) -> tuple[int, int, int]:
        if key in first:
            return (0, first.index(key), 0)
        for i, prefix in enumerate(visual):
            if key.startswith(prefix):
                return (1, i, 0)
        tower = 2 if key.startswith("visual.") else 4
        if ".resblocks." in key:
            block = int(key.split(".resblocks.")[1].split(".")[0])
            return (tower, block, next((i for i, p in enumerate(inner) if p in key), len(inner)))
        return {"visual.ln_post": (3, 0, 0), "token_embedding": (5, 0, 0), "ln_final": (6, 0, 0)}.get(
            key.rsplit(".", 1)[0], (7, 0, 0)
        )

    import torch

    integers = {"input_resolution": 16, "context_length": 8, "vocab_size": 64}
    return from_expected(
        "clip_openai",
        shapes=("fused", "multi_segment", "prefix"),
        source=f"{_SCRIPT} models/clip/convert_clip_original_pytorch_to_hf.py (copies module by module: in_proj"
        " split in three, text_projection/proj transposed); OpenAI clip/model.py layout and build_model",
        note="`transformer.resblocks.N` -> `text_model.encoder.layers.N`, `visual.transformer.resblocks.N` ->"
        " `vision_model.encoder.layers.N`, fused `attn.in_proj_weight/bias` split into q/k/v_proj, `ln_1/2` ->"
        " `layer_norm1/2`, `c_fc/c_proj` -> `fc1/fc2`, `visual.conv1` -> `patch_embedding`, the two projections"
        " (bare Parameters) transposed into `*_projection.weight`; JIT integers `input_resolution` etc. unused",
        expected=expected,
        links=links,
        orphans={k: torch.tensor(v) for k, v in integers.items()},
        order=order,
    )


# --- Megatron-LM GPT-2 ----------------------------------------------------------------------------------------------

_MEGATRON = [
    (r"^transformer\.wte\.", "language_model.embedding.word_embeddings."),
    (r"^transformer\.wpe\.", "language_model.embedding.position_embeddings."),
    (r"^transformer\.ln_f\.", "language_model.transformer.final_layernorm."),
    (r"^transformer\.h\.", "language_model.transformer.layers."),
    (r"\.ln_1\.", ".input_layernorm."),
    (r"\.ln_2\.", ".post_attention_layernorm."),
    (r"\.attn\.c_attn\.", ".attention.query_key_value."),
    (r"\.attn\.c_proj\.", ".attention.dense."),
    (r"\.mlp\.c_fc\.", ".mlp.dense_h_to_4h."),
    (r"\.mlp\.c_proj\.", ".mlp.dense_4h_to_h."),
]


def megatron_gpt2() -> Case:
    """NVIDIA's Megatron-LM GPT-2 (checkpoint version 0: q, k, v in row blocks, no per-head reordering) into
    ``GPT2LMHeadModel``: every Linear weight transposed into GPT-2's ``Conv1D``."""
    model = tiny("GPT2Config", "GPT2LMHeadModel", vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    expected = state(model)
    old = rewriter(_MEGATRON)
    conv1d = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
    links = [
        Link((old(k),), (k,), TRANSPOSE if k.endswith(conv1d) else "rename")
        for k in expected
        if k != "lm_head.weight"  # the script ties it to the word embeddings
    ]
    return from_expected(
        "megatron_gpt2",
        shapes=("multi_segment", "fused", "prefix"),
        source=f"{_SCRIPT} models/megatron_gpt2/convert_megatron_gpt2_checkpoint.py (layer regex, the"
        " megatron_to_transformers table, transposes; checkpoint_version 0 keeps the qkv row order)",
        note="`language_model.transformer.layers.N.attention.query_key_value` -> `transformer.h.N.attn.c_attn`"
        " (transposed), `attention.dense` -> `attn.c_proj` (square: only the truth says transpose), `mlp.dense_h_to_4h/"
        "4h_to_h` -> `mlp.c_fc/c_proj`, `input_/post_attention_layernorm` -> `ln_1/2`, `embedding.word_embeddings` ->"
        " `wte`, `final_layernorm` -> `ln_f`",
        expected=expected,
        links=links,
    )


# --- state-spaces Mamba ---------------------------------------------------------------------------------------------


def mamba_ssm() -> Case:
    model = tiny(
        "MambaConfig",
        "MambaForCausalLM",
        vocab_size=64,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        time_step_rank=2,
        tie_word_embeddings=False,
    )
    expected = state(model)
    return from_expected(
        "mamba_ssm",
        shapes=("single_key",),
        source=f"{_SCRIPT} models/mamba/convert_mamba_ssm_checkpoint_to_pytorch.py (`backbone.embedding` ->"
        " `backbone.embeddings`); mamba_ssm's MambaLMHeadModel layout",
        note="state-spaces `backbone.embedding.weight` -> `backbone.embeddings.weight`; every `mixer` key keeps its"
        " name",
        expected=expected,
        links=[Link((k.replace("backbone.embeddings.", "backbone.embedding."),), (k,)) for k in expected],
    )


# --- Segment Anything -----------------------------------------------------------------------------------------------

#: Hugging Face name -> original name, from ``KEYS_TO_MODIFY_MAPPING`` and the hypernetwork-MLP rule of
#: transformers' ``convert_sam_to_hf.py``, read backward. Applied in order.
_SAM = [
    (r"^vision_encoder\.layers\.", "image_encoder.blocks."),
    (r"^vision_encoder\.", "image_encoder."),
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    (r"\.neck\.conv1\.", ".neck.0."),
    (r"\.neck\.layer_norm1\.", ".neck.1."),
    (r"\.neck\.conv2\.", ".neck.2."),
    (r"\.neck\.layer_norm2\.", ".neck.3."),
    (r"\.mask_embed\.conv1\.", ".mask_downscaling.0."),
    (r"\.mask_embed\.layer_norm1\.", ".mask_downscaling.1."),
    (r"\.mask_embed\.conv2\.", ".mask_downscaling.3."),
    (r"\.mask_embed\.layer_norm2\.", ".mask_downscaling.4."),
    (r"\.mask_embed\.conv3\.", ".mask_downscaling.6."),
    (r"\.upscale_conv1\.", ".output_upscaling.0."),
    (r"\.upscale_layer_norm\.", ".output_upscaling.1."),
    (r"\.upscale_conv2\.", ".output_upscaling.3."),
    (r"\.layer_norm(\d|_final_attn)\.", r".norm\1."),
    (r"\.point_embed\.", ".point_embeddings."),
    (r"\.shared_embedding\.positional_embedding$", ".pe_layer.positional_encoding_gaussian_matrix"),
    (r"\.layers\.0\.(weight|bias)$", r".layers.1.\1"),  # the MLP heads: 3 numbered layers -> proj_in, layers, out
    (r"\.proj_in\.", ".layers.0."),
    (r"\.proj_out\.", ".layers.2."),
]


_SAM_SEQUENCE = re.compile(r"^(.*\.(?:layers|mask_downscaling|output_upscaling))\.(\d+)\.(?:weight|bias)$")


def _sam_order(keys: list[str]) -> Callable[[str], tuple[int, int, int]]:
    """segment_anything's order: Sam's pixel buffers, then image_encoder, prompt_encoder, mask_decoder; the members of
    a numbered Sequential / ModuleList in index order, where its first member stands among the links."""
    first: dict[str, int] = {}
    for position, key in enumerate(keys):
        match = _SAM_SEQUENCE.match(key)
        first.setdefault(match[1] if match else key, position)
    top = ("image_encoder", "prompt_encoder", "mask_decoder")

    def order(key: str) -> tuple[int, int, int]:
        rank = next((i for i, t in enumerate(top) if key.startswith(t)), -1)
        match = _SAM_SEQUENCE.match(key)
        return (rank, first.get(match[1] if match else key, -1), int(match[2]) if match else 0)

    return order


def sam_original() -> Case:
    model = tiny(
        "SamConfig",
        "SamModel",
        vision_config={
            "hidden_size": 16,
            "output_channels": 8,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "mlp_dim": 32,
            "global_attn_indexes": [1],
            "window_size": 2,
            "num_pos_feats": 4,
        },
        prompt_encoder_config={"hidden_size": 8, "image_size": 32, "patch_size": 8, "mask_input_channels": 4},
        mask_decoder_config={
            "hidden_size": 8,
            "mlp_dim": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_multimask_outputs": 3,
            "iou_head_depth": 3,
            "iou_head_hidden_dim": 16,
        },
    )
    expected = state(model)
    old = rewriter(_SAM)
    # the script copies the prompt encoder's gaussian matrix to `shared_image_embedding` too: not a key of its own
    links = [Link((old(k),), (k,)) for k in expected if not k.startswith("shared_image_embedding.")]
    pixel = {name: seeded(name, (3, 1, 1)) for name in ("pixel_mean", "pixel_std")}
    order = _sam_order([link.old[0] for link in links])
    return from_expected(
        "sam_original",
        shapes=("index_map", "exact_match_trap", "sequential", "multi_segment"),
        source=f"{_SCRIPT} models/sam/convert_sam_to_hf.py (KEYS_TO_MODIFY_MAPPING, the output_hypernetworks_mlps"
        " rule; `pixel_mean/std` dropped); segment_anything's Sam layout",
        note="`image_encoder.blocks.N.norm1` -> `vision_encoder.layers.N.layer_norm1`, Sequential slots become names"
        " (`neck.0..3`, `mask_downscaling.0/1/3/4/6`, `output_upscaling.0/1/3`), the MLP heads' `layers.0/1/2` ->"
        " `proj_in`/`layers.0`/`proj_out`: `output_hypernetworks_mlps.N.layers.0` is an expected name with the same"
        " shape but holds `layers.1`",
        expected=expected,
        links=links,
        orphans=pixel,
        order=order,
    )


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f for f in (whisper_openai, clip_openai, megatron_gpt2, mamba_ssm, sam_original)
}
