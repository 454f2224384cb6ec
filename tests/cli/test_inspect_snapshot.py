"""``keyguard inspect`` and ``keyguard snapshot``, in process (fast) and as a real subprocess."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keyguard._st_write import write_safetensors
from keyguard.sources import read_keys

torch = pytest.importorskip("torch")


def small_st(path: Path) -> Path:
    write_safetensors(
        path,
        {f"model.layers.{i}.mlp.up_proj.weight": ("F32", [4, 2], bytes(32)) for i in range(3)}
        | {"lm_head.weight": ("BF16", [8, 2], bytes(32))},
        metadata={"format": "pt"},
    )
    return path


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def sources(
    tmp_path: Path,
    tiny_llama: Callable[..., Any],
    tiny_llama_config: Callable[..., Any],
) -> dict[str, Path]:
    """One input of every kind."""
    out: dict[str, Path] = {}
    out["safetensors"] = small_st(tmp_path / "model.safetensors")
    model = tiny_llama()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    out["sharded"] = tmp_path / "sharded"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "last.ckpt")
    out["pickle"] = tmp_path / "last.ckpt"
    tiny_llama_config().save_pretrained(tmp_path / "config")
    out["config"] = tmp_path / "config"
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"], "lora_alpha": 4})
    )
    write_safetensors(
        tmp_path / "adapter" / "adapter_model.safetensors",
        {
            f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.weight": ("F32", [2, 2], bytes(16))
            for i in range(2)
            for ab in "AB"
        },
    )
    out["adapter"] = tmp_path / "adapter"
    from keyguard.sources import write_manifest

    write_manifest(read_keys(out["safetensors"]), tmp_path / "keys.json")
    out["manifest"] = tmp_path / "keys.json"
    return out


EXPECTED = {
    "safetensors": ("safetensors", "model.layers.{0..2}.mlp.up_proj.weight"),
    "sharded": ("safetensors-sharded", "model.layers.{0,1}.self_attn.q_proj.weight"),
    "pickle": ("torch-pickle", "model.layers.{0,1}.mlp.down_proj.weight"),
    "config": ("config", "model.layers.{0,1}.self_attn.k_proj.weight"),
    "adapter": ("peft-adapter", "base_model.model.model.layers.{0,1}.self_attn.q_proj.lora_A.weight"),
    "manifest": ("manifest", "model.layers.{0..2}.mlp.up_proj.weight"),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_inspect_every_kind(cli: Callable[..., Any], sources: dict[str, Path], kind: str) -> None:
    fmt, pattern = EXPECTED[kind]
    result = cli("inspect", sources[kind])
    assert result.code == 0, result.err
    assert result.err == ""
    assert f"({fmt})" in result.out
    assert pattern in result.out
    assert result.out.startswith("Source ")

    result = cli("inspect", sources[kind], "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["format"] == "keyguard.inspect/v1"
    assert doc["source_format"] == fmt
    assert pattern in [g["pattern"] for g in doc["groups"]]
    assert doc["tensors"] == sum(g["count"] for g in doc["groups"])


def test_inspect_details(cli: Callable[..., Any], sources: dict[str, Path]) -> None:
    out = cli("inspect", sources["pickle"]).out
    assert "Unwrapped       state dict found under 'state_dict'" in out
    out = cli("inspect", sources["adapter"]).out
    assert "Adapter         peft_type=LORA, r=2, lora_alpha=4" in out
    doc = json.loads(cli("inspect", sources["adapter"], "--format", "json").out)
    assert doc["adapter_config"]["r"] == 2
    doc = json.loads(cli("inspect", sources["config"], "--format", "json").out)
    assert doc["architecture"] == "LlamaForCausalLM"


def test_inspect_options(cli: Callable[..., Any], tmp_path: Path, tiny_llama_config: Callable[..., Any]) -> None:
    torch.save({"model": {"a": torch.zeros(1)}, "model_ema": {"a": torch.zeros(3)}}, tmp_path / "c.pt")
    doc = json.loads(cli("inspect", tmp_path / "c.pt", "--format", "json").out)
    assert doc["unwrapped"] == "model"
    assert any("model_ema" in note for note in doc["notes"])
    doc = json.loads(cli("inspect", tmp_path / "c.pt", "--format", "json", "--container", "model_ema").out)
    assert doc["unwrapped"] == "model_ema"
    assert doc["groups"][0]["shape"] == [3]

    tiny_llama_config().save_pretrained(tmp_path / "cfg")
    doc = json.loads(cli("inspect", tmp_path / "cfg", "--format", "json", "--architecture", "LlamaModel").out)
    assert doc["architecture"] == "LlamaModel"
    assert "lm_head.weight" not in [g["pattern"] for g in doc["groups"]]


def test_inspect_all(cli: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "many.safetensors"
    write_safetensors(path, {f"block{i}.w": ("F32", [1], bytes(4)) for i in range(50)})
    short = cli("inspect", path).out
    assert "... 10 more groups (--all lists every group)" in short
    full = cli("inspect", path, "--all").out
    assert "more groups" not in full
    assert "block49.w" in full


# -- bad input: exit 2, one line naming the file, no traceback ---------------------------------------------------


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a phrase the error must contain)."""
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "empty.safetensors").touch()
    whole = small_st(tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) - 10])
    torch.save({"w": torch.zeros(1), "x": Evil(tmp_path / "PWNED")}, tmp_path / "evil.pt")
    (tmp_path / "garbage.bin").write_bytes(b"\x80\x02garbage" * 10)
    (tmp_path / "proto4.pth").write_bytes(pickle.dumps({"w": Evil(tmp_path / "PWNED")}, protocol=4))
    return {
        "missing": (tmp_path / "missing.safetensors", "no such file"),
        "directory": (tmp_path / "dir.safetensors", "is a directory"),
        "empty": (tmp_path / "empty.safetensors", "8-byte header length"),
        "truncated": (tmp_path / "cut.safetensors", "truncated"),
        "code-execution": (tmp_path / "evil.pt", "refused"),
        "garbage": (tmp_path / "garbage.bin", "not a readable PyTorch checkpoint"),
        "protocol-4-code": (tmp_path / "proto4.pth", "system"),
    }


