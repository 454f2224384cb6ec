"""Template alignment (issue 9): the rename shapes real conversions have, on real modules and real files.

Each test builds the model the checkpoint should load into and a checkpoint in another layout (distinct data per
tensor), then checks three things: the engine explains the difference with the expected kind, its plans never map a
key onto a wrong expected key, and the fixed state dict loads strictly with every tensor where it belongs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import keyguard
from keyguard import Applicability, Plan
from keyguard.fixes._emit import export_plan

torch = pytest.importorskip("torch")
nn = torch.nn


def _distinct(module: Any) -> dict[str, Any]:
    """The module's state dict with a different value in every tensor (so a misplaced tensor shows)."""
    state = {}
    for i, (key, tensor) in enumerate(module.state_dict().items()):
        state[key] = torch.full_like(tensor, float(i + 1)) if tensor.is_floating_point() else tensor.clone()
    return state


def _renamed(state: dict[str, Any], rename: Any) -> tuple[dict[str, Any], dict[str, str]]:
    checkpoint: dict[str, Any] = {}
    truth: dict[str, str] = {}
    for key, tensor in state.items():
        new = rename(key)
        checkpoint[new] = tensor
        truth[new] = key
    return checkpoint, truth


def _never_wrong(report: keyguard.Report, checkpoint: dict[str, Any], truth: dict[str, str]) -> None:
    for plan in (report.plan, report.unsafe_plan):
        for old, new in plan.mapping(checkpoint).items():
            if new != old and new in truth.values():
                assert truth[old] == new, f"{old} mapped to {new}, truth {truth[old]}"


def _loads(module: Any, checkpoint: dict[str, Any], plan: Plan, state: dict[str, Any]) -> None:
    fixed = plan.apply(checkpoint)
    module.load_state_dict(fixed, strict=True)
    for key, tensor in module.state_dict().items():
        assert torch.equal(tensor, state[key]), key


# -- several segments at once: the original Llama layout --------------------------------------------------------------


def _llama() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config)


_META_LLAMA = [
    (r"^model\.embed_tokens\.", "tok_embeddings."),
    (r"^model\.norm\.", "norm."),
    (r"^lm_head\.", "output."),
    (r"^model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.", r"layers.\1.attention.w\2."),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.", r"layers.\1.feed_forward.w1."),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.", r"layers.\1.feed_forward.w2."),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.", r"layers.\1.feed_forward.w3."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"layers.\1.attention_norm."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"layers.\1.ffn_norm."),
]


def _meta_name(key: str) -> str:
    for pattern, replacement in _META_LLAMA:
        key = re.sub(pattern, replacement, key)
    return key


def test_original_llama_layout_is_mapped_by_names_and_loads() -> None:
    model = _llama()
    state = _distinct(model)
    checkpoint, truth = _renamed(state, _meta_name)
    report = keyguard.diagnose(checkpoint, model)
    _never_wrong(report, checkpoint, truth)
    assert report.unsafe_plan.mapping(checkpoint) == truth
    kinds = {f.kind for f in report.findings}
    assert "restructured" in kinds and "ambiguous" not in kinds
    # w2 is the only projection of its shape: proven by shapes, safe; the rest are chosen by names, unsafe
    safe = report.plan.mapping(checkpoint)
    assert safe["layers.0.feed_forward.w2.weight"] == "model.layers.0.mlp.down_proj.weight"
    assert safe["layers.0.attention.wq.weight"] == "layers.0.attention.wq.weight"
    changes = [c for f in report.findings if f.kind == "restructured" for c in f.ctx["changes"]]
    assert {"old": "layers.{N}.attention.wq", "new": "model.layers.{N}.self_attn.q_proj"}.items() <= next(
        c for c in changes if c["old"] == "layers.{N}.attention.wq"
    ).items()
    assert all(c["evidence"] for c in changes)
    _loads(model, checkpoint, report.unsafe_plan, state)


def test_the_key_mapping_export_of_remap_rules_renames_like_the_plan() -> None:
    model = _llama()
    checkpoint, _ = _renamed(_distinct(model), _meta_name)
    report = keyguard.diagnose(checkpoint, model)
    key_mapping, revise = export_plan(report.unsafe_plan, checkpoint)
    for key in checkpoint:
        name = key
        for pattern, replacement in revise:  # mmengine: re.sub in order
            name = re.sub(pattern, replacement, name)
        assert name == report.unsafe_plan.rename_key(key)
        name = key
        for pattern, replacement in key_mapping.items():  # transformers: first match replaced once, in order
            name = re.sub(pattern, replacement, name, count=1)
        assert name == report.unsafe_plan.rename_key(key)


