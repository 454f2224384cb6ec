"""The supported PEFT range and the compatibility shims for older releases (see keyguard/integrations/_versions.py)."""

from __future__ import annotations

import pytest

from keyguard import UnsupportedVersionError
from keyguard.integrations._versions import SUPPORTED_PEFT, check_peft_version, saves_lora_only_biases


@pytest.mark.parametrize("version", ["0.15.0", "0.15.2", "0.18.1", "0.20.0", "0.21.2", "0.21.2.post1"])
def test_the_supported_range(version: str) -> None:
    check_peft_version(version, "test")


@pytest.mark.parametrize("version", ["0.14.0", "0.13.2", "0.22.0", "1.0.0", "0.20.0rc1", "0.21.0.dev0"])
def test_outside_the_range(version: str) -> None:
    with pytest.raises(UnsupportedVersionError, match=r">=0\.15,<0\.22") as caught:
        check_peft_version(version, "test")
    assert repr(version) in str(caught.value)
    assert SUPPORTED_PEFT == ">=0.15,<0.22"


@pytest.mark.parametrize(
    ("version", "saves"), [("0.15.2", False), ("0.20.0", False), ("0.21.0", True), ("0.21.2", True), ("dev", True)]
)
def test_lora_only_biases_are_saved_from_peft_0_21(version: str, saves: bool) -> None:
    assert saves_lora_only_biases(version) is saves
