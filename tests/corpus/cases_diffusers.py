"""Conversions diffusers publishes for original Stable Diffusion files (``loaders/single_file_utils.py``,
``loaders/lora_conversion_utils.py``).

diffusers is not installed. Both layouts of a tiny SD-1.x-like UNet, VAE and LoRA are generated here as key ->
shape tables from reading the original (LDM) modules, diffusers' modules and its conversion functions (never their
code). When the cases were written, each truth was also checked by running diffusers' own conversion functions
(commit 58eb52c0, outside this repository) on the case's checkpoint: every output key and tensor equal to the
expected.
"""

from __future__ import annotations

from collections.abc import Callable

from corpus._case import RESHAPE, Case, Link, from_expected, reversed_case, seeded

SOURCE = "published script read (and run on the case, outside this repo): diffusers"

Shapes = dict[str, tuple[int, ...]]


class _Pairs:
    """Both layouts built side by side: each entry is (new key, old key, shape); old-layout order kept apart."""

    def __init__(self) -> None:
        self.new: Shapes = {}
        self.old_of: dict[str, str] = {}
        self.old_order: list[str] = []
        self.reshape: dict[str, tuple[int, ...]] = {}  # new key -> old shape, for keys whose shape changes

    def add(self, new: str, old: str, shape: tuple[int, ...], old_shape: tuple[int, ...] | None = None) -> None:
        self.new[new] = shape
        self.old_of[new] = old
        self.old_order.append(old)
        if old_shape is not None:
            self.reshape[new] = old_shape

    def norm(self, new: str, old: str, dim: int) -> None:
        for leaf in ("weight", "bias"):
            self.add(f"{new}.{leaf}", f"{old}.{leaf}", (dim,))

    def conv(self, new: str, old: str, cout: int, cin: int, k: int, *, bias: bool = True) -> None:
        self.add(f"{new}.weight", f"{old}.weight", (cout, cin, k, k))
        if bias:
            self.add(f"{new}.bias", f"{old}.bias", (cout,))

    def linear(self, new: str, old: str, cout: int, cin: int, *, bias: bool = True) -> None:
        self.add(f"{new}.weight", f"{old}.weight", (cout, cin))
        if bias:
            self.add(f"{new}.bias", f"{old}.bias", (cout,))

    def case(
        self,
        name: str,
        *,
        shapes: tuple[str, ...],
        source: str,
        note: str,
        prefix: str = "",
        orphans: Shapes | None = None,
        sort: bool = False,
    ) -> Case:
        """The case; ``orphans``: old keys with no counterpart; ``sort``: the checkpoint in name order (a
        safetensors file lists its keys sorted), else in the old modules' registration order."""
        links = []
        for key in self.new:
            old = prefix + self.old_of[key]
            if key in self.reshape:
                links.append(Link((old,), (key,), RESHAPE, shape=self.reshape[key]))
            else:
                links.append(Link((old,), (key,)))
        index = {prefix + k: i for i, k in enumerate(self.old_order)}
        return from_expected(
            name,
            shapes=shapes,
            source=source,
            note=note,
            expected={k: seeded(k, s) for k, s in self.new.items()},
            links=links,
            orphans={k: seeded(k, v) for k, v in (orphans or {}).items()},
            order=(lambda key: key) if sort else (lambda key: index.get(key, len(index))),
        )


# ------------------------------------------------------------------------------------------------------------- UNet
def _unet_resnet(p: _Pairs, new: str, old: str, cin: int, cout: int, temb: int) -> None:
    """diffusers ``ResnetBlock2D`` <- LDM ``ResBlock`` (``in_layers.0/2``, ``emb_layers.1``, ``out_layers.0/3``)."""
    p.norm(f"{new}.norm1", f"{old}.in_layers.0", cin)
    p.conv(f"{new}.conv1", f"{old}.in_layers.2", cout, cin, 3)
    p.linear(f"{new}.time_emb_proj", f"{old}.emb_layers.1", cout, temb)
    p.norm(f"{new}.norm2", f"{old}.out_layers.0", cout)
    p.conv(f"{new}.conv2", f"{old}.out_layers.3", cout, cout, 3)
    if cin != cout:
        p.conv(f"{new}.conv_shortcut", f"{old}.skip_connection", cout, cin, 1)


