"""How module names compare: tokens, published naming equivalents, and a similarity that breaks ties.

Names are *soft* evidence. They never make a mapping safe on their own: they choose among candidates that the hard
constraints (shapes, index structure) already allow, and such a choice is at most ``unsafe``. So the table below
only lists equivalences that published conversions use (the original Llama / Mistral layouts, GPT-2, GPT-NeoX,
BERT, T5, Falcon, timm and diffusers conversions), each as a group of names that mean the same module; a name may sit
in several groups when projects disagree (``wo`` is an attention output in Llama and an MLP output in T5): the path
around it then decides, or nothing does.
"""

from __future__ import annotations

import functools
import re
from typing import Final

#: Groups of module names that published conversions treat as the same module.
EQUIVALENT_NAMES: Final[tuple[tuple[str, ...], ...]] = (
    # attention projections
    ("q_proj", "wq", "query", "q", "to_q", "q_lin", "query_proj", "q_layer"),
    ("k_proj", "wk", "key", "k", "to_k", "k_lin", "key_proj", "k_layer"),
    ("v_proj", "wv", "value", "v", "to_v", "v_lin", "value_proj", "v_layer"),
    ("o_proj", "wo", "out_proj", "to_out", "out_lin", "o", "out", "c_proj", "proj_out", "dense", "proj", "attn_out"),
    ("qkv_proj", "wqkv", "qkv", "c_attn", "query_key_value", "w_pack", "in_proj", "to_qkv"),
    ("kv_proj", "wkv", "kv", "to_kv", "key_value"),
    # cross-attention (encoder-decoder models; diffusers' second attention of a transformer block)
    ("encoder_attn", "cross_attn", "cross_attention", "crossattention", "encoder_attention", "src_attn", "attn2"),
    ("encoder_attn_layer_norm", "cross_attn_ln", "cross_attn_layer_norm", "cross_attention_layernorm", "ln_cross_attn"),
    # gated MLPs (SwiGLU): w1 is the gate, w3 the up projection, w2 the down projection
    ("gate_proj", "w1", "wi_0", "gate", "w_gate", "fc_gate"),
    ("up_proj", "w3", "wi_1", "up", "w_up", "fc_up"),
    ("down_proj", "w2", "wo", "down", "w_down", "fc_down", "fc2", "c_proj", "dense_4h_to_h", "fc_out", "lin2"),
    # plain MLPs
    ("fc1", "c_fc", "fc_in", "dense_h_to_4h", "lin1", "intermediate", "up_proj", "wi"),
    ("gate_up_proj", "w13", "w12", "fc1_gate_up", "gate_up"),
    # blocks and their parts
    ("self_attn", "attention", "attn", "self_attention", "mixer", "attn_layer", "self"),
    ("mlp", "feed_forward", "ffn", "feedforward", "block_sparse_moe", "ff", "mlp_block", "channel_mixer"),
    # pre-norm blocks (Llama, Mistral, GPT-2): the norm before attention, the norm before the MLP. Numbered norms
    # (norm1 / norm2) are left out on purpose: post-norm models number the norms *after* attention and the MLP.
    (
        "input_layernorm",
        "attention_norm",
        "ln_1",
        "ln1",
        "attn_norm",
        "self_attn_layer_norm",
        "layernorm_before",
        "input_norm",
        "pre_attention_layernorm",
        "attention_layernorm",
        "attn_ln",
    ),
    (
        "post_attention_layernorm",
        "ffn_norm",
        "ln_2",
        "ln2",
        "mlp_norm",
        "layernorm_after",
        "pre_feedforward_layernorm",
        "ffn_layernorm",
        "post_attn_norm",
        "mlp_ln",
    ),
    ("layers", "layer", "h", "blocks", "block", "resblocks", "transformer_blocks", "decoder_layers"),
    # ViT-style pre-norm blocks name the norms by position; numbered norms read the same way there
    ("layernorm_before", "norm1", "layer_norm_1", "ln_1", "ln1", "norm_1"),
    ("layernorm_after", "norm2", "layer_norm_2", "ln_2", "ln2", "norm_2"),
    # whole-model parts
    ("classifier", "head", "fc", "score", "cls"),
    (
        "norm",
        "ln_f",
        "final_layernorm",
        "final_layer_norm",
        "norm_f",
        "final_norm",
        "norm_out",
        "ln_out",
        "ln_final",
        "ln_post",
        "post_layernorm",
    ),
    # the norm before the first block (CLIP's vision tower; transformers spells it ``pre_layrnorm``)
    ("pre_layernorm", "pre_layrnorm", "ln_pre", "norm_pre"),
    (
        "embed_tokens",
        "tok_embeddings",
        "wte",
        "word_embeddings",
        "embed_in",
        "token_embedding",
        "tok_embed",
        "shared",
        "word_embedding",
        "token_embeddings",
        "embeddings",
        "embedding",
        "embed",
    ),
    (
        "embed_positions",
        "wpe",
        "position_embeddings",
        "pos_embed",
        "pos_embedding",
        "position_embedding",
        "positional_embedding",
    ),
    ("lm_head", "output", "embed_out", "output_layer", "head", "logits"),
    # vision / diffusion
    ("patch_embed", "patch_embeddings", "patch_embedding", "stem", "conv_stem", "to_patch_embedding"),
    ("downsample", "downsample_layers", "downsamplers", "downsampling", "reduction", "down", "downsample_layer"),
    ("upsample", "upsamplers", "upsampling", "up", "upsample_layers"),
    ("resnets", "res_blocks", "resblocks", "block", "blocks"),
    ("attentions", "attn_blocks", "attn", "attention_blocks"),
    ("stages", "levels", "stage", "level", "layers"),
    ("mid_block", "mid", "middle_block", "middle"),
    ("conv_shortcut", "skip_connection", "nin_shortcut", "shortcut"),
    ("time_emb_proj", "emb_layers", "temb_proj", "time_embedding"),
    ("conv_in", "conv_first", "stem_conv"),
    ("conv_out", "conv_last"),
)

