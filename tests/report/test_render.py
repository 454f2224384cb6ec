"""The renderers over a report: table width, GitHub workflow-command escaping, Markdown escaping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import keyguard
from keyguard._st_write import write_safetensors
from keyguard.report import RENDERERS, Report, render

F32 = ("F32", [2, 2], bytes(16))


def st(path: Path, keys: dict[str, tuple[str, list[int], bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, keys)
    return path


@pytest.fixture
def busy_report(tmp_path: Path) -> Report:
    """A report with most kinds of findings, long paths and long keys, from real files."""
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "checkpoints" / "epoch=12-step=340000"
    long_block = "transformer.encoder.very_long_module_name_for_a_vision_language_adapter_block"
    expected = {f"{long_block}.layers.{i}.{m}.weight": F32 for i in range(12) for m in ("q_proj", "k_proj", "o_proj")}
    expected |= {"embed_tokens.weight": ("F32", [8, 2], bytes(64)), "norm.weight": ("F32", [2], bytes(8))}
    expected |= {"lm_head.weight": ("F32", [8, 2], bytes(64)), "head.extra.weight": F32}
    checkpoint = {"module." + k: v for k, v in expected.items() if k != "head.extra.weight"}
    checkpoint["module.embed_tokens.weight"] = ("F32", [6, 2], bytes(48))  # resized vocabulary
    checkpoint["module.norm.weight"] = ("F16", [2], bytes(4))  # another dtype
    checkpoint["module." + long_block + ".rotary_emb.inv_freq"] = ("F32", [2], bytes(8))
    checkpoint["module.optimizer." + "x" * 150] = F32
    ck = st(deep / "model-with-a-long-file-name-that-goes-on.safetensors", checkpoint)
    ex = st(deep / "reference-with-a-long-file-name-as-well.safetensors", expected)
    return keyguard.diagnose(ck, ex)


def huge(report: Report) -> Report:
    """The same findings with the counts of a 700B-parameter checkpoint (rendering must not overflow)."""
    summary = report.summary.model_copy(
        update={"expected": 1_234_567, "checkpoint": 1_234_568, "matched": 1_000_000, "fixable": 234_567}
        | {"ignored": 98_765, "coverage_before": 0.81, "coverage_after": 1.0}
    )
    findings = [f.model_copy(update={"count": f.count * 100_003}) for f in report.findings]
    return report.model_copy(update={"summary": summary, "findings": findings})


@pytest.mark.parametrize("width", [100, 80])
def test_table_lines_fit_the_width(busy_report: Report, width: int) -> None:
    kinds = {f.kind for f in busy_report.findings}
    assert {"extra_prefix", "shape_mismatch", "unexpected", "missing", "no_overlap"} <= kinds
    for report in (busy_report, huge(busy_report)):
        text = report.render("table", width=width)
        too_long = [line for line in text.splitlines() if len(line) > width]
        assert not too_long, too_long
        for finding in report.findings:
            assert finding.code in text
        if report is not busy_report:
            assert "1,234,568 checkpoint keys" in " ".join(text.split())


def test_a_path_too_long_for_a_line_is_shortened_not_split(busy_report: Report) -> None:
    lines = busy_report.render("table", width=100).splitlines()
    location = str(busy_report.checkpoint.location)
    (line,) = [line for line in lines if line.startswith("checkpoint:")]
    assert len(line) <= 100 and "..." in line
    assert location[:20] in line and location[-30:] in line  # where it starts and the file name, on one line
    assert not any(line.strip().startswith(location[-30:]) for line in lines)  # no tail left on a line of its own


# -- GitHub ------------------------------------------------------------------------------------------------------

_GH_LINE = re.compile(r"::(error|warning|notice) ([^:]*)::(.*)")
_GH_UNESCAPE = {"%25": "%", "%0D": "\r", "%0A": "\n", "%3A": ":", "%2C": ","}


def unescape(text: str) -> str:
    return re.sub(r"%(?:25|0D|0A|3A|2C)", lambda m: _GH_UNESCAPE[m.group(0)], text)


def properties(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):  # a raw comma only ever separates properties
        name, _, value = item.partition("=")
        out[name] = unescape(value)
    return out


def test_github_annotations_escape_percent_colon_comma_and_newlines(tmp_path: Path) -> None:
    odd = ["stray%0A,key:1\nsecond line.weight", "100%.bias\r"]
    ck = st(
        tmp_path / "run:1,final%.safetensors",
        {"module.a.weight": F32, "module.b.weight": F32} | dict.fromkeys(odd, F32),
    )
    ex = st(tmp_path / "ref.safetensors", {"a.weight": F32, "b.weight": F32})
    report = keyguard.diagnose(ck, ex)
    text = report.render("github")
    lines = text.split("\n")
    assert len(lines) == len(report.findings) + 1  # one line per finding, plus the summary notice
    assert "\r" not in text
    parsed = [_GH_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    for match, finding in zip(parsed, report.findings):
        assert match is not None
        level, props, data = match.groups()
        assert level == {"fatal": "error", "error": "error", "warning": "warning"}[finding.severity.value]
        fields = properties(props)
        assert fields["file"] == str(ck)
        assert fields["title"] == f"{finding.code} {finding.kind}"
        assert "%" not in re.sub(r"%(?:25|0D|0A|3A|2C)", "", props)
        assert "%" not in re.sub(r"%(?:25|0D|0A)", "", data)  # data escapes only %, CR and LF
        assert unescape(data).startswith(finding.message)
    unexpected = next(m for m, f in zip(parsed, report.findings) if f.kind == "unexpected")
    assert unexpected is not None
    for key in odd:
        assert key in unescape(unexpected.group(3))
    notice = lines[-1]
    assert properties(notice[len("::notice ") : notice.index("::", 2)])["title"] == f"keyguard: {ck}"  # names the input
    assert "coverage 0%25 -> 100%25" in notice


def test_github_levels_follow_severity(tmp_path: Path) -> None:
    ck = st(tmp_path / "ck.safetensors", {"a.weight": ("F16", [2, 2], bytes(8))})
    ex = st(tmp_path / "ex.safetensors", {"a.weight": F32})
    lines = keyguard.diagnose(ck, ex).render("github").splitlines()
    assert lines[0].startswith("::warning ") and lines[-1].startswith("::notice ")
    assert len(lines) == 2


# -- Markdown ----------------------------------------------------------------------------------------------------


def table_cells(line: str) -> list[str]:
    """Cells of a Markdown table row, honouring backslash-escaped pipes."""
    assert line.startswith("|") and line.endswith("|")
    return re.split(r"(?<!\\)\|", line)[1:-1]


def test_markdown_escapes_pipes_and_keeps_the_table_intact(tmp_path: Path) -> None:
    keys = {f"w|x.layers.{i}.weight": F32 for i in range(3)} | {"odd`key|<b>.weight": F32, "``": F32}
    ck = st(tmp_path / "ck.safetensors", keys)
    ex = st(tmp_path / "ex.safetensors", {f"layers.{i}.weight": F32 for i in range(3)})
    report = keyguard.diagnose(ck, ex)
    prefix = next(f for f in report.findings if f.kind == "extra_prefix")
    assert "w|x." in prefix.message
    text = report.render("markdown")
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 2 + len(report.findings)
    for row in rows:
        assert len(table_cells(row)) == 5, row
    # Markdown lines: pipes escaped, no raw HTML from keys
    fix_line = next(line for line in lines if line.startswith("- fix [safe]"))
    assert "'w\\|x.'" in fix_line
    # the <summary> line is raw HTML: HTML-escaped, and a backslash there would be shown as is
    summaries = [line for line in lines if line.startswith("<details><summary>")]
    assert len(summaries) == len(report.findings)
    prefix_summary = next(line for line in summaries if "KG101" in line)
    assert "'w|x.'" in prefix_summary and "\\|" not in prefix_summary
    outside_code = [line for line in lines if not line.startswith(("- `", "- e.g. `"))]
    assert not [line for line in outside_code if "<b>" in line]
    # keys holding backticks stay one code span each
    assert "- ``odd`key|<b>.weight``" in lines
    assert "- ``` `` ```" in lines  # a key of two backticks: a longer fence, padded


def test_every_renderer_over_the_same_report(busy_report: Report) -> None:
    assert set(RENDERERS) == {"table", "json", "markdown", "github", "junit"}
    data = json.loads(render(busy_report, "json"))
    assert data["format"] == "keyguard.report/v1"
    assert Report.model_validate(data) == busy_report
    assert str(busy_report) == render(busy_report, "table")
    with pytest.raises(ValueError, match="unknown report format 'html'"):
        render(busy_report, "html")
