"""``summarize`` and ``render_summary``: what ``keyguard inspect`` shows."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from keyguard import KeySet, TensorInfo, summarize
from keyguard._summary import SourceSummary, human_bytes, human_count, render_summary
from keyguard.sources import read_keys

H, FF, R = 7168, 2048, 16  # DeepSeek-V3 hidden size, expert intermediate size, LoRA rank
ATTENTION = {"q_a_proj": (H, 1536), "q_b_proj": (1536, 24576), "kv_a_proj_with_mqa": (H, 576), "o_proj": (16384, H)}


def deepseek_lora(*, missing: tuple[tuple[int, int], ...] = ()) -> dict[str, TensorInfo]:
    """The keys of a LoRA on every projection of DeepSeek-V3: 58 MoE layers x 256 experts x 3 x (A, B), etc."""
    tensors: dict[str, TensorInfo] = {}

    def lora(prefix: str, fan_in: int, fan_out: int) -> None:
        tensors[f"{prefix}.lora_A.weight"] = TensorInfo((R, fan_in), "BF16")
        tensors[f"{prefix}.lora_B.weight"] = TensorInfo((fan_out, R), "BF16")

    for layer in range(61):
        base = f"base_model.model.model.layers.{layer}"
        for proj, (fan_in, fan_out) in ATTENTION.items():
            lora(f"{base}.self_attn.{proj}", fan_in, fan_out)
        if layer < 3:  # dense layers
            for proj, (fan_in, fan_out) in {
                "gate_proj": (H, 18432),
                "up_proj": (H, 18432),
                "down_proj": (18432, H),
            }.items():
                lora(f"{base}.mlp.{proj}", fan_in, fan_out)
            continue
        for expert in range(256):
            if (layer, expert) in missing:
                continue
            for proj, (fan_in, fan_out) in {"gate_proj": (H, FF), "up_proj": (H, FF), "down_proj": (FF, H)}.items():
                lora(f"{base}.mlp.experts.{expert}.{proj}", fan_in, fan_out)
        for proj, (fan_in, fan_out) in {"gate_proj": (H, FF), "up_proj": (H, FF), "down_proj": (FF, H)}.items():
            lora(f"{base}.mlp.shared_experts.{proj}", fan_in, fan_out)
        # a LoRA on the router plus DoRA-style magnitudes on every expert projection widen the header
        for expert in range(0, 256, 4):
            if (layer, expert) not in missing:
                tensors[f"{base}.mlp.experts.{expert}.gate_proj.lora_magnitude_vector"] = TensorInfo((FF,), "BF16")
    return tensors


@pytest.fixture(scope="module")
def deepseek() -> KeySet:
    return read_keys(deepseek_lora())


@pytest.fixture(scope="module")
def deepseek_summary(deepseek: KeySet) -> SourceSummary:
    return summarize(deepseek)


def test_deepseek_lora_fits_on_one_screen(deepseek: KeySet, deepseek_summary: SourceSummary) -> None:
    assert 93_000 <= len(deepseek) <= 95_000
    summary = deepseek_summary
    assert summary.tensors == len(deepseek)
    assert sum(g.count for g in summary.groups) == len(deepseek)
    assert all(g.complete for g in summary.groups)
    assert summary.dtypes == {"bf16": len(deepseek)}

    text = render_summary(summary)
    lines = text.splitlines()
    assert len(lines) < 60, text
    assert max(map(len, lines)) < 100, text
    assert "{0..255}" in text
    assert "x14,848" in text  # 58 layers x 256 experts
    assert "lora_magnitude_vector" in text
    full = {g.pattern for g in summary.groups}
    assert "base_model.model.model.layers.{3..60}.mlp.experts.{0..255}.gate_proj.lora_A.weight" in full
    assert "base_model.model.model.layers.{0..60}.self_attn.q_a_proj.lora_B.weight" in full
    # every 4th expert: too many numbers to list, so the set is summarised; it is still a full grid
    magnitude = "base_model.model.model.layers.{3..60}.mlp.experts.{0..252: 64 of 253}.gate_proj.lora_magnitude_vector"
    assert magnitude in full
    assert next(g for g in summary.groups if g.pattern == magnitude).complete


@pytest.mark.parametrize("width", [72, 80, 100, 140])
def test_every_line_is_shorter_than_the_width(deepseek_summary: SourceSummary, width: int) -> None:
    lines = render_summary(deepseek_summary, width=width).splitlines()
    assert max(map(len, lines)) < width


def test_missing_experts_are_marked() -> None:
    keys = read_keys(deepseek_lora(missing=((5, 17), (40, 200))))
    summary = summarize(keys)
    partial = [g for g in summary.groups if not g.complete]
    assert {g.count for g in partial if "lora_A" in g.pattern} == {58 * 256 - 2}
    text = render_summary(summary)
    assert "x14,846*" in text
    assert text.splitlines()[-1] == "* not every combination of the numbered blocks shown is present"


def test_max_groups(deepseek_summary: SourceSummary) -> None:
    summary = deepseek_summary
    text = render_summary(summary, max_groups=5)
    assert f"... {len(summary.groups) - 5:,} more groups (--all lists every group)" in text
    assert len(render_summary(summary, max_groups=None).splitlines()) > len(text.splitlines())


def test_summary_of_a_module(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama(tie_word_embeddings=True)
    keys = read_keys(model)
    summary = summarize(keys)
    assert summary.format == "keyguard.inspect/v1"
    assert summary.source_format == "module"
    assert summary.tensors == len(model.state_dict())
    assert summary.parameters == sum(p.numel() for p in model.parameters())
    assert summary.bytes == 4 * summary.parameters
    assert summary.architecture == "LlamaForCausalLM"
    assert summary.tied == [["model.embed_tokens.weight", "lm_head.weight"]]
    assert "model.rotary_emb.inv_freq" in summary.non_persistent
    patterns = {g.pattern: g for g in summary.groups}
    q = patterns["model.layers.{0,1}.self_attn.q_proj.weight"]
    assert (q.shape, q.dtype, q.count, q.complete) == ([16, 16], "F32", 2, True)
    assert patterns["lm_head.weight"].shape == [64, 16]

    doc = json.loads(summary.model_dump_json())
    assert SourceSummary.model_validate(doc) == summary

    text = render_summary(summary)
    assert "LlamaForCausalLM" in text
    assert "model.embed_tokens.weight = lm_head.weight" in text
    assert "model.layers.{0,1}.self_attn.q_proj.weight" in text


def test_same_pattern_different_shapes_are_separate_groups() -> None:
    keys = read_keys(
        {"l.0.w": ((4, 4), "F32"), "l.1.w": ((4, 4), "F32"), "l.2.w": ((8, 4), "F32"), "l.3.w": ((4, 4), "F16")}
    )
    groups = [(g.pattern, g.shape, g.dtype, g.count) for g in summarize(keys).groups]
    assert groups == [
        ("l.{0,1}.w", [4, 4], "F32", 2),
        ("l.2.w", [8, 4], "F32", 1),
        ("l.3.w", [4, 4], "F16", 1),
    ]


def test_keys_only_summary() -> None:
    summary = summarize(read_keys(["a.0.w", "a.1.w"]))
    assert not summary.shapes_known
    assert summary.groups[0].shape is None
    text = render_summary(summary)
    assert "Parameters" not in text
    assert "?" in text


def test_long_header_values_are_wrapped() -> None:
    long_key = "model." + ".".join(f"very_long_module_name_{i}" for i in range(8)) + ".weight"
    keys = read_keys({long_key: (2,), "other": (2,)}).evolve(
        tied=((long_key, "other"),),
        notes=(
            "also holds 'model_ema', 'ema', 'state_dict_ema', 'model_state_dict' and more; choose one with --container",
        ),
        location="/a/very/long/path/" + "nested/" * 20 + "model.safetensors",
    )
    text = render_summary(summarize(keys), width=80)
    assert max(map(len, text.splitlines())) < 80
    flat = " ".join(line.strip() for line in text.splitlines())
    assert "choose one with --container" in flat


def test_empty_source() -> None:
    summary = summarize(read_keys([]))
    assert summary.tensors == 0
    assert summary.groups == []
    assert "Tensors         0" in render_summary(summary)


def test_human_units() -> None:
    assert human_count(999) == "999"
    assert human_count(1_234_567) == "1.23M"
    assert human_count(6_710_886_400) == "6.71B"
    assert human_bytes(512) == "512 B"
    assert human_bytes(2 * 1024**3) == "2.00 GiB"
    assert human_bytes(3 * 1024**5) == "3072.00 TiB"