def _unet_transformer(p: _Pairs, new: str, old: str, dim: int, context: int) -> None:
    """diffusers ``Transformer2DModel`` <- LDM ``SpatialTransformer``: the same names under another parent."""
    p.norm(f"{new}.norm", f"{old}.norm", dim)
    p.conv(f"{new}.proj_in", f"{old}.proj_in", dim, dim, 1)
    block, old_block = f"{new}.transformer_blocks.0", f"{old}.transformer_blocks.0"
    for attn, kv in (("attn1", dim), ("attn2", context)):
        p.linear(f"{block}.{attn}.to_q", f"{old_block}.{attn}.to_q", dim, dim, bias=False)
        p.linear(f"{block}.{attn}.to_k", f"{old_block}.{attn}.to_k", dim, kv, bias=False)
        p.linear(f"{block}.{attn}.to_v", f"{old_block}.{attn}.to_v", dim, kv, bias=False)
        p.linear(f"{block}.{attn}.to_out.0", f"{old_block}.{attn}.to_out.0", dim, dim)
    p.linear(f"{block}.ff.net.0.proj", f"{old_block}.ff.net.0.proj", 8 * dim, dim)
    p.linear(f"{block}.ff.net.2", f"{old_block}.ff.net.2", dim, 4 * dim)
    for i in (1, 2, 3):
        p.norm(f"{block}.norm{i}", f"{old_block}.norm{i}", dim)
    p.conv(f"{new}.proj_out", f"{old}.proj_out", dim, dim, 1)


def sd_unet_ldm() -> Case:
    """An original Stable Diffusion UNet (``model.diffusion_model.``) -> diffusers ``UNet2DConditionModel``
    (``convert_ldm_unet_checkpoint``): levels (8, 16), attention on level 0, one resnet per level."""
    c0, c1, temb, context, latent = 8, 16, 32, 12, 4
    p = _Pairs()
    p.conv("conv_in", "input_blocks.0.0", c0, latent, 3)
    p.linear("time_embedding.linear_1", "time_embed.0", temb, c0)
    p.linear("time_embedding.linear_2", "time_embed.2", temb, temb)
    # down: input_blocks.1 = (resnet, attention), .2 = downsample, .3 = resnet of level 1
    _unet_transformer(p, "down_blocks.0.attentions.0", "input_blocks.1.1", c0, context)
    _unet_resnet(p, "down_blocks.0.resnets.0", "input_blocks.1.0", c0, c0, temb)
    p.conv("down_blocks.0.downsamplers.0.conv", "input_blocks.2.0.op", c0, c0, 3)
    _unet_resnet(p, "down_blocks.1.resnets.0", "input_blocks.3.0", c0, c1, temb)
    # up (deepest level first): output_blocks.0, .1 (+ upsample at .1.1) on level 1; .2, .3 with attention on level 0
    _unet_resnet(p, "up_blocks.0.resnets.0", "output_blocks.0.0", c1 + c1, c1, temb)
    _unet_resnet(p, "up_blocks.0.resnets.1", "output_blocks.1.0", c1 + c0, c1, temb)
    p.conv("up_blocks.0.upsamplers.0.conv", "output_blocks.1.1.conv", c1, c1, 3)
    _unet_transformer(p, "up_blocks.1.attentions.0", "output_blocks.2.1", c0, context)
    _unet_transformer(p, "up_blocks.1.attentions.1", "output_blocks.3.1", c0, context)
    _unet_resnet(p, "up_blocks.1.resnets.0", "output_blocks.2.0", c1 + c0, c0, temb)
    _unet_resnet(p, "up_blocks.1.resnets.1", "output_blocks.3.0", c0 + c0, c0, temb)
    # mid: middle_block.0/2 resnets, .1 attention
    _unet_transformer(p, "mid_block.attentions.0", "middle_block.1", c1, context)
    _unet_resnet(p, "mid_block.resnets.0", "middle_block.0", c1, c1, temb)
    _unet_resnet(p, "mid_block.resnets.1", "middle_block.2", c1, c1, temb)
    p.norm("conv_norm_out", "out.0", c0)
    p.conv("conv_out", "out.2", latent, c0, 3)
    return p.case(
        "sd_unet_ldm",
        shapes=("index_map", "sequential", "multi_segment", "prefix"),
        source=f"{SOURCE} single_file_utils.py convert_ldm_unet_checkpoint",
        note="`input_blocks.N.M` -> `down_blocks.i.resnets.j`/`attentions.j`/`downsamplers.0` (non-uniform index"
        " maps, interleaved families), `in_layers.0/2` -> `norm1/conv1`, `time_embed.0` -> `time_embedding.linear_1`,"
        " `model.diffusion_model.` prefix",
        prefix="model.diffusion_model.",
    )


