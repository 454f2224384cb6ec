"""Without torch or transformers: one error that names everything needed at once, said once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from keyguard._st_write import write_safetensors
from keyguard.sources import KeySet, TensorInfo, write_manifest

# run the CLI in an interpreter where the optional packages cannot be imported (as on a machine without them)
WITHOUT = (
    "import sys\n"
    "for name in {blocked!r}:\n"
    "    sys.modules[name] = None\n"
    "from keyguard.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def run_without(
    blocked: list[str], args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT.format(blocked=blocked), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_a_config_folder_names_transformers_and_torch_at_once(tmp_path: Path, offline_env: dict[str, str]) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    done = run_without(["torch", "transformers"], ["inspect", str(folder)], offline_env, tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "transformers and torch are needed to build the model described by" in done.stderr
    assert "pip install 'keyguard[hf,torch]'" in done.stderr

    done = run_without(["torch"], ["inspect", str(folder)], offline_env, tmp_path)  # transformers alone is not enough
    assert done.returncode == 2 and "torch is needed" in done.stderr and "keyguard[torch]'" in done.stderr


def test_check_values_without_torch_says_so_once(tmp_path: Path, offline_env: dict[str, str]) -> None:
    base = {f"model.layers.{i}.self_attn.q_proj.weight": TensorInfo((4, 4), "F32") for i in range(2)}
    manifest = tmp_path / "base.json"
    write_manifest(KeySet(tensors=base, format="module", location="base"), manifest)
    folders = []
    for name in ("one", "two", "three"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})
        )
        tensors = {}
        for i in range(2):
            prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
            tensors[f"{prefix}.lora_A.weight"] = ("F32", [2, 4], bytes(32))
            tensors[f"{prefix}.lora_B.weight"] = ("F32", [4, 2], bytes(32))
        write_safetensors(folder / "adapter_model.safetensors", tensors)
        folders.append(str(folder))
    done = run_without(
        ["torch"], ["check-adapter", *folders, "--base", str(manifest), "--check-values"], offline_env, tmp_path
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("torch is needed") == 1, done.stderr  # once, not once per adapter
    assert "--check-values" in done.stderr and "pip install 'keyguard[torch]'" in done.stderr

    done = run_without(["torch"], ["check-adapter", *folders, "--base", str(manifest)], offline_env, tmp_path)
    assert done.returncode == 0, done.stderr  # without --check-values, torch is not needed at all


@pytest.mark.parametrize(("packages", "extras"), [(["torch"], "torch"), (["transformers", "torch"], "hf,torch")])
def test_require_names_every_missing_package(packages: list[str], extras: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from keyguard import MissingDependencyError
    from keyguard.sources._torch import require

    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError) as raised:
        require("for a test", *packages, "json")  # json is there: not named
    assert raised.value.package == " and ".join(packages) and raised.value.extra == extras
    assert "json" not in str(raised.value)
