"""keyguard imports torch only for inputs that need it, and never writes to its inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keyguard._st_write import write_safetensors
from keyguard.sources import read_keys, write_manifest

HEAVY = ("torch", "transformers", "numpy", "safetensors.torch", "peft")


def run_python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_import_keyguard_is_light(offline_env: dict[str, str], tmp_path: Path) -> None:
    done = run_python(
        f"""
        import sys
        import keyguard
        import keyguard.sources
        import keyguard.cli
        from keyguard import read_keys, summarize, KeySet, TensorInfo
        heavy = [name for name in {HEAVY!r} if name in sys.modules]
        assert not heavy, heavy
        print("ok")
        """,
        offline_env,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.fixture
def torch_free_inputs(tmp_path: Path) -> dict[str, Path]:
    """Inputs that must be read without torch: safetensors (single, sharded), manifests, adapters."""
    inputs = tmp_path / "inputs"
    single = inputs / "model.safetensors"
    single.parent.mkdir()
    write_safetensors(single, {f"layers.{i}.w": ("BF16", [4, 4], bytes(32)) for i in range(4)})
    sharded = inputs / "sharded"
    sharded.mkdir()
    write_safetensors(sharded / "model-00001-of-00002.safetensors", {"a": ("F32", [2], bytes(8))})
    write_safetensors(sharded / "model-00002-of-00002.safetensors", {"b": ("F16", [2], bytes(4))})
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": 12},
                "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
            }
        )
    )
    adapter = inputs / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["q"]}))
    write_safetensors(
        adapter / "adapter_model.safetensors", {"base_model.model.q.lora_A.weight": ("F32", [2, 2], bytes(16))}
    )
    manifest = inputs / "keys.json"
    write_manifest(read_keys(single), manifest)
    return {
        "single": single,
        "sharded": sharded,
        "index": sharded / "model.safetensors.index.json",
        "adapter": adapter,
        "manifest": manifest,
    }


@pytest.mark.parametrize("kind", ["single", "sharded", "index", "adapter", "manifest"])
def test_cli_reads_torch_free_inputs_without_torch(
    offline_env: dict[str, str],
    tmp_path: Path,
    torch_free_inputs: dict[str, Path],
    hashes: Callable[..., Any],
    kind: str,
) -> None:
    source = torch_free_inputs[kind]
    before = hashes(torch_free_inputs["single"].parent)
    out = tmp_path / "snap.json"
    done = run_python(
        f"""
        import sys
        from keyguard.cli import main
        assert main(["inspect", {str(source)!r}]) == 0
        assert main(["inspect", {str(source)!r}, "--format", "json"]) == 0
        assert main(["snapshot", {str(source)!r}, "-o", {str(out)!r}]) == 0
        heavy = [name for name in {HEAVY!r} if name in sys.modules]
        assert not heavy, heavy
        """,
        offline_env,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Tensors" in done.stdout
    assert out.exists()
    assert hashes(torch_free_inputs["single"].parent) == before


def test_errors_do_not_import_torch(offline_env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    done = run_python(
        f"""
        import sys
        from keyguard.cli import main
        assert main(["inspect", {str(broken)!r}]) == 2
        assert main(["inspect", {str(tmp_path / "missing.bin")!r}]) == 2
        assert "torch" not in sys.modules
        """,
        offline_env,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("keyguard: error: ") == 2


def test_torch_inputs_are_not_modified(
    tmp_path: Path, cli: Callable[..., Any], tiny_gpt2: Callable[..., Any], hashes: Callable[..., Any]
) -> None:
    torch = pytest.importorskip("torch")
    model = tiny_gpt2()
    folder = tmp_path / "model"
    model.save_pretrained(folder, max_shard_size="20KB")
    torch.save(model.state_dict(), tmp_path / "zip.bin")
    torch.save(model.state_dict(), tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    before = hashes(tmp_path)
    for source in (folder, tmp_path / "zip.bin", tmp_path / "legacy.bin", folder / "config.json"):
        assert cli("inspect", source).code == 0
        assert cli("snapshot", source, "-o", "-").code == 0
    assert hashes(tmp_path) == before
