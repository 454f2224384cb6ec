"""Reports in Python: short reprs, str(finding) as the table shows it, notebook display."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import keyguard
from keyguard.demo import write_example
from keyguard.report import Report


@pytest.fixture
def demo(tmp_path: Path) -> Report:
    checkpoint, manifest = write_example(str(tmp_path / "demo"))
    return keyguard.diagnose(checkpoint, manifest)


@pytest.fixture
def large() -> Report:
    """A 7B-size diagnosis: 32 layers of a Llama under ``module.``, odd keys included."""
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    expected = {f"model.layers.{i}.{n}.weight": (4096, 4096) for i in range(32) for n in names}
    expected["lm_head.weight"] = (32000, 4096)
    checkpoint = {"module." + k: v for k, v in expected.items()}
    checkpoint["module.model.layers.0.<script>.weight"] = (1,)
    return keyguard.diagnose(checkpoint, expected)


def test_reprs_are_short(demo: Report, large: Report) -> None:
    for report in (demo, large):
        text = repr(report)
        assert len(text) < 200 and text.startswith("<Report FAILS: ") and text.endswith(">")
        for finding in report.findings:
            assert len(repr(finding)) < 120 and repr(finding).startswith(f"<Finding {finding.code} {finding.kind}")
    assert repr(demo) == "<Report FAILS: 4 errors, 0 warnings; 42 checkpoint keys vs 39 expected, coverage 0% -> 97%>"
    assert repr(keyguard.read_keys({"a": (1,)})).endswith(": 1 tensor>")  # one tensor, not "1 tensors"
    assert repr(keyguard.read_keys({"a": (1,), "b": (2,)})).endswith(": 2 tensors>")


def test_str_of_a_finding_reads_like_the_table(demo: Report) -> None:
    finding = next(f for f in demo.findings if f.code == "KG101")
    text = str(finding)
    assert text.startswith("KG101 extra_prefix: 38 checkpoint key(s) carry the extra prefix")
    assert "fix [safe]: strip prefix 'module._orig_mod.'" in text and "checkpoint_keys=" not in text


def test_notebook_html_has_the_table_and_a_collapsible_block_per_finding(large: Report) -> None:
    page = large._repr_html_()
    ET.fromstring(page.replace("&nbsp;", " "))  # well-formed: nothing unescaped broke it
    assert page.count("<details>") == len(large.findings) and "<table>" in page and "<thead>" in page
    assert "<script>" not in page and html.escape("<script>") in page  # keys are escaped
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.DOTALL)
    assert len(rows) == 1 + len(large.findings)
    assert "keyguard explain KG101" in page
    assert len(page) < 20_000  # the summary and the findings' patterns, not every key


def test_notebook_markdown_is_the_markdown_format(demo: Report) -> None:
    assert demo._repr_markdown_() == demo.render("markdown")
    text = demo.render("markdown")
    assert "| error | `KG401` | missing | 1 | harmless? |" in text  # the same fix column as the table
    no_overlap = text[text.index("<details><summary><code>KG404</code>") :]
    body = no_overlap[: no_overlap.index("</details>")]
    assert "- more: `keyguard explain KG404`" in body  # never an empty block
