"""Original layouts and the conversion scripts their projects publish: Meta's Llama ``consolidated`` checkpoints
(both ways), GPT-2's ``Conv1D`` weights loaded into ``nn.Linear`` (nanoGPT), torchvision's ResNet and timm's ViT
loaded into transformers. The transformers side of each is built by transformers; the other side from the names
the published script reads."""

from __future__ import annotations

from collections.abc import Callable

from corpus._case import PERMUTE_ROPE, RENAME, SPLIT, TRANSPOSE, Case, Link, from_expected, seeded
from corpus._hf import DECODER, state, tiny

#: Hugging Face Llama name -> Meta name (``layers.N.`` prefix and ``.weight`` kept), from the published conversion
#: script (transformers' ``convert_llama_weights_to_hf.py``).
_LLAMA_LAYER = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_LLAMA_TOP = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}


def _meta_name(key: str) -> str:
    module, _, leaf = key.rpartition(".")
    if module in _LLAMA_TOP:
        return f"{_LLAMA_TOP[module]}.{leaf}"
    _, _, rest = module.partition("model.layers.")
    index, _, inner = rest.partition(".")
    return f"layers.{index}.{_LLAMA_LAYER[inner]}.{leaf}"


def _llama_links(expected: dict[str, object], heads: int, kv_heads: int, *, to_meta: bool) -> list[Link]:
    links = []
    for key in expected:
        meta = _meta_name(key)
        old, new = (key, meta) if to_meta else (meta, key)
        if ".q_proj." in key or ".k_proj." in key:
            count = heads if ".q_proj." in key else kv_heads
            links.append(Link((old,), (new,), PERMUTE_ROPE, heads=count, inverse=to_meta))
        else:
            links.append(Link((old,), (new,), RENAME))
    return links