#: Token-level synonyms (whole tokens after splitting a name on separators, case and digits).
_TOKEN_SYNONYMS: Final[dict[str, str]] = {
    "attention": "attn",
    "self": "attn",
    "layernorm": "norm",
    "ln": "norm",
    "bn": "norm",
    "batchnorm": "norm",
    "groupnorm": "norm",
    "gn": "norm",
    "rmsnorm": "norm",
    "embedding": "embed",
    "embeddings": "embed",
    "emb": "embed",
    "embeds": "embed",
    "projection": "proj",
    "linear": "fc",
    "dense": "fc",
    "convolution": "conv",
    "feedforward": "mlp",
    "ffn": "mlp",
    "ff": "mlp",
    "feed": "mlp",
    "forward": "mlp",
    "downsampling": "downsample",
    "upsampling": "upsample",
    "layers": "layer",
    "blocks": "block",
    "stages": "stage",
    "levels": "stage",
    "level": "stage",
}

_CAMEL: Final = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
_SPLIT: Final = re.compile(r"[._\-\s]+")


@functools.lru_cache(maxsize=65536)
def tokens(name: str) -> tuple[str, ...]:
    """Lower-case tokens of a name: ``selfAttn_layer2`` -> ``('self', 'attn', 'layer', '2')``."""
    out: list[str] = []
    for piece in _SPLIT.split(name):
        for token in _CAMEL.sub(" ", piece).split():
            lowered = token.lower()
            if lowered:
                out.append(lowered)
    return tuple(out)


def _canonical_token(token: str) -> str:
    token = _TOKEN_SYNONYMS.get(token, token)
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        token = _TOKEN_SYNONYMS.get(token[:-1], token[:-1])
    return token


@functools.lru_cache(maxsize=65536)
def canonical_tokens(name: str) -> frozenset[str]:
    """Tokens with synonyms and plurals folded (``layer_norm`` and ``LayerNorms`` give the same set)."""
    return frozenset(_canonical_token(t) for t in tokens(name))


def _plain(name: str) -> str:
    """The name with case, separators and plurals set aside (``LayerNorm``, ``layer_norms`` -> ``layernorm``);
    token synonyms are *not* applied here: ``ln_2`` and ``norm2`` stay different names."""
    return "".join(_singular(t) for t in tokens(name))


def _singular(token: str) -> str:
    return token[:-1] if len(token) > 3 and token.endswith("s") and not token.endswith("ss") else token


_GROUPS_OF: Final[dict[str, frozenset[int]]] = {}
for _index, _group in enumerate(EQUIVALENT_NAMES):
    for _name in _group:
        for _form in {_name.lower(), _plain(_name)}:
            _GROUPS_OF[_form] = _GROUPS_OF.get(_form, frozenset()) | {_index}


