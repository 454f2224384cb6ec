"""``keyguard check-adapter``: exit codes, every output format, several adapters in parallel, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapter_checks"))
from _peft_adapters import Zoo, rename_all, set_fields, zoo

from keyguard import Report
from keyguard.adapter_checks import checked_kinds

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
__all__ = ["zoo"]

Cli = Callable[..., Any]


@pytest.fixture(scope="module")
def adapters(zoo: Zoo) -> dict[str, Path]:
    clean = zoo.adapter("llama")
    return {
        "clean": clean,
        "stripped": zoo.broken(clean, keys=rename_all(lambda k: k.removeprefix("base_model.model."))),
        "warning": zoo.broken(clean, config_edit=set_fields(target_modules=["q_proj", "v_proj", "query"])),
        "rank": zoo.broken(clean, config_edit=set_fields(r=8)),
    }


def test_clean_adapter_exits_0(cli: Cli, zoo: Zoo, adapters: dict[str, Path]) -> None:
    result = cli("check-adapter", adapters["clean"], "--base", zoo.manifest("llama"))
    assert result.code == 0, result.out + result.err
    assert "OK:" in result.out and result.err == ""
    result = cli("check-adapter", adapters["clean"], "--base", zoo.base("llama"), "--format", "json")
    assert result.code == 0
    report = Report.model_validate_json(result.out)
    assert report.ok and report.findings == [] and report.checkpoint.location == str(adapters["clean"])


def test_broken_adapter_exits_1_and_fail_on(cli: Cli, zoo: Zoo, adapters: dict[str, Path]) -> None:
    base = zoo.manifest("llama")
    result = cli("check-adapter", adapters["stripped"], "--base", base)
    assert result.code == 1
    assert "KG502" in result.out and "KG102" in result.out and "add prefix 'base_model.model.'" in result.out
    assert cli("check-adapter", adapters["stripped"], "--base", base, "--fail-on", "never").code == 0
    assert cli("check-adapter", adapters["warning"], "--base", base).code == 0
    assert cli("check-adapter", adapters["warning"], "--base", base, "--fail-on", "warning").code == 1


@pytest.mark.parametrize("format", ["table", "markdown", "github", "json", "junit"])
def test_fail_on_warning_verdicts_agree_with_the_exit_code(
    cli: Cli, zoo: Zoo, adapters: dict[str, Path], format: str
) -> None:
    base = zoo.manifest("llama")
    single = cli("check-adapter", adapters["warning"], "--base", base, "--fail-on", "warning", "--format", format)
    two = (adapters["clean"], adapters["warning"])
    both = cli("check-adapter", *two, "--base", base, "--fail-on", "warning", "--format", format)
    assert single.code == both.code == 1
    if format == "json":
        assert json.loads(single.out)["verdict"] == {
            "passed": False,
            "exit_code": 1,
            "errors": 0,
            "warnings": 1,
            "message": "FAILED (--fail-on warning): 1 warning, no error; a stock PEFT load would take every tensor of"
            " the adapter.",
        }
        assert [r["verdict"]["passed"] for r in json.loads(both.out)] == [True, False]
    elif format == "junit":
        for result in (single, both):
            root = ET.fromstring(result.out)
            assert int(root.get("failures", "0")) == 1
    else:
        assert "OK:" not in single.out and "FAILED (--fail-on warning): 1 warning, no error;" in single.out
        assert "2 adapters checked: 1 OK, 1 failing (--fail-on warning)" in both.out
        if format == "markdown":
            assert single.out.startswith("### ❌") and "| ❌ | 0 | 1 |" in both.out and "| ✅ | 0 | 0 |" in both.out
    relaxed = cli("check-adapter", adapters["warning"], "--base", base, "--format", format)
    assert relaxed.code == 0
    if format in ("table", "markdown", "github"):
        assert "OK: a stock PEFT load would take every tensor of the adapter (1 warning)." in relaxed.out


def test_github_and_markdown(cli: Cli, zoo: Zoo, adapters: dict[str, Path]) -> None:
    result = cli("check-adapter", adapters["rank"], "--base", zoo.base("llama"), "--format", "github")
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0].startswith("::error file=") and "title=KG507 rank_mismatch::" in lines[0]
    assert lines[-1].startswith(f"::notice title=keyguard%3A {adapters['rank']}::")
    markdown = cli("check-adapter", adapters["rank"], "--base", zoo.base("llama"), "--format", "markdown")
    assert markdown.out.startswith("### ❌ keyguard:") and "`KG507`" in markdown.out


def junit_cases(document: str) -> dict[str, dict[str, ET.Element]]:
    """``suite name -> case name -> <testcase>`` of a JUnit document, checking the counts it declares."""
    root = ET.fromstring(document)
    assert root.tag == "testsuites"
    out: dict[str, dict[str, ET.Element]] = {}
    total = failures = errors = 0
    for suite in root.findall("testsuite"):
        cases = {case.get("name", ""): case for case in suite.findall("testcase")}
        assert int(suite.get("tests", "-1")) == len(cases)
        failed = sum(1 for c in cases.values() if c.find("failure") is not None)
        assert int(suite.get("failures", "-1")) == failed
        total, failures = total + len(cases), failures + failed
        errors += sum(1 for c in cases.values() if c.find("error") is not None)
        out[suite.get("name", "")] = cases
    assert (int(root.get("tests", "-1")), int(root.get("failures", "-1"))) == (total, failures)
    assert int(root.get("errors", "-1")) == errors
    return out


def test_junit(cli: Cli, zoo: Zoo, adapters: dict[str, Path], tmp_path: Path) -> None:
    xml_file = tmp_path / "reports" / "keyguard.xml"
    xml_file.parent.mkdir()
    result = cli(
        "check-adapter", adapters["clean"], adapters["stripped"], "--base", zoo.manifest("llama"), "--format", "junit",
        "--junit-xml", xml_file, "--check-values",
    )  # fmt: skip
    assert result.code == 1
    assert xml_file.read_text() == result.out
    suites = junit_cases(result.out)
    assert list(suites) == [f"keyguard: {adapters['clean']}", f"keyguard: {adapters['stripped']}"]
    expected = checked_kinds(check_values=True)
    for cases in suites.values():
        assert [name.split()[0] for name in cases] == expected  # one case per check, passing ones included
    clean, stripped = suites.values()
    assert all(case.find("failure") is None for case in clean.values())
    failed = {name.split()[0] for name, case in stripped.items() if case.find("failure") is not None}
    assert failed == {"KG502", "KG102"}
    failure = stripped[next(n for n in stripped if n.startswith("KG102"))].find("failure")
    assert failure is not None and "add prefix 'base_model.model.'" in (failure.text or "")
    assert "base_model.model" in failure.get("message", "")


def test_several_adapters_in_parallel_with_one_summary(cli: Cli, zoo: Zoo, adapters: dict[str, Path]) -> None:
    folders = [adapters[name] for name in ("clean", "stripped", "warning", "rank")]
    result = cli("check-adapter", *folders, "--base", zoo.manifest("llama"), "--jobs", "2")
    assert result.code == 1
    assert result.out.count("checkpoint: ") == 4
    assert result.out.rstrip().endswith("4 adapters checked: 2 OK (1 with warnings), 2 failing")
    assert result.out.count("adapters checked") == 1
    as_json = cli("check-adapter", *folders, "--base", zoo.manifest("llama"), "--format", "json", "-j", "2")
    reports = [Report.model_validate(r) for r in json.loads(as_json.out)]
    assert [r.checkpoint.location for r in reports] == [str(f) for f in folders]  # in the order given
    assert [r.ok for r in reports] == [True, False, True, False]


def test_unreadable_adapter_folder_exits_2_naming_it(
    cli: Cli, zoo: Zoo, adapters: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "not-exported"
    result = cli("check-adapter", adapters["clean"], missing, "--base", zoo.manifest("llama"))
    assert result.code == 2
    assert result.err == f"keyguard: error: {missing}: no such adapter folder\n"
    assert "2 adapters checked: 1 OK, 0 failing, 1 unreadable" in result.out
    suites = junit_cases(cli("check-adapter", missing, "--base", zoo.manifest("llama"), "--format", "junit").out)
    assert suites[f"keyguard: {missing}"]["read the input"].find("error") is not None
    bad_base = cli("check-adapter", adapters["clean"], "--base", tmp_path / "nothing.json")
    assert bad_base.code == 2 and bad_base.out == "" and bad_base.err.count("\n") == 1


def test_files_inside_adapters_are_their_folders(cli: Cli, zoo: Zoo, adapters: dict[str, Path]) -> None:
    """pre-commit passes changed files: both files of one adapter check that adapter once."""
    clean = adapters["clean"]
    result = cli(
        "check-adapter", clean / "adapter_config.json", clean / "adapter_model.safetensors", "--base",
        zoo.manifest("llama"),
    )  # fmt: skip
    assert result.code == 0 and result.out.count("checkpoint: ") == 1


def test_snapshot_then_check_without_torch(
    cli: Cli, offline_env: dict[str, str], zoo: Zoo, adapters: dict[str, Path], tmp_path: Path
) -> None:
    """The CI recipe: snapshot the base once, then check adapters against the manifest, never importing torch."""
    manifest = tmp_path / "base-keys.json"
    assert cli("snapshot", zoo.config_folder("llama"), "-o", manifest).code == 0
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\n"
        "from keyguard.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    command = [sys.executable, str(probe), "check-adapter", str(adapters["clean"]), str(adapters["stripped"])]
    command += ["--base", str(manifest), "-j", "2", "--format", "github"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=offline_env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "HEAVY []" in done.stderr
    assert "::error file=" in done.stdout and "KG102" in done.stdout


def test_bad_jobs_is_a_usage_error(cli: Cli, zoo: Zoo, adapters: dict[str, Path]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("check-adapter", adapters["clean"], "--base", zoo.manifest("llama"), "--jobs", "0")
    assert exit_info.value.code == 2


def test_pre_commit_hook(cli: Cli, zoo: Zoo, adapters: dict[str, Path]) -> None:
    """The hook runs `keyguard check-adapter` on the adapter files pre-commit passes, with the user's --base."""
    import re
    import shlex

    import yaml

    hooks = yaml.safe_load((Path(__file__).resolve().parents[2] / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "keyguard-check-adapter")
    assert hook["language"] == "python" and hook["require_serial"] is True
    pattern = re.compile(hook["files"])
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        assert pattern.search(f"exports/run-7/{name}") and pattern.search(name)
    assert not pattern.search("exports/run-7/model.safetensors")
    assert not pattern.search("exports/run-7/my_adapter_config.json")
    program, *args = shlex.split(hook["entry"])
    assert program == "keyguard"
    clean = adapters["clean"]
    files = [clean / "adapter_config.json", clean / "adapter_model.safetensors"]
    assert cli(*args, "--base", zoo.manifest("llama"), *files).code == 0
    stripped = adapters["stripped"] / "adapter_model.safetensors"
    assert cli(*args, "--base", zoo.manifest("llama"), *files, stripped).code == 1
