"""CI renderers: JUnit XML (validated with xml.etree) and several reports in one output with one summary."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import keyguard
from keyguard import Report
from keyguard.report import KINDS
from keyguard.report._render import render, render_junit, render_many

EXPECTED = {f"layers.{i}.{m}.weight": (4, 4) for i in range(3) for m in ("q", "v")}


@pytest.fixture
def reports() -> list[Report]:
    clean = keyguard.diagnose(EXPECTED, EXPECTED)
    ddp = keyguard.diagnose({"module." + k: v for k, v in EXPECTED.items()}, EXPECTED)
    odd = {**EXPECTED, "odd<&>\"key'.weight": (2,)}
    return [clean, ddp, keyguard.diagnose(odd, EXPECTED)]


def cases_of(document: str) -> list[list[ET.Element]]:
    root = ET.fromstring(document)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert int(root.get("tests", "-1")) == sum(len(s.findall("testcase")) for s in suites)
    return [suite.findall("testcase") for suite in suites]


def test_junit_of_a_diagnosis_has_a_case_per_engine_kind(reports: list[Report]) -> None:
    clean, ddp, odd = reports
    engine_kinds = [code for code in KINDS if code < "KG5"]
    for report in (clean, ddp):
        (cases,) = cases_of(render_junit(report))
        assert [c.get("name", "").split()[0] for c in cases] == engine_kinds
    (cases,) = cases_of(ddp.render("junit"))
    failing = {c.get("name", "").split()[0] for c in cases if c.find("failure") is not None}
    assert failing == {"KG101", "KG404"}
    # keys with markup characters survive as text
    (cases,) = cases_of(render(odd, "junit"))
    failure = next(c.find("failure") for c in cases if c.get("name", "").startswith("KG402"))
    assert failure is not None and "odd<&>\"key'.weight" in (failure.text or "")


def test_junit_fail_on_and_explicit_checks(reports: list[Report]) -> None:
    ddp = reports[1]
    (cases,) = cases_of(render_junit(ddp, fail_on="never"))
    assert all(c.find("failure") is None for c in cases)
    assert any(c.find("system-out") is not None for c in cases)  # findings still shown
    (cases,) = cases_of(render_junit(ddp, checks=["KG502"]))
    assert [c.get("name", "").split()[0] for c in cases] == ["KG502", "KG404", "KG101"]


def test_render_many(reports: list[Report]) -> None:
    clean = reports[0]
    assert render_many([clean], "table") == render(clean, "table")
    assert render_many([clean], "json") == render(clean, "json")
    table = render_many(reports, "table")
    assert table.endswith("3 inputs checked: 1 OK, 2 failing")
    assert table.count("checkpoint: ") == 3
    listed = json.loads(render_many(reports, "json", errors={"gone": "gone: no such adapter folder"}))
    assert [Report.model_validate(r).ok for r in listed] == [True, False, False]
    markdown = render_many(reports, "markdown", errors={"gone": "gone: no such adapter folder"})
    assert "**4 inputs checked: 1 OK, 2 failing, 1 unreadable**" in markdown
    assert "| `gone` | unreadable | - | - |" in markdown
    github = render_many(reports, "github", errors={"gone": "gone: no such adapter folder"}).splitlines()
    assert github[-2] == "::error title=keyguard%3A gone::gone: no such adapter folder"
    notices = [line for line in github if line.startswith("::notice title=keyguard%3A ")]
    # one notice per adapter, each naming the adapter it is about
    assert [n.split("::")[1] for n in notices] == [f"notice title=keyguard%3A {r.checkpoint.location}" for r in reports]
    assert github[-1].startswith("::notice title=keyguard summary::4 inputs checked")
    suites = cases_of(render_many(reports, "junit", errors={"gone": "gone: no such adapter folder"}))
    assert len(suites) == 4 and suites[-1][0].find("error") is not None
    with pytest.raises(ValueError, match="unknown report format 'html'"):
        render_many(reports, "html")
