"""After a diagnosis, the exact next commands: printed from the report's data, and they work when run as printed."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keyguard._st_write import write_safetensors
from keyguard.demo import expected_tensors, write_example
from keyguard.report._next import fixed_output, ignore_pattern

Cli = Callable[..., Any]


def commands(out: str) -> list[list[str]]:
    """The commands under ``Next:``, each joined across its `` \\`` continuations and split as a shell would."""
    lines = out[out.index("\nNext:\n") :].splitlines()
    found: list[list[str]] = []
    current = ""
    for line in lines:
        if current:
            current += " " + line.strip()
        elif line.startswith("    keyguard "):
            current = line.strip()
        if current and current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current:
            found.append(shlex.split(current))
            current = ""
    return found


def run(cli: Cli, argv: list[str]) -> Any:
    assert argv[0] == "keyguard"
    return cli(*argv[1:])


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.chdir(tmp_path)
    return write_example("demo")


@pytest.mark.parametrize("columns", ["80", "200"])
def test_the_printed_fix_command_writes_a_checkpoint_that_loads(
    cli: Cli, demo: tuple[str, str], monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    checkpoint, manifest = demo
    result = cli("diagnose", checkpoint, "--expected", manifest)
    assert result.code == 1
    fix, emit = commands(result.out)
    assert fix == [
        "keyguard",
        "fix",
        checkpoint,
        "--expected",
        manifest,
        "-o",
        "demo/checkpoint.fixed.safetensors",
        "--drop-unexpected",  # the only unexpected keys are legacy buffers
        "--ignore",
        r"^lm_head\.weight$",  # the tied lm_head the checkpoint leaves out on purpose
    ]
    done = run(cli, fix)
    assert done.code == 0, done.out + done.err
    assert "the output matches the expected keys and shapes exactly" in done.out
    again = cli("diagnose", "demo/checkpoint.fixed.safetensors", "--expected", manifest, "--ignore", fix[-1])
    assert again.code == 0 and "Next:" not in again.out  # nothing left to do
    assert emit == ["keyguard", "diagnose", checkpoint, "--expected", manifest, "--emit", "key-mapping"]
    mapping = run(cli, emit)
    assert "KEY_MAPPING = {" in mapping.out and "'^module\\\\._orig_mod\\\\.': ''" in mapping.out


def test_only_unsafe_rules_left_asks_for_unsafe_fixes(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    weights = {"a.weight": ("F32", [4, 6], bytes(96)), "b.weight": ("F32", [4], bytes(16))}
    write_safetensors(tmp_path / "model.safetensors", weights)
    write_safetensors(tmp_path / "ckpt.safetensors", {**weights, "a.weight": ("F32", [6, 4], bytes(96))})
    result = cli("diagnose", "ckpt.safetensors", "-e", "model.safetensors")
    assert result.code == 1 and "KG302" in result.out
    (fix,) = commands(result.out)
    assert (
        fix[:2] == ["keyguard", "fix"]
        and "--unsafe-fixes" in fix
        and fix[fix.index("-o") + 1] == ("ckpt.fixed.safetensors")
    )
    done = run(cli, fix)
    assert done.code == 0, done.out + done.err


def test_only_harmless_keys_left_suggests_the_ignore(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, manifest = write_example("demo")
    shapes = {k: v for k, v in expected_tensors().items() if k != "lm_head.weight"}  # tied: left out on purpose
    write_safetensors(
        tmp_path / "ckpt.safetensors", {k: ("BF16", list(v), bytes(2 * _numel(v))) for k, v in shapes.items()}
    )
    result = cli("diagnose", "ckpt.safetensors", "-e", manifest)
    assert result.code == 1
    (check,) = commands(result.out)
    assert check == [
        "keyguard",
        "diagnose",
        "ckpt.safetensors",
        "--expected",
        manifest,
        "--ignore",
        r"^lm_head\.weight$",
    ]
    assert run(cli, check).code == 0


def test_nothing_to_run_points_to_the_explanation(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_safetensors(tmp_path / "model.safetensors", {"norm.weight": ("F32", [4], bytes(16))})
    write_safetensors(tmp_path / "ckpt.safetensors", {"norm.weight": ("F32", [5], bytes(20))})
    result = cli("diagnose", "ckpt.safetensors", "-e", "model.safetensors")
    assert commands(result.out) == [["keyguard", "explain", "KG301"]]
    assert run(cli, ["keyguard", "explain", "KG301"]).out.startswith("KG301 shape_mismatch")


def test_the_options_of_the_diagnosis_are_repeated(cli: Cli, demo: tuple[str, str]) -> None:
    checkpoint, manifest = demo
    result = cli("diagnose", checkpoint, "-e", manifest, "--ignore", "rotary_emb")
    fix = commands(result.out)[0]
    assert fix[fix.index("--ignore") + 1] == "rotary_emb" and "--drop-unexpected" not in fix
    assert run(cli, fix).code == 0


def test_other_formats_print_no_commands(cli: Cli, demo: tuple[str, str]) -> None:
    checkpoint, manifest = demo
    for fmt in ("json", "markdown", "github", "junit"):
        assert "keyguard fix" not in cli("diagnose", checkpoint, "-e", manifest, "--format", fmt).out


def test_output_names_beside_the_checkpoint() -> None:
    assert fixed_output("ckpt/model.safetensors", "safetensors") == os.path.join("ckpt", "model.fixed.safetensors")
    assert fixed_output("lightning.ckpt", "torch-pickle") == "lightning.fixed.safetensors"
    assert fixed_output("pytorch_model.bin", "torch-pickle") == "pytorch_model.fixed.safetensors"
    assert fixed_output("shards/", "safetensors-sharded") == "shards-fixed"
    assert fixed_output("shards/model.safetensors.index.json", "safetensors-sharded") == "shards-fixed"


def test_ignore_patterns_match_exactly_the_keys() -> None:
    import re

    keys = [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(4)]
    others = ["model.layers.4.self_attn.rotary_emb.inv_freq.x", "xmodel.layers.0.self_attn.rotary_emb.inv_freq"]
    for pattern, covered, outside in (
        (ignore_pattern(keys), keys, others),
        (ignore_pattern(keys[1:3]), keys[1:3], [keys[0], keys[3]]),  # not every block: the numbers themselves
        (ignore_pattern(["lm_head.weight", "score.weight"]), ["lm_head.weight", "score.weight"], ["lm_head.bias"]),
    ):
        assert all(re.search(pattern, k) for k in covered), pattern
        assert not any(re.search(pattern, k) for k in outside), pattern


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
