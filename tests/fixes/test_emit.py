"""``keyguard diagnose --emit key-mapping``: the safe plan for transformers / PEFT ``key_mapping`` and mmengine
``revise_keys``, checked with the loaders themselves."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

import keyguard
from keyguard.fixes import AddPrefix, MapKeys, Plan, Rename, ReplacePrefix, ShiftIndex, StripPrefix
from keyguard.fixes._emit import export_plan, render_key_mapping
from keyguard.sources import TensorInfo

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def run_emitted(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Execute the emitted Python in a fresh namespace, as a user pasting it would."""
    ast.parse(text)
    namespace: dict[str, Any] = {}
    exec(compile(text, "<keyguard --emit key-mapping>", "exec"), namespace)
    key_mapping, revise = namespace["KEY_MAPPING"], namespace["REVISE_KEYS"]
    assert isinstance(key_mapping, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in key_mapping.items()
    )
    assert isinstance(revise, list) and all(isinstance(p, tuple) and len(p) == 2 for p in revise)
    return key_mapping, revise


def revise_keys(revise: list[tuple[str, str]], keys: Iterable[str]) -> dict[str, str]:
    """mmengine's ``load_checkpoint(..., revise_keys=...)``: ``re.sub`` with each pair, in order."""
    out = {}
    for key in keys:
        new = key
        for pattern, replacement in revise:
            new = re.sub(pattern, replacement, new)
        out[key] = new
    return out


def transformers_renamed(key_mapping: dict[str, str], keys: Iterable[str]) -> dict[str, str]:
    """What ``from_pretrained(..., key_mapping=...)`` does to each key: transformers' own renaming transforms."""
    from transformers.core_model_loading import WeightRenaming, apply_renamings

    renamings = [WeightRenaming(source_patterns=k, target_patterns=v) for k, v in key_mapping.items()]
    return {key: apply_renamings(key, renamings) for key in keys}


# -- end to end through from_pretrained --------------------------------------------------------------------------

BREAKAGES: dict[str, Callable[[str], str]] = {
    "ddp-prefix": lambda k: "module." + k,
    "renamed-segment": lambda k: k.replace(".self_attn.", ".attention."),
    "prefix-and-segment": lambda k: "module." + k.replace(".mlp.", ".feed_forward."),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_key_mapping_loads_every_tensor_with_from_pretrained(
    breakage: str, tmp_path: Path, tiny_llama: Callable[..., Any], cli: Callable[..., Any]
) -> None:
    from safetensors.torch import load_file, save_file

    rename = BREAKAGES[breakage]
    model = tiny_llama()
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():  # distinct values everywhere (norms start as ones), so a misplaced tensor shows
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    folder = tmp_path / "broken"
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    saved = load_file(weights)
    assert saved.keys() == original.keys()
    save_file({rename(k): v for k, v in saved.items()}, weights, metadata={"format": "pt"})
    reference = tmp_path / "reference"
    model.config.save_pretrained(reference)  # config.json only: the model is built on the meta device

    # without the mapping, transformers misses every renamed weight
    _, before = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert before["missing_keys"] and before["unexpected_keys"]

    result = cli("diagnose", folder, "--expected", reference, "--emit", "key-mapping")
    assert result.code == 1  # the checkpoint does not load as it stands
    key_mapping, revise = run_emitted(result.out)
    assert key_mapping

    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, key_mapping=key_mapping, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = loaded.state_dict()
    assert state.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(state[key], value), key

    report = keyguard.diagnose(folder, reference)
    keys = list(load_file(weights))
    assert revise_keys(revise, keys) == report.plan.mapping(keys)
    assert transformers_renamed(key_mapping, keys) == report.plan.mapping(keys)


def test_emit_as_json(tmp_path: Path, cli: Callable[..., Any]) -> None:
    from keyguard._st_write import write_safetensors

    f32 = ("F32", [2], bytes(8))
    write_safetensors(tmp_path / "ck.safetensors", {f"module.layers.{i}.w": f32 for i in range(3)})
    write_safetensors(tmp_path / "ref.safetensors", {f"layers.{i}.w": f32 for i in range(3)})
    ck, ref = tmp_path / "ck.safetensors", tmp_path / "ref.safetensors"
    result = cli("diagnose", ck, "-e", ref, "--emit", "key-mapping", "--format", "json")
    data = json.loads(result.out)
    assert data == {"key_mapping": {r"^module\.": ""}, "revise_keys": [[r"^module\.", ""]]}


def test_an_empty_plan_says_so() -> None:
    text = render_key_mapping(Plan(), ["a.w", "b.w"])
    assert text.startswith("# the safe plan is empty")
    assert run_emitted(text) == ({}, [])


# -- every renaming rule, through transformers' and mmengine's semantics -----------------------------------------

EVERY_RENAMING = Plan(
    rules=[
        StripPrefix(prefix="module."),
        StripPrefix(prefix="module."),  # a prefix doubled on some keys only: the same rule twice
        AddPrefix(prefix="bert.", only=["encoder", "pooler"]),
        ReplacePrefix(old="transformer.", new="model."),
        Rename(pattern=r"((?:.*\.)?)gamma((?:\..*)?)", replacement=r"\g<1>weight\g<2>", old="gamma", new="weight"),
        Rename(pattern=r"((?:.*\.)?model)\.h\.([0-9]+(?:\..*)?)", replacement=r"\g<1>.layers.\g<2>", old="h"),
        ShiftIndex(prefix="model.layers.", offset=-2),
        MapKeys(mapping={"score.w": "classifier.weight", "x.y.z": "x.z"}),
    ]
)
KEYS = [
    "module.encoder.layer.0.LayerNorm.gamma",
    "module.module.pooler.dense.w",
    "module.transformer.h.2.attn.w",
    "transformer.h.3.mlp.gamma",
    "model.layers.5.w",
    "encoder_like.w",
    "score.w",
    "module.x.y.z",
    "untouched.w",
]


def test_every_renaming_rule_exports_to_the_same_mapping() -> None:
    expected = EVERY_RENAMING.mapping(KEYS)
    assert expected["module.module.pooler.dense.w"] == "bert.pooler.dense.w"
    assert expected["module.transformer.h.2.attn.w"] == "model.layers.0.attn.w"
    assert expected["transformer.h.3.mlp.gamma"] == "model.layers.1.mlp.weight"
    key_mapping, revise = run_emitted(render_key_mapping(EVERY_RENAMING, KEYS))
    assert (key_mapping, revise) == export_plan(EVERY_RENAMING, KEYS)
    assert revise_keys(revise, KEYS) == expected
    assert transformers_renamed(key_mapping, KEYS) == expected


def test_engine_plan_with_a_repeated_rule_survives_the_dict(tmp_path: Path) -> None:
    """A DDP prefix doubled on part of the keys: the engine strips `module.` twice; KEY_MAPPING must keep both."""
    w = TensorInfo((4, 4), "F32")
    expected = {f"{m}.{n}.weight": w for m in ("embed", "attn", "mlp", "norm", "head", "pool") for n in ("a", "b")}
    checkpoint = {
        ("module.module." if k.startswith(("embed", "attn")) else "module.") + k: v for k, v in expected.items()
    }
    report = keyguard.diagnose(checkpoint, expected)
    assert report.summary.coverage_after == 1
    truth = {c: c.replace("module.", "") for c in checkpoint}
    assert report.plan.mapping(checkpoint) == truth
    key_mapping, revise = run_emitted(render_key_mapping(report.plan, checkpoint))
    assert revise_keys(revise, checkpoint) == truth
    assert transformers_renamed(key_mapping, checkpoint) == truth
