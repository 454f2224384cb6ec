"""``keyguard fix ADAPTER_DIR --base REF -o OUT_DIR``: check-adapter's plan applied to a new adapter folder (weights
renamed and verified, config copied), atomically; check-adapter names that command; PEFT loads the result."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapter_checks"))
from _peft_adapters import Zoo, model, rename_all, tensors, zoo

from keyguard.adapter_checks import check_adapter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
__all__ = ["zoo"]

Cli = Callable[..., Any]
STRIP = rename_all(lambda k: k.removeprefix("base_model.model."))


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_a_stripped_prefix_is_fixed_into_a_new_adapter_folder(cli: Cli, zoo: Zoo, tmp_path: Path, safe: bool) -> None:
    import torch

    clean = zoo.adapter("llama", "clean" if safe else "bin", safe=safe)
    broken = zoo.broken(clean, keys=STRIP) if safe else _strip_bin(clean, tmp_path / "broken-bin")
    (broken / "README.md").write_text("trained on my data")
    base = zoo.base("llama")
    assert check_adapter(broken, base).findings[0].code == "KG502"  # the adapter would change nothing
    out = tmp_path / "fixed"
    result = cli("fix", broken, "--base", base, "-o", out)
    assert result.code == 0, result.out + result.err
    assert "the fixed adapter passes check-adapter" in result.out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((out / "adapter_config.json").read_text()) == json.loads(
        (broken / "adapter_config.json").read_text()
    )
    assert check_adapter(out, base).ok
    fixed, original = tensors(out), _weights(clean)
    assert sorted(fixed) == sorted(original)
    assert all(torch.equal(fixed[k], original[k]) for k in original)
    assert [p.name for p in tmp_path.iterdir() if ".keyguard-" in p.name] == []
    # PEFT itself loads the fixed folder into the base model
    import peft

    loaded = peft.PeftModel.from_pretrained(model("llama"), str(out))
    assert loaded is not None


def _weights(folder: Path) -> dict[str, Any]:
    import torch

    if (folder / "adapter_model.safetensors").exists():
        return dict(tensors(folder))
    return dict(torch.load(folder / "adapter_model.bin", weights_only=True))


def _strip_bin(source: Path, dest: Path) -> Path:
    import shutil

    import torch

    shutil.copytree(source, dest)
    state = torch.load(dest / "adapter_model.bin", weights_only=True)
    torch.save(STRIP(state), dest / "adapter_model.bin")
    return dest


def test_check_adapter_names_the_command_that_applies_its_plan(cli: Cli, zoo: Zoo, tmp_path: Path) -> None:
    broken = zoo.broken(zoo.adapter("llama"), keys=STRIP)
    result = cli("check-adapter", broken, "--base", zoo.base("llama"))
    assert result.code == 1
    text = result.out.replace(" \\\n", " ")
    line = next(line for line in text.splitlines() if line.strip().startswith("keyguard fix"))
    argv = shlex.split(line)
    assert argv[:6] == ["keyguard", "fix", str(broken), "--base", str(zoo.base("llama")), "-o"]
    assert argv[6] == f"{broken}-fixed"
    # the command, as printed, writes the fixed folder
    fixed = cli(*argv[1:])
    assert fixed.code == 0, fixed.out + fixed.err
    assert check_adapter(argv[6], zoo.base("llama")).ok


def test_adapter_outputs_are_refused_like_any_other(cli: Cli, zoo: Zoo, tmp_path: Path) -> None:
    broken = zoo.broken(zoo.adapter("llama"), keys=STRIP)
    base = zoo.base("llama")
    for output, message in [
        (broken, "is the checkpoint"),
        (broken / "adapter_model.safetensors", "is a file of the checkpoint"),
        (tmp_path / "fixed.safetensors", "name it like one"),
        (tmp_path, "already exists"),
        (tmp_path / "missing" / "fixed", "no such folder"),
    ]:
        result = cli("fix", broken, "--base", base, "-o", output)
        assert result.code == 2 and message in result.err, (output, result.err)
    result = cli("fix", broken, "--base", base, "--in-place")
    assert result.code == 2 and "write a new one with -o" in result.err
    dry = cli("fix", broken, "--base", base, "-o", tmp_path / "fixed", "--dry-run")
    assert dry.code == 0 and "would be written" in dry.out and not (tmp_path / "fixed").exists()