# -------------------------------------------------------------------------------------------------------------- VAE
def _vae_resnet(p: _Pairs, new: str, old: str, cin: int, cout: int) -> None:
    p.norm(f"{new}.norm1", f"{old}.norm1", cin)
    p.conv(f"{new}.conv1", f"{old}.conv1", cout, cin, 3)
    p.norm(f"{new}.norm2", f"{old}.norm2", cout)
    p.conv(f"{new}.conv2", f"{old}.conv2", cout, cout, 3)
    if cin != cout:
        p.conv(f"{new}.conv_shortcut", f"{old}.nin_shortcut", cout, cin, 1)


def _vae_attention(p: _Pairs, new: str, old: str, dim: int) -> None:
    """diffusers ``Attention`` (linear q/k/v) <- LDM ``AttnBlock`` (1x1 convs): a reshape of each weight."""
    p.norm(f"{new}.group_norm", f"{old}.norm", dim)
    for ours, theirs in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        p.add(f"{new}.{ours}.weight", f"{old}.{theirs}.weight", (dim, dim), old_shape=(dim, dim, 1, 1))
        p.add(f"{new}.{ours}.bias", f"{old}.{theirs}.bias", (dim,))


def sd_vae_ldm() -> Case:
    """An original Stable Diffusion VAE (``first_stage_model.``) -> diffusers ``AutoencoderKL``
    (``convert_ldm_vae_checkpoint``): the decoder's levels are reversed (``up.1`` -> ``up_blocks.0``)."""
    c0, c1, z = 8, 16, 4
    p = _Pairs()
    p.conv("encoder.conv_in", "encoder.conv_in", c0, 3, 3)
    _vae_resnet(p, "encoder.down_blocks.0.resnets.0", "encoder.down.0.block.0", c0, c0)
    p.conv("encoder.down_blocks.0.downsamplers.0.conv", "encoder.down.0.downsample.conv", c0, c0, 3)
    _vae_resnet(p, "encoder.down_blocks.1.resnets.0", "encoder.down.1.block.0", c0, c1)
    _vae_attention(p, "encoder.mid_block.attentions.0", "encoder.mid.attn_1", c1)
    _vae_resnet(p, "encoder.mid_block.resnets.0", "encoder.mid.block_1", c1, c1)
    _vae_resnet(p, "encoder.mid_block.resnets.1", "encoder.mid.block_2", c1, c1)
    p.norm("encoder.conv_norm_out", "encoder.norm_out", c1)
    p.conv("encoder.conv_out", "encoder.conv_out", 2 * z, c1, 3)
    p.conv("decoder.conv_in", "decoder.conv_in", c1, z, 3)
    _vae_resnet(p, "decoder.up_blocks.0.resnets.0", "decoder.up.1.block.0", c1, c1)
    _vae_resnet(p, "decoder.up_blocks.0.resnets.1", "decoder.up.1.block.1", c1, c1)
    p.conv("decoder.up_blocks.0.upsamplers.0.conv", "decoder.up.1.upsample.conv", c1, c1, 3)
    _vae_resnet(p, "decoder.up_blocks.1.resnets.0", "decoder.up.0.block.0", c1, c0)
    _vae_resnet(p, "decoder.up_blocks.1.resnets.1", "decoder.up.0.block.1", c0, c0)
    _vae_attention(p, "decoder.mid_block.attentions.0", "decoder.mid.attn_1", c1)
    _vae_resnet(p, "decoder.mid_block.resnets.0", "decoder.mid.block_1", c1, c1)
    _vae_resnet(p, "decoder.mid_block.resnets.1", "decoder.mid.block_2", c1, c1)
    p.norm("decoder.conv_norm_out", "decoder.norm_out", c0)
    p.conv("decoder.conv_out", "decoder.conv_out", 3, c0, 3)
    p.conv("quant_conv", "quant_conv", 2 * z, 2 * z, 1)
    p.conv("post_quant_conv", "post_quant_conv", z, z, 1)
    return p.case(
        "sd_vae_ldm",
        shapes=("index_map", "multi_segment", "fused", "prefix"),
        source=f"{SOURCE} single_file_utils.py convert_ldm_vae_checkpoint (+ conv_attn_to_linear)",
        note="`down.N.block.M` -> `down_blocks.N.resnets.M`, decoder `up.N` -> `up_blocks.(L-1-N)` (reversed),"
        " `mid.block_1/2` -> `mid_block.resnets.0/1` (1-based), `mid.attn_1.q` [C,C,1,1] -> `to_q` [C,C] (reshape)",
        prefix="first_stage_model.",
    )