def _groups(name: str) -> frozenset[int]:
    return _GROUPS_OF.get(name.lower(), frozenset()) | _GROUPS_OF.get(_plain(name), frozenset())


def name_groups(name: str) -> frozenset[int]:
    """The equivalence groups a module name belongs to (``q_proj`` and ``wq`` share one)."""
    return _groups(name)


def spelled_parts(name: str) -> list[frozenset[int]]:
    """The modules a fused name spells, in order: ``qkv_proj``, ``Wqkv`` and ``query_key_value`` spell the query,
    key and value projections; ``up_gate_proj`` the up then the gate projection. Empty when it spells nothing."""
    out: list[frozenset[int]] = []
    for token in tokens(name):
        letters = token[1:] if token.startswith("w") and len(token) > 2 else token
        if 2 <= len(letters) <= 3 and all(ch in "qkv" for ch in letters):
            out.extend(_groups(ch) for ch in letters)
        elif token not in _GENERIC and (groups := _groups(token)):
            out.append(groups)
    return out


#: Tokens that name no part of a fused tensor (``qkv_proj`` spells q, k, v; ``proj`` spells nothing).
_GENERIC: Final = frozenset({"proj", "projection", "linear", "fc", "dense", "layer", "w", "weight", "in", "out"})


@functools.lru_cache(maxsize=65536)
def same_name(a: str, b: str) -> bool:
    """Equal once case, separators and plurals are set aside (``layer_norm`` / ``LayerNorm``)."""
    return a == b or (bool(tokens(a)) and _plain(a) == _plain(b))


@functools.lru_cache(maxsize=65536)
def known_equivalent(a: str, b: str) -> bool:
    """True when a published convention names the module ``a`` as ``b`` (or ``b`` as ``a``)."""
    return bool(_groups(a) & _groups(b))


@functools.lru_cache(maxsize=65536)
def segment_similarity(a: str, b: str) -> float:
    """How alike two module names are: 1 equal (up to spelling) or a published equivalent; otherwise the overlap
    of their canonical tokens (Dice), halved, so that a partial overlap never outweighs a convention."""
    if same_name(a, b) or known_equivalent(a, b):
        return 1.0
    ta, tb = canonical_tokens(a), canonical_tokens(b)
    if not ta or not tb:
        return 0.0
    return 0.5 * (2 * len(ta & tb) / (len(ta) + len(tb)))


def path_similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """Similarity of two module paths (segments, numbers left out), weighted towards their last segments.

    The module's own name weighs most, its parent's half as much, the rest of the path a little (as a whole)."""
    if not a or not b:
        return 0.0
    score = segment_similarity(a[-1], b[-1])
    if len(a) > 1 and len(b) > 1:
        score += 0.5 * segment_similarity(a[-2], b[-2])
    rest_a = frozenset().union(*(canonical_tokens(s) for s in a[:-2])) if len(a) > 2 else frozenset()
    rest_b = frozenset().union(*(canonical_tokens(s) for s in b[:-2])) if len(b) > 2 else frozenset()
    if rest_a and rest_b:
        score += 0.25 * (2 * len(rest_a & rest_b) / (len(rest_a) + len(rest_b)))
    return score


def path_tokens(path: tuple[str, ...]) -> tuple[str, ...]:
    """The tokens of a whole module path, in order, with case, separators and plurals set aside (no synonyms)."""
    return tuple(_singular(t) for segment in path for t in tokens(segment))


def same_path(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """The two paths end alike once separators are set aside: one is the end of the other
    (``lora_unet_down_blocks_0_proj_in`` against ``unet.down_blocks.0.proj_in``), or is once its first segment,
    a root of another name, is set aside (``lora_te_text_model...`` against ``text_encoder.text_model...``): the
    same module, named as another tool flattens it."""
    if _ends(path_tokens(a), path_tokens(b)):
        return True
    for one, other in ((a, b), (b, a)):
        rest = path_tokens(one[1:])
        if len(one) >= 3 and len(rest) >= 3 and _ends(rest, path_tokens(other)):
            return True
    return False


def _ends(ta: tuple[str, ...], tb: tuple[str, ...]) -> bool:
    shorter, longer = (ta, tb) if len(ta) <= len(tb) else (tb, ta)
    return len(shorter) >= 2 and longer[len(longer) - len(shorter) :] == shorter