# -- an index moved to another segment, blocks regrouped into stages ----------------------------------------------


class _Levels(nn.Module):
    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.ModuleDict({"norm": nn.LayerNorm(w), "proj": nn.Linear(w, 2 * w)}) for w in widths
        )


def test_an_index_moved_to_another_segment_is_a_safe_remap() -> None:
    model = _Levels((4, 6, 8))
    state = _distinct(model)

    def old(key: str) -> str:  # levels.N.norm.weight <- norms.N.weight ; levels.N.proj.* <- projs.N.*
        return re.sub(r"^levels\.(\d+)\.(norm|proj)\.", lambda m: f"{m.group(2)}s.{m.group(1)}.", key)

    checkpoint, truth = _renamed(state, old)
    report = keyguard.diagnose(checkpoint, model)
    _never_wrong(report, checkpoint, truth)
    assert report.plan.mapping(checkpoint) == truth
    assert {f.kind for f in report.findings} - {"no_overlap"} == {"restructured"}
    assert all(r.op == "remap" and r.applicability is Applicability.safe for r in report.plan.rules)
    _loads(model, checkpoint, report.plan, state)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 2 * width)


class _Stages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.ModuleDict({"blocks": nn.ModuleList(_Block(w) for _ in range(n))}) for w, n in ((4, 2), (8, 3))
        )


def test_a_flat_block_list_regrouped_into_stages_is_renumbered() -> None:
    model = _Stages()
    state = _distinct(model)
    order = [(s, b) for s, n in ((0, 2), (1, 3)) for b in range(n)]

    def flat(key: str) -> str:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        assert m is not None
        return f"blocks.{order.index((int(m.group(1)), int(m.group(2))))}.{m.group(3)}"

    checkpoint, truth = _renamed(state, flat)
    report = keyguard.diagnose(checkpoint, model)
    _never_wrong(report, checkpoint, truth)
    assert report.plan.mapping(checkpoint) == truth
    assert {f.kind for f in report.findings} - {"no_overlap"} == {"renumbered"}
    assert all(r.op == "remap" and r.indices for r in report.plan.rules)
    _loads(model, checkpoint, report.plan, state)


# -- separators, merged segments, Sequential wrap ------------------------------------------------------------------


def test_changed_separators_and_merged_segments() -> None:
    widths = (4, 6)
    expected = {}
    for i, w in enumerate(widths):
        expected[f"down_blocks.{i}.attn.proj.0.weight"] = (w, w)
        expected[f"down_blocks.{i}.attn.proj.0.bias"] = (w,)
        expected[f"down_blocks.{i}.norm.weight"] = (w,)
    checkpoint = {
        re.sub(r"down_blocks\.(\d+)\.", r"down_blocks_\1_", k).replace("proj.0", "proj0"): v
        for k, v in expected.items()
    }
    truth = dict(zip(checkpoint, expected))
    report = keyguard.diagnose(checkpoint, expected)
    assert report.unsafe_plan.mapping(checkpoint) == truth
    assert report.plan.mapping(checkpoint) == truth  # the only groups of their shapes, siblings moving together


def test_a_layer_wrapped_in_a_sequential_and_a_head_made_a_container() -> None:
    expected = {
        "fc.0.weight": (8, 4),
        "fc.0.bias": (8,),
        "head.fc.weight": (3, 8),
        "head.fc.bias": (3,),
        "x.weight": (2, 2),
    }
    checkpoint = {"fc.weight": (8, 4), "fc.bias": (8,), "head.weight": (3, 8), "head.bias": (3,), "x.weight": (2, 2)}
    report = keyguard.diagnose(checkpoint, expected)
    mapping = report.unsafe_plan.mapping(checkpoint)
    assert mapping == {
        "fc.weight": "fc.0.weight",
        "fc.bias": "fc.0.bias",
        "head.weight": "head.fc.weight",
        "head.bias": "head.fc.bias",
        "x.weight": "x.weight",
    }