BAD = ["missing", "directory", "empty", "truncated", "code-execution", "garbage", "protocol-4-code"]


def assert_one_line_error(err: str, path: Path, phrase: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"keyguard: error: {path}: "), err
    assert phrase in lines[0]


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("command", ["inspect", "snapshot"])
def test_bad_input_in_process(cli: Callable[..., Any], tmp_path: Path, case: str, command: str) -> None:
    path, phrase = bad_inputs(tmp_path)[case]
    args = ["inspect", path] if command == "inspect" else ["snapshot", path, "-o", tmp_path / "out.json"]
    result = cli(*args)
    assert result.code == 2
    assert result.out == ""
    assert_one_line_error(result.err, path, phrase)
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out.json").exists()


def test_debug_raises_in_process(cli: Callable[..., Any], tmp_path: Path) -> None:
    from keyguard import SourceError

    with pytest.raises(SourceError):
        cli("inspect", "--debug", tmp_path / "missing.safetensors")
    with pytest.raises(SourceError):  # before the command too: the command's parser keeps it
        cli("--debug", "inspect", tmp_path / "missing.safetensors")
    assert cli("--color", "never", "inspect", tmp_path / "missing.safetensors").code == 2


@pytest.mark.parametrize("case", ["missing", "truncated", "code-execution", "protocol-4-code"])
def test_bad_input_in_a_subprocess(cli_subprocess: Callable[..., Any], tmp_path: Path, case: str) -> None:
    path, phrase = bad_inputs(tmp_path)[case]
    done = cli_subprocess("inspect", path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert_one_line_error(done.stderr, path, phrase)
    assert not (tmp_path / "PWNED").exists()


def test_debug_shows_the_traceback(cli_subprocess: Callable[..., Any], tmp_path: Path) -> None:
    path, _ = bad_inputs(tmp_path)["code-execution"]
    done = cli_subprocess("inspect", "--debug", path)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr
    assert "UnsafePickleError" in done.stderr
    assert not (tmp_path / "PWNED").exists()


def test_inspect_in_a_subprocess(cli_subprocess: Callable[..., Any], tmp_path: Path) -> None:
    path = small_st(tmp_path / "model.safetensors")
    done = cli_subprocess("inspect", path, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tensors"] == 4


def test_usage_errors(cli: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli("inspect")
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli("snapshot", "x.safetensors")  # -o is required
    assert info.value.code == 2


# -- snapshot ------------------------------------------------------------------------------------------------------


def test_snapshot_to_a_file(cli: Callable[..., Any], sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pinned.json"
    result = cli("snapshot", sources["config"], "-o", out)
    assert result.code == 0, result.err
    assert result.out == ""
    assert result.err.startswith(f"wrote {out}: ")
    assert "(config)" in result.err
    pinned = read_keys(out)
    assert pinned.format == "manifest"
    assert pinned.tensors == read_keys(sources["config"]).tensors
    assert pinned.architecture == "LlamaForCausalLM"


def test_snapshot_to_stdout(cli: Callable[..., Any], sources: dict[str, Path], tmp_path: Path) -> None:
    result = cli("snapshot", sources["adapter"], "-o", "-")
    assert result.code == 0, result.err
    assert result.err == ""
    doc = json.loads(result.out)
    assert doc["format"] == "keyguard.keys/v1"
    assert doc["source"]["adapter_config"]["r"] == 2
    (tmp_path / "stdout.json").write_text(result.out)
    assert read_keys(tmp_path / "stdout.json").adapter.r == 2


def test_snapshot_options(cli: Callable[..., Any], tmp_path: Path) -> None:
    torch.save({"model": {"a": torch.zeros(1)}, "model_ema": {"a": torch.zeros(3)}}, tmp_path / "c.pt")
    assert cli("snapshot", tmp_path / "c.pt", "-o", tmp_path / "m.json", "--container", "model_ema").code == 0
    assert read_keys(tmp_path / "m.json")["a"].shape == (3,)


def test_snapshot_of_a_manifest_is_the_same_keys(
    cli: Callable[..., Any], sources: dict[str, Path], tmp_path: Path
) -> None:
    again = tmp_path / "again.json"
    assert cli("snapshot", sources["manifest"], "-o", again).code == 0
    assert read_keys(again).tensors == read_keys(sources["manifest"]).tensors


@pytest.mark.parametrize("where", ["directory", "missing-folder"])
def test_snapshot_cannot_write(cli: Callable[..., Any], sources: dict[str, Path], tmp_path: Path, where: str) -> None:
    target = tmp_path / "out.json"
    if where == "directory":
        target.mkdir()
    else:
        target = tmp_path / "no" / "such" / "folder" / "out.json"
    result = cli("snapshot", sources["safetensors"], "-o", target)
    assert result.code == 2
    assert_one_line_error(result.err, target, "cannot write")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_snapshot_in_a_subprocess(
    cli_subprocess: Callable[..., Any], tmp_path: Path, hashes: Callable[..., Any]
) -> None:
    source = small_st(tmp_path / "model.safetensors")
    before = hashes(source)
    done = cli_subprocess("snapshot", source, "-o", "-")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tensors"]["lm_head.weight"] == {"shape": [8, 2], "dtype": "BF16"}
    done = cli_subprocess("snapshot", source, "-o", "keys.json")  # relative to the subprocess's folder
    assert done.returncode == 0, done.stderr
    assert list(read_keys(tmp_path / "keys.json")) == list(read_keys(source))
    assert hashes(source) == before


def test_inputs_are_not_modified(cli: Callable[..., Any], sources: dict[str, Path], hashes: Callable[..., Any]) -> None:
    for source in sources.values():
        before = hashes(source)
        assert cli("inspect", source).code == 0
        assert cli("inspect", source, "--format", "json").code == 0
        assert cli("snapshot", source, "-o", "-").code == 0
        assert hashes(source) == before
