"""``keyguard.testing``: pytest helpers that fail with the rendered report as the message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "adapter_checks"))
from _peft_adapters import Zoo, rename_all, set_fields, zoo

import keyguard
from keyguard._st_write import write_safetensors
from keyguard.testing import assert_adapter_loadable, assert_keys_match

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
__all__ = ["zoo"]

F32 = ("F32", [2, 2], bytes(16))


def test_assert_keys_match(tmp_path: Path) -> None:
    expected = {"encoder.weight": F32, "head.weight": F32}
    write_safetensors(tmp_path / "good.safetensors", expected)
    write_safetensors(tmp_path / "ddp.safetensors", {"module." + k: v for k, v in expected.items()})
    keys = list(expected)
    report = assert_keys_match(tmp_path / "good.safetensors", keys)
    assert isinstance(report, keyguard.Report) and report.ok
    with pytest.raises(AssertionError) as failure:
        assert_keys_match(tmp_path / "ddp.safetensors", keys)
    message = str(failure.value)
    assert message == keyguard.diagnose(tmp_path / "ddp.safetensors", keys).render("table")
    assert "KG101 extra_prefix" in message and "strip prefix 'module.'" in message
    with pytest.raises(AssertionError, match=r"^### ❌ keyguard"):
        assert_keys_match(tmp_path / "ddp.safetensors", keys, format="markdown")
    # options reach diagnose, fail_on decides
    assert_keys_match(tmp_path / "good.safetensors", [*keys, "extra.weight"], ignore=["^extra"])
    assert_keys_match(tmp_path / "ddp.safetensors", keys, fail_on="never")


def test_assert_adapter_loadable(zoo: Zoo) -> None:
    clean = zoo.adapter("llama")
    base = zoo.manifest("llama")
    assert assert_adapter_loadable(clean, base).ok
    stripped = zoo.broken(clean, keys=rename_all(lambda k: k.removeprefix("base_model.model.")))
    with pytest.raises(AssertionError) as failure:
        assert_adapter_loadable(stripped, base)
    assert str(failure.value) == keyguard.check_adapter(stripped, base).render("table")
    assert "KG502 no_matching_modules" in str(failure.value)
    # a warning fails only when asked to
    warned = zoo.broken(clean, config_edit=set_fields(target_modules=["q_proj", "v_proj", "query"]))
    assert_adapter_loadable(warned, base)
    with pytest.raises(AssertionError, match="KG503"):
        assert_adapter_loadable(warned, base, fail_on="warning")
    # options reach check_adapter
    untrained = zoo.adapter("llama", "untrained", trained=False)
    assert_adapter_loadable(untrained, base)
    with pytest.raises(AssertionError, match="KG512"):
        assert_adapter_loadable(untrained, base, check_values=True, fail_on="warning")