def test_an_interleaved_list_split_into_two_families() -> None:
    expected: dict[str, tuple[int, ...]] = {}
    checkpoint: dict[str, tuple[int, ...]] = {}
    truth: dict[str, str] = {}
    for i in range(3):  # features: block, transition, block, transition, ...
        w = 4 * (i + 1)
        for key, shape in ((f"blocks.{i}.conv.weight", (w, w, 3, 3)), (f"blocks.{i}.conv.bias", (w,))):
            expected[key] = shape
            old = key.replace(f"blocks.{i}.", f"features.{2 * i}.")
            checkpoint[old], truth[old] = shape, key
        for key, shape in ((f"transitions.{i}.pool.weight", (2 * w, w, 1, 1)),):
            expected[key] = shape
            old = key.replace(f"transitions.{i}.pool", f"features.{2 * i + 1}.pool")
            checkpoint[old], truth[old] = shape, key
    report = keyguard.diagnose(checkpoint, expected)
    assert report.plan.mapping(checkpoint) == truth


# -- exact matches are evidence, not truth ------------------------------------------------------------------------


def test_a_stale_unprefixed_copy_is_contested_not_kept() -> None:
    expected = {f"model.layers.{i}.w.weight": (4, 4) for i in range(3)} | {"model.norm.weight": (4,)}
    checkpoint = {"module." + k: v for k, v in expected.items()} | {"model.norm.weight": (4,)}
    report = keyguard.diagnose(checkpoint, expected)
    contested = [f for f in report.findings if f.kind == "contested_match"]
    assert [f.code for f in contested] == ["KG405"]
    assert set(contested[0].checkpoint_keys) == {"model.norm.weight", "module.model.norm.weight"}
    for plan in (report.plan, report.unsafe_plan):
        mapping = plan.mapping(checkpoint)
        assert mapping["module.model.norm.weight"] == "module.model.norm.weight"
        assert mapping["module.model.layers.0.w.weight"] == "model.layers.0.w.weight"


def test_a_pipeline_stage_with_local_indices_offers_the_in_order_reading() -> None:
    expected = {f"model.layers.{i}.{m}.weight": (4, 4) for i in (1, 2) for m in ("a", "b")}
    checkpoint = {f"model.layers.{i}.{m}.weight": (4, 4) for i in (0, 1) for m in ("a", "b")}
    report = keyguard.diagnose(checkpoint, expected)
    contested = next(f for f in report.findings if f.kind == "contested_match")
    assert contested.ctx["candidates"]["model.layers.1.a.weight"][0] == "model.layers.2.a.weight"
    assert contested.ctx["candidates"]["model.layers.0.a.weight"][0] == "model.layers.1.a.weight"
    assert report.plan.empty and report.unsafe_plan.empty


def test_an_offset_under_one_sub_module_where_names_collide_with_other_shapes() -> None:
    expected = {f"layers.{i}.blocks.0.w.weight": (4 * (i + 1), 4) for i in range(3)}
    expected |= {f"layers.{i}.downsample.weight": (8 * i, 4 * i) for i in (1, 2)}
    checkpoint = dict(expected)
    del checkpoint["layers.2.downsample.weight"]
    checkpoint["layers.0.downsample.weight"] = (8, 4)
    checkpoint["layers.1.downsample.weight"] = (16, 8)
    report = keyguard.diagnose(checkpoint, expected)
    assert report.plan.mapping(checkpoint)["layers.0.downsample.weight"] == "layers.1.downsample.weight"
    assert report.plan.mapping(checkpoint)["layers.1.downsample.weight"] == "layers.2.downsample.weight"


# -- never a guess from a coincidence -----------------------------------------------------------------------------


def test_a_dropped_key_and_an_unrelated_extra_of_the_same_shape_are_never_paired() -> None:
    expected = {f"encoder.layers.{i}.{m}.weight": (4, 4) for i in range(2) for m in ("q", "k")} | {
        "pooler.dense.weight": (8, 8),
        "pooler.dense.bias": (8,),
    }
    checkpoint = {k: v for k, v in expected.items() if not k.startswith("pooler")}
    checkpoint |= {"classifier.dense.weight": (8, 8), "classifier.dense.bias": (8,)}
    report = keyguard.diagnose(checkpoint, expected)
    assert report.unsafe_plan.rename_key("classifier.dense.weight") == "classifier.dense.weight"
    assert all(f.hint is None or "classifier" not in f.hint for f in report.findings)


# -- fused tensors under names no table knows ---------------------------------------------------------------------