# ------------------------------------------------------------------------------------------------------------- LoRA
def kohya_lora_sd() -> Case:
    """A kohya-ss LoRA for SD 1.x (``lora_unet_down_blocks_0_attentions_0_..._to_q.lora_down.weight``) -> the
    diffusers/PEFT layout (``unet.down_blocks.0.attentions.0....to_q.lora_A.weight``): ``_`` is both the separator
    and part of names; ``.alpha`` has no tensor counterpart (it becomes a scale)."""
    dim, context, rank = 8, 12, 2
    p = _Pairs()
    alphas: list[str] = []

    def lora(new_module: str, old_module: str, cout: int, cin: int, kernel: tuple[int, ...] = ()) -> None:
        p.add(f"{new_module}.lora_A.weight", f"{old_module}.lora_down.weight", (rank, cin, *kernel))
        p.add(f"{new_module}.lora_B.weight", f"{old_module}.lora_up.weight", (cout, rank, *kernel))
        alphas.append(f"{old_module}.alpha")

    for block in ("down_blocks_0_attentions_0", "up_blocks_1_attentions_0", "mid_block_attentions_0"):
        new = "unet." + block.replace("_blocks_", "_blocks.").replace("_attentions_", ".attentions.")
        new = new.replace("mid_block_attentions", "mid_block.attentions").replace("_0", ".0")
        old = f"lora_unet_{block}"
        lora(f"{new}.proj_in", f"{old}_proj_in", dim, dim, (1, 1))
        tb_new, tb_old = f"{new}.transformer_blocks.0", f"{old}_transformer_blocks_0"
        for attn, kv in (("attn1", dim), ("attn2", context)):
            for proj, cin in (("to_q", dim), ("to_k", kv), ("to_v", kv)):
                lora(f"{tb_new}.{attn}.{proj}", f"{tb_old}_{attn}_{proj}", dim, cin)
            lora(f"{tb_new}.{attn}.to_out.0", f"{tb_old}_{attn}_to_out_0", dim, dim)
        lora(f"{tb_new}.ff.net.0.proj", f"{tb_old}_ff_net_0_proj", 8 * dim, dim)
        lora(f"{tb_new}.ff.net.2", f"{tb_old}_ff_net_2", dim, 4 * dim)
        lora(f"{new}.proj_out", f"{old}_proj_out", dim, dim, (1, 1))
    for layer in range(2):
        new = f"text_encoder.text_model.encoder.layers.{layer}"
        old = f"lora_te_text_model_encoder_layers_{layer}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lora(f"{new}.self_attn.{proj}", f"{old}_self_attn_{proj}", dim, dim)
        lora(f"{new}.mlp.fc1", f"{old}_mlp_fc1", 4 * dim, dim)
        lora(f"{new}.mlp.fc2", f"{old}_mlp_fc2", dim, 4 * dim)
    return p.case(
        "kohya_lora_sd",
        shapes=("in_segment", "multi_segment", "prefix"),
        source=f"{SOURCE} lora_conversion_utils.py _convert_non_diffusers_lora_to_diffusers (+ the PEFT renaming)",
        note="separators changed: `lora_unet_down_blocks_0_attentions_0_..._attn1_to_q.lora_down` ->"
        " `unet.down_blocks.0.attentions.0....attn1.to_q.lora_A` (`_` also inside names); `.alpha` has no tensor",
        orphans=dict.fromkeys(alphas, ()),
        sort=True,
    )


