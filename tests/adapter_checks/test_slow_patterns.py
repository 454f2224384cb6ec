"""A regular expression in ``adapter_config.json`` that backtracks without end (``(.*)*X``: minutes in ``re``, and
so in PEFT) is a bounded, clear ``KG501`` finding naming its field; the checks that do not need it still run.
Benign patterns keep PEFT's answers (``test_peft_rules`` compares them with PEFT itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _peft_adapters import Zoo, set_fields, zoo

from keyguard.adapter_checks import check_adapter

__all__ = ["zoo"]

SLOW = r"(.*)*X"  # 2**30 ways to split a 30-character module path


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("target_modules", {"target_modules": SLOW}),
        ("exclude_modules", {"exclude_modules": SLOW}),
        ("rank_pattern", {"rank_pattern": {SLOW: 8}}),
        ("alpha_pattern", {"alpha_pattern": {SLOW: 16}}),
        ("modules_to_save", {"modules_to_save": [SLOW]}),
        ("layers_pattern", {"layers_pattern": [SLOW], "layers_to_transform": [0]}),
    ],
)
def test_a_pattern_that_backtracks_forever_is_a_finding(zoo: Zoo, field: str, fields: dict[str, Any]) -> None:
    adapter = zoo.broken(zoo.adapter("llama"), config_edit=set_fields(**fields))
    report = check_adapter(adapter, zoo.base("llama"))
    slow = [f for f in report.findings if f.code == "KG501" and f.ctx.get("problem") == "pattern-too-slow"]
    assert len(slow) == 1, [f.message for f in report.findings]
    assert list(slow[0].ctx["fields"]) == [field]
    assert f"{field} '(.*)*X' did not finish matching the base's" in slow[0].message
    assert "PEFT would hang" in slow[0].message


def test_the_command_line_stays_bounded_in_parallel_workers(zoo: Zoo, cli: Any, tmp_path: Path) -> None:
    slow = zoo.broken(zoo.adapter("llama"), config_edit=set_fields(target_modules=SLOW))
    clean = zoo.adapter("llama")
    result = cli("check-adapter", slow, clean, "--base", zoo.base("llama"), "--jobs", "2", "--format", "json")
    assert result.code == 1, result.err
    assert "did not finish matching" in result.out