def llama_consolidated() -> Case:
    values = {**DECODER, "num_attention_heads": 4, "num_key_value_heads": 2}
    model = tiny("LlamaConfig", "LlamaForCausalLM", **values)
    expected = state(model)
    head_dim = values["hidden_size"] // values["num_attention_heads"]
    case = from_expected(
        "llama_consolidated",
        shapes=("multi_segment", "prefix"),
        source="published script read: transformers convert_llama_weights_to_hf.py (names; q/k `permute`),"
        " the permutation cross-checked with transformers' PermuteForRope",
        note="Meta `layers.N.attention.wq` -> `model.layers.N.self_attn.q_proj` (+ rotary permutation of q/k rows),"
        " `feed_forward.w1/w2/w3` -> `mlp.gate/down/up_proj`, `tok_embeddings`, `output`, `norm`; `rope.freqs` unused",
        expected=expected,
        links=_llama_links(expected, values["num_attention_heads"], values["num_key_value_heads"], to_meta=False),
        orphans={"rope.freqs": seeded("rope.freqs", (head_dim // 2,))},
        order=_meta_order,
    )
    case.tags["heads"] = (values["num_attention_heads"], values["num_key_value_heads"])
    return case


def llama_hf_to_consolidated() -> Case:
    """The other way: a Hugging Face checkpoint loaded into Meta's reference ``Transformer``."""
    values = {**DECODER, "num_attention_heads": 4, "num_key_value_heads": 2}
    model = tiny("LlamaConfig", "LlamaForCausalLM", **values)
    hf = state(model)
    links = _llama_links(hf, values["num_attention_heads"], values["num_key_value_heads"], to_meta=True)
    expected = {}
    for link in links:
        shapes = [tuple(hf[link.old[0]].shape)]
        expected[link.new[0]] = link.forward([hf[link.old[0]]], shapes)[0]
    expected = dict(sorted(expected.items(), key=lambda item: _meta_order(item[0])))
    return Case(
        "llama_hf_to_consolidated",
        ("multi_segment", "prefix"),
        "published script read: transformers convert_llama_weights_to_hf.py, run backward",
        "Hugging Face `model.layers.N.self_attn.q_proj` -> Meta `layers.N.attention.wq` (rotary permutation undone)",
        hf,
        expected,
        links,
    )


def _meta_order(key: str) -> tuple[int, int]:
    """Meta's ``Transformer`` registers ``tok_embeddings``, ``layers``, ``norm``, ``output`` (then ``rope.freqs``);
    within a layer, ties keep the links' order."""
    parts = key.split(".")
    if parts[0] == "layers":
        return (1, int(parts[1]))
    return ({"tok_embeddings": 0, "norm": 2, "output": 3}.get(parts[0], 4), 0)


def gpt2_to_nanogpt() -> Case:
    """Hugging Face GPT-2 (``Conv1D``, weights stored ``[in, out]``) into nanoGPT's ``nn.Linear`` model."""
    gpt2 = tiny("GPT2Config", "GPT2LMHeadModel", vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    checkpoint = state(gpt2)
    del checkpoint["lm_head.weight"]  # tied to transformer.wte: save_pretrained leaves it out
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    links = [Link((key,), (key,), TRANSPOSE if key.endswith(conv1d) else RENAME) for key in checkpoint]
    expected = {}
    for link in links:
        tensor = checkpoint[link.old[0]]
        expected[link.new[0]] = (tensor.t() if link.op == TRANSPOSE else tensor).contiguous().clone()
    expected["lm_head.weight"] = expected["transformer.wte.weight"]  # nanoGPT ties them (one tensor)
    return Case(
        "gpt2_to_nanogpt",
        ("fused",),
        "published script read: nanoGPT model.py `GPT.from_pretrained` (transposes the four Conv1D weights);"
        " checkpoint written by transformers' GPT2LMHeadModel",
        "same names, but `c_attn`/`c_proj`/`c_fc` are Conv1D `[in, out]`: transposed into nn.Linear; `attn.c_proj`"
        " is square, so only the truth tells it needs transposing",
        checkpoint,
        expected,
        links,
    )


def resnet_torchvision_to_hf() -> Case:
    """A torchvision ResNet (BasicBlock) checkpoint into transformers' ``ResNetForImageClassification``."""
    model = tiny(
        "ResNetConfig",
        "ResNetForImageClassification",
        embedding_size=8,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        num_labels=10,
    )
    expected = state(model)

    def torchvision_name(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        fixed = {
            "resnet.embedder.embedder.convolution": "conv1",
            "resnet.embedder.embedder.normalization": "bn1",
            "classifier.1": "fc",
        }
        if module in fixed:
            return f"{fixed[module]}.{leaf}"
        parts = module.split(".")  # resnet.encoder.stages.S.layers.B.(layer.I|shortcut).(convolution|normalization)
        stage, block, rest = int(parts[3]), parts[5], parts[6:]
        if rest[0] == "shortcut":
            inner = "downsample.0" if rest[1] == "convolution" else "downsample.1"
        else:
            inner = ("conv" if rest[2] == "convolution" else "bn") + str(int(rest[1]) + 1)
        return f"layer{stage + 1}.{block}.{inner}.{leaf}"

    def torchvision_order(key: str) -> tuple[int, int]:  # ties keep the links' order (weight, bias, running_*)
        head, _, rest = key.partition(".")
        if head.startswith("layer"):
            block_part = rest.split(".", 1)[1]
            rank = ["conv1", "bn1", "conv2", "bn2", "downsample"].index(block_part.split(".")[0])
            return (int(head[5:]), rank)
        return (0 if head in ("conv1", "bn1") else 9, 0 if head == "conv1" else 1)

    return from_expected(
        "resnet_torchvision_to_hf",
        shapes=("multi_segment", "in_segment", "sequential", "prefix"),
        source="published script read: transformers convert_resnet_to_pytorch.py (modules paired in traversal"
        " order); torchvision's ResNet key layout; expected side built by transformers",
        note="every segment changes: `layer1.0.conv1` -> `resnet.encoder.stages.0.layers.0.layer.0.convolution`"
        " (1-based `layerN` -> `stages.N-1`, `convK`/`bnK` -> `layer.K-1.convolution/normalization`),"
        " `downsample.0/1` -> `shortcut.convolution/normalization`, `fc` -> `classifier.1`",
        expected=expected,
        links=[Link((torchvision_name(k),), (k,)) for k in expected],
        order=torchvision_order,
    )


def vit_timm_to_hf() -> Case:
    """A timm ViT checkpoint into transformers' ``ViTForImageClassification``: the published script's renames and
    q/k/v split, onto the names transformers 5 uses (``vit.layers.N.attention.q_proj``)."""
    model = tiny(
        "ViTConfig",
        "ViTForImageClassification",
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
        num_labels=10,
    )
    expected = state(model)
    fixed = {
        "vit.embeddings.cls_token": "cls_token",
        "vit.embeddings.position_embeddings": "pos_embed",
        "vit.layernorm.weight": "norm.weight",
        "vit.layernorm.bias": "norm.bias",
        "classifier.weight": "head.weight",
        "classifier.bias": "head.bias",
    }
    inner = {
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "attention.o_proj": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    links = []
    layers = model.config.num_hidden_layers
    for key in expected:
        if key in fixed:
            links.append(Link((fixed[key],), (key,)))
        elif key.startswith("vit.embeddings.patch_embeddings.projection."):
            links.append(
                Link((key.replace("vit.embeddings.patch_embeddings.projection.", "patch_embed.proj."),), (key,))
            )
        elif ".attention." in key and key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
            continue  # the split below
        else:
            _, _, index, rest = key.split(".", 3)
            module, _, leaf = rest.rpartition(".")
            links.append(Link((f"blocks.{index}.{inner[module]}.{leaf}",), (key,)))
    for i in range(layers):
        for leaf in ("weight", "bias"):
            targets = tuple(f"vit.layers.{i}.attention.{x}_proj.{leaf}" for x in "qkv")
            links.append(Link((f"blocks.{i}.attn.qkv.{leaf}",), targets, SPLIT))
    timm_order = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(layers):
        timm_order += [
            f"blocks.{i}.{m}.{x}"
            for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
            for x in ("weight", "bias")
        ]
    timm_order += ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    index = {k: i for i, k in enumerate(timm_order)}
    return from_expected(
        "vit_timm_to_hf",
        shapes=("fused", "multi_segment", "prefix"),
        source="published script read: transformers convert_vit_timm_to_pytorch.py (rename_keys, read_in_q_k_v),"
        " then transformers 5.24's ViT renames (round-tripped in vit_legacy)",
        note="timm `blocks.N.attn.qkv` split into `vit.layers.N.attention.q/k/v_proj`, `norm1/2` ->"
        " `layernorm_before/after`, `attn.proj` -> `attention.o_proj`, `cls_token`/`pos_embed` -> `vit.embeddings.*`,"
        " `norm` -> `vit.layernorm`, `head` -> `classifier`",
        expected=expected,
        links=links,
        order=lambda key: index[key],
    )


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f
    for f in (llama_consolidated, llama_hf_to_consolidated, gpt2_to_nanogpt, resnet_torchvision_to_hf, vit_timm_to_hf)
}