def test_fused_tensors_under_unknown_names_are_split_in_the_order_the_name_spells(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    parts = {n: torch.randn(4, 8) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj")}
    expected = {f"layers.0.attn.{n}.weight": t for n, t in parts.items() if n[0] in "qkvo"}
    expected |= {f"layers.0.mlp.{n}.weight": t for n, t in parts.items() if n[0] in "ug"}
    expected["layers.0.mlp.down_proj.weight"] = torch.randn(8, 4)
    checkpoint = {
        "layers.0.attn.Wqkv.weight": torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]]),
        "layers.0.attn.o_proj.weight": parts["o_proj"],
        "layers.0.mlp.up_gate_proj.weight": torch.cat([parts["up_proj"], parts["gate_proj"]]),
        "layers.0.mlp.down_proj.weight": expected["layers.0.mlp.down_proj.weight"],
    }
    report = keyguard.diagnose(checkpoint, expected)
    fused = [f for f in report.findings if f.kind == "fused_split"]
    assert fused and all(f.fix is not None and f.fix.applicability is Applicability.unsafe for f in fused)
    save_file(checkpoint, str(tmp_path / "ck.safetensors"))
    keys = keyguard.read_keys(tmp_path / "ck.safetensors")
    keyguard.write_fixed(keys, report.unsafe_plan, tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    assert set(out) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(out[key], tensor), key


# -- evidence from data ---------------------------------------------------------------------------------------------


def test_match_values_decides_a_tie_and_makes_a_name_choice_safe(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = {"attn.left.weight": torch.randn(4, 4), "attn.right.weight": torch.randn(4, 4)}
    reference |= {"attn.q_proj.weight": torch.randn(6, 4), "attn.k_proj.weight": torch.randn(6, 4)}
    checkpoint = {
        "attn.alpha.weight": reference["attn.right.weight"],
        "attn.beta.weight": reference["attn.left.weight"],
        "attn.q.weight": reference["attn.q_proj.weight"],
        "attn.k.weight": reference["attn.k_proj.weight"],
    }
    save_file(checkpoint, tmp_path / "ck.safetensors")
    save_file(reference, tmp_path / "ref.safetensors")
    headers = keyguard.diagnose(tmp_path / "ck.safetensors", tmp_path / "ref.safetensors")
    assert headers.plan.rename_key("attn.alpha.weight") == "attn.alpha.weight"  # a tie: never applied
    assert headers.plan.rename_key("attn.q.weight") == "attn.q.weight"  # chosen by names: unsafe only
    report = keyguard.diagnose(tmp_path / "ck.safetensors", tmp_path / "ref.safetensors", match_values=True)
    assert report.plan.mapping(checkpoint) == {
        "attn.alpha.weight": "attn.right.weight",
        "attn.beta.weight": "attn.left.weight",
        "attn.q.weight": "attn.q_proj.weight",
        "attn.k.weight": "attn.k_proj.weight",
    }
    evidence = [e["kind"] for f in report.findings for c in f.ctx.get("changes", []) for e in c["evidence"]]
    assert "values" in evidence


# -- what a shape-forced match must not overrule ------------------------------------------------------------------


class _Conv1D(nn.Module):
    """GPT-2's layer: the weight stored as (in, out), the transpose of nn.Linear's."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))


def test_a_weight_whose_bias_does_not_fit_the_target_module_is_not_moved_there() -> None:
    """Megatron's ``dense_4h_to_h`` (a Linear, (h, 4h)) has the shape of GPT-2's ``c_fc`` (a Conv1D, (h, 4h)) while
    its truth is ``c_proj`` transposed. Its bias, (h,), cannot be ``c_fc``'s (4h,): the module is not that one,
    whatever the weight's shape says. Before, the safe plan moved the weight onto ``c_fc``."""
    model = nn.Module()
    model.h = nn.ModuleList([nn.Module() for _ in range(2)])
    for block in model.h:
        block.ln_1 = nn.LayerNorm(8)
        block.attn = nn.Module()
        block.attn.c_attn = _Conv1D(8, 24)
        block.attn.c_proj = _Conv1D(8, 8)
        block.ln_2 = nn.LayerNorm(8)
        block.mlp = nn.Module()
        block.mlp.c_fc = _Conv1D(8, 32)
        block.mlp.c_proj = _Conv1D(32, 8)
    state = _distinct(model)
    names = {
        "ln_1": "input_layernorm",
        "attn.c_attn": "attention.query_key_value",
        "attn.c_proj": "attention.dense",
        "ln_2": "post_attention_layernorm",
        "mlp.c_fc": "mlp.dense_h_to_4h",
        "mlp.c_proj": "mlp.dense_4h_to_h",
    }
    checkpoint: dict[str, Any] = {}
    truth: dict[str, str] = {}
    for key, tensor in state.items():
        _, index, rest = key.split(".", 2)
        module, leaf = rest.rsplit(".", 1)
        old = f"language_model.transformer.layers.{index}.{names[module]}.{leaf}"
        checkpoint[old] = tensor.t() if tensor.dim() == 2 else tensor
        truth[old] = key
    report = keyguard.diagnose(checkpoint, model)
    _never_wrong(report, checkpoint, truth)
    for old, new in report.unsafe_plan.mapping(checkpoint).items():
        assert "dense_4h_to_h.weight" not in old or new == old, f"{old} moved to {new}"


def test_a_list_that_became_named_modules_is_contested_not_kept() -> None:
    """SAM's MLP heads: ``layers.0/1/2`` became ``proj_in``, ``layers.0``, ``proj_out``. ``layers.0`` matches as it
    stands but holds ``proj_in``'s tensor; the unexpected ``layers.1/2`` have exactly the shapes of the missing named
    children. Before, the exact match was kept silently; now the list is shown with every reading (KG405)."""
    model = nn.Module()
    model.heads = nn.ModuleList()
    for _ in range(2):
        head = nn.Module()
        head.proj_in = nn.Linear(8, 8)
        head.layers = nn.ModuleList([nn.Linear(8, 8)])
        head.proj_out = nn.Linear(8, 2)
        model.heads.append(head)
    state = _distinct(model)
    checkpoint: dict[str, Any] = {}
    truth: dict[str, str] = {}
    for key, tensor in state.items():
        old = key.replace("layers.0", "layers.1").replace("proj_in", "layers.0").replace("proj_out", "layers.2")
        checkpoint[old] = tensor
        truth[old] = key
    report = keyguard.diagnose(checkpoint, model)
    contested = [f for f in report.findings if f.code == "KG405"]
    assert contested, report.render()
    shown = {k for f in contested for k in f.checkpoint_keys}
    assert {"heads.0.layers.0.weight", "heads.0.layers.1.weight", "heads.0.layers.2.weight"} <= shown
    _never_wrong(report, checkpoint, truth)


def test_encoder_and_decoder_blocks_of_equal_shapes_stay_in_their_namesakes() -> None:
    """OpenAI's Whisper layout: ``encoder.blocks.N.attn.query`` / ``decoder.blocks.N.attn.query`` /
    ``decoder.blocks.N.cross_attn.query`` against ``model.{encoder,decoder}.layers.N.{self_attn,encoder_attn}.q_proj``,
    every projection of one shape. The top-level parts carry the same names on both sides, so the names choose
    (``unsafe``); before, every projection stayed ambiguous between the encoder and the decoder."""

    def attention() -> Any:
        attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(attn, name, nn.Linear(8, 8))
        return attn

    model = nn.Module()
    model.model = nn.Module()
    for part in ("encoder", "decoder"):
        stack = nn.Module()
        stack.layers = nn.ModuleList()
        for _ in range(2):
            layer = nn.Module()
            layer.self_attn = attention()
            if part == "decoder":
                layer.encoder_attn = attention()
            stack.layers.append(layer)
        setattr(model.model, part, stack)
    state = _distinct(model)
    names = {"self_attn": "attn", "encoder_attn": "cross_attn", "q_proj": "query", "k_proj": "key"}
    names |= {"v_proj": "value", "out_proj": "out", "layers": "blocks"}

    def rename(key: str) -> str:
        parts = key.split(".")[1:]  # model. dropped
        return ".".join(names.get(p, p) for p in parts)

    checkpoint, truth = _renamed(state, rename)
    report = keyguard.diagnose(checkpoint, model)
    _never_wrong(report, checkpoint, truth)
    mapped = {o: n for o, n in report.unsafe_plan.mapping(checkpoint).items() if n == truth[o]}
    assert len(mapped) == len(checkpoint), sorted(set(checkpoint) - set(mapped))
    _loads(model, checkpoint, report.unsafe_plan, state)


def test_a_sequential_of_convs_and_norms_becomes_named_children() -> None:
    """SAM's neck: ``neck.0`` (a conv), ``neck.1`` (a norm), ``neck.2``, ``neck.3`` became ``conv1``, ``layer_norm1``,
    ``conv2``, ``layer_norm2``. One template (``neck.{N}.weight``) holds convs and norms, which are different
    modules: consistency is judged by the modules the keys name, not by the template. Before, the norms' weights
    and biases were held to "go to different modules" and left as candidates."""
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.neck = nn.Module()
    neck = model.encoder.neck
    neck.conv1 = nn.Conv2d(8, 4, 1, bias=False)
    neck.layer_norm1 = nn.LayerNorm(4)
    neck.conv2 = nn.Conv2d(4, 4, 3, bias=False)
    neck.layer_norm2 = nn.LayerNorm(4)
    state = _distinct(model)
    slots = {"conv1": "0", "layer_norm1": "1", "conv2": "2", "layer_norm2": "3"}

    def rename(key: str) -> str:
        parts = key.split(".")
        return ".".join(["image_encoder", "neck", slots[parts[2]], parts[3]])

    checkpoint, truth = _renamed(state, rename)
    report = keyguard.diagnose(checkpoint, model)
    _never_wrong(report, checkpoint, truth)
    mapped = {o for o, n in report.unsafe_plan.mapping(checkpoint).items() if n == truth[o]}
    assert mapped == set(checkpoint), report.render()
    _loads(model, checkpoint, report.unsafe_plan, state)


def test_a_parameter_that_became_a_module_weight_is_offered() -> None:
    """OpenAI's Whisper and CLIP keep ``positional_embedding`` as a bare parameter; transformers holds it as
    ``embed_positions.weight`` (an ``nn.Embedding``). The leaf kinds differ (a free-form parameter, a weight), so
    the pair is a candidate only because the names are published equivalents and the shapes agree. Before, it was
    reported as one unexpected and one missing key, with nothing linking them."""
    model = nn.Module()
    model.model = nn.Module()
    model.model.encoder = nn.Module()
    model.model.encoder.embed_positions = nn.Embedding(12, 8)
    model.model.encoder.conv = nn.Conv1d(4, 8, 3)
    state = _distinct(model)
    checkpoint = {
        "encoder.positional_embedding": state["model.encoder.embed_positions.weight"],
        "encoder.conv.weight": state["model.encoder.conv.weight"],
        "encoder.conv.bias": state["model.encoder.conv.bias"],
    }
    truth = {
        "encoder.positional_embedding": "model.encoder.embed_positions.weight",
        "encoder.conv.weight": "model.encoder.conv.weight",
        "encoder.conv.bias": "model.encoder.conv.bias",
    }
    report = keyguard.diagnose(checkpoint, model)
    _never_wrong(report, checkpoint, truth)
    offered = report.unsafe_plan.mapping(checkpoint).get("encoder.positional_embedding") == truth[
        "encoder.positional_embedding"
    ] or any(
        "encoder.positional_embedding" in f.checkpoint_keys and truth["encoder.positional_embedding"] in f.expected_keys
        for f in report.findings
    )
    assert offered, report.render()


def test_a_multihead_attention_in_proj_is_offered_as_a_split() -> None:
    """``nn.MultiheadAttention`` keeps q, k and v as one parameter, ``in_proj_weight`` (and ``in_proj_bias``): read
    as the ``in_proj`` module's weight, it stacks the model's ``q_proj`` / ``k_proj`` / ``v_proj`` where its
    sibling ``out_proj`` went. The name spells no order, so the split is shown, never applied. Before, the two
    tensors were reported as unexpected with nothing linking them to their parts."""
    mha = nn.MultiheadAttention(8, 2)
    model = nn.Module()
    model.layers = nn.ModuleList()
    for _ in range(2):
        layer = nn.Module()
        layer.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(layer.self_attn, name, nn.Linear(8, 8))
        model.layers.append(layer)
    checkpoint: dict[str, Any] = {}
    for n in range(2):
        for key, tensor in mha.state_dict().items():
            checkpoint[f"blocks.{n}.attn.{key}"] = tensor.clone()
    report = keyguard.diagnose(checkpoint, model)
    split = [f for f in report.findings if f.kind == "fused_split"]
    shown = {k for f in split for k in f.checkpoint_keys}
    assert {"blocks.0.attn.in_proj_weight", "blocks.1.attn.in_proj_bias"} <= shown, report.render()
    assert all(f.fix is None or f.fix.applicability is Applicability.display_only for f in split)