def sd_unet_diffusers_to_ldm() -> Case:
    """The other way: a diffusers UNet exported to the original layout (what A1111-style tools load)."""
    return reversed_case(
        sd_unet_ldm(),
        "sd_unet_diffusers_to_ldm",
        source="published script read: diffusers convert_ldm_unet_checkpoint run backward (the same map as"
        " scripts/convert_diffusers_to_original_stable_diffusion.py, which hard-codes SD's two resnets per level)",
        note="`down_blocks.i.resnets.j` -> `model.diffusion_model.input_blocks.N.0`, `attentions.j` ->"
        " `input_blocks.N.1`, `downsamplers.0.conv` -> `input_blocks.N.0.op`, `mid_block` -> `middle_block.0/1/2`",
    )


def lora_peft_to_kohya() -> Case:
    """The other way: a diffusers/PEFT LoRA written out in kohya-ss's layout as diffusers' exporter writes it
    (text encoder under ``lora_te1_``, an ``.alpha`` per module that no checkpoint tensor becomes)."""
    forward = reversed_case(kohya_lora_sd(), "lora_peft_to_kohya", source="", note="")
    te1 = {k: k.replace("lora_te_", "lora_te1_", 1) for k in forward.expected}
    expected = {te1[k]: v for k, v in forward.expected.items()}
    for key in list(expected):
        if key.endswith(".lora_down.weight"):
            alpha = key.removesuffix(".lora_down.weight") + ".alpha"
            expected[alpha] = seeded(alpha, ())
    links = [Link(link.old, tuple(te1[k] for k in link.new)) for link in forward.links]
    return Case(
        "lora_peft_to_kohya",
        forward.shapes,
        "published script read (and run on the case, outside this repo): diffusers state_dict_utils.py"
        " convert_state_dict_to_kohya",
        "`unet.down_blocks.0.attentions.0....attn1.to_q.lora_A.weight` ->"
        " `lora_unet_down_blocks_0_attentions_0_..._attn1_to_q.lora_down.weight` (dots become underscores),"
        " `text_encoder.` -> `lora_te1_`; each `.alpha` is new",
        forward.checkpoint,
        expected,
        links,
    )


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f for f in (sd_unet_ldm, sd_vae_ldm, kohya_lora_sd, sd_unet_diffusers_to_ldm, lora_peft_to_kohya)
}
