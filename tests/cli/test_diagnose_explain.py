"""``keyguard diagnose`` and ``keyguard explain``: exit codes, formats, options, bad input; in process (fast) and a
few as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keyguard._console import plain
from keyguard._st_write import write_safetensors
from keyguard.fixes import Plan, StripPrefix
from keyguard.report import KINDS

Cli = Callable[..., Any]
F32 = ("F32", [2, 2], bytes(16))
F16 = ("F16", [2, 2], bytes(8))


def st(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> Path:
    write_safetensors(path, tensors)
    return path


REFERENCE = {f"layers.{i}.{m}.weight": F32 for i in range(3) for m in ("q", "k")} | {"norm.weight": F32}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A reference and checkpoints that are clean, only warn, or fail."""
    return {
        "reference": st(tmp_path / "reference.safetensors", REFERENCE),
        "clean": st(tmp_path / "clean.safetensors", dict(REFERENCE)),
        "warning": st(tmp_path / "half.safetensors", dict.fromkeys(REFERENCE, F16)),
        "error": st(tmp_path / "ddp.safetensors", {"module." + k: v for k, v in REFERENCE.items()}),
        "stray": st(tmp_path / "stray.safetensors", REFERENCE | {"optimizer.step": F32, "ema.shadow": F32}),
    }


# -- exit codes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "codes"),
    [
        ("clean", {"error": 0, "warning": 0, "never": 0}),
        ("warning", {"error": 0, "warning": 1, "never": 0}),
        ("error", {"error": 1, "warning": 1, "never": 0}),
    ],
)
def test_exit_codes_follow_fail_on(cli: Cli, files: dict[str, Path], checkpoint: str, codes: dict[str, int]) -> None:
    for fail_on, code in codes.items():
        result = cli("diagnose", files[checkpoint], "--expected", files["reference"], "--fail-on", fail_on)
        assert result.code == code, (fail_on, result.out)
    default = cli("diagnose", files[checkpoint], "-e", files["reference"])
    assert default.code == codes["error"]


def says_passed(message: str) -> bool:
    return message.startswith("OK:") or "(not failing: --fail-on" in message


@pytest.mark.parametrize("fail_on", ["error", "warning", "never"])
@pytest.mark.parametrize("checkpoint", ["clean", "warning", "error"])
def test_the_verdict_agrees_with_the_exit_code_in_every_format(
    cli: Cli, files: dict[str, Path], checkpoint: str, fail_on: str
) -> None:
    args = ("diagnose", files[checkpoint], "-e", files["reference"], "--fail-on", fail_on, "--format")
    as_json = cli(*args, "json")
    verdict = json.loads(as_json.out)["verdict"]
    assert verdict["passed"] == (as_json.code == 0) == says_passed(verdict["message"]), verdict
    assert verdict["exit_code"] == as_json.code
    for format in ("table", "markdown", "github"):
        result = cli(*args, format)
        assert result.code == as_json.code
        assert " ".join(verdict["message"].split()) in " ".join(result.out.split()), (format, result.out)
        if format == "markdown":
            assert result.out.startswith("### ✅" if verdict["passed"] else "### ❌")
    if checkpoint == "warning":  # the keys load either way: the verdict says so, and why it fails
        assert "load_state_dict(strict=True) would succeed" in verdict["message"]
        failed = verdict["message"].startswith("FAILED (--fail-on warning): 1 warning, no error;")
        assert failed == (fail_on == "warning")


def test_clean_checkpoint_says_ok(cli: Cli, files: dict[str, Path]) -> None:
    result = cli("diagnose", files["clean"], "-e", files["reference"])
    assert result.code == 0
    assert "OK: load_state_dict(strict=True) would succeed." in result.out
    assert f"{len(REFERENCE)} match as they stand" in result.out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.safetensors", "no such file or folder"),
        (lambda d: d / "garbage.safetensors", "not a safetensors file"),
        (lambda d: d / "empty.bin", "is empty"),
        (lambda d: d / "other.json", "is neither a keyguard manifest"),
        (lambda d: d / "folder", "expected model.safetensors"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    cli: Cli, files: dict[str, Path], tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (bad_dir / "empty.bin").write_bytes(b"")
    (bad_dir / "other.json").write_text('{"hello": 1}')
    (bad_dir / "folder").mkdir()
    (bad_dir / "folder" / "notes.txt").write_text("nothing to read")
    bad = make(bad_dir)
    for args in (("diagnose", bad, "-e", files["reference"]), ("diagnose", files["clean"], "-e", bad)):
        result = cli(*args)
        assert result.code == 2
        assert result.out == ""
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("keyguard: error: ") and str(bad) in lines[0]
        assert message in lines[0]
        assert "Traceback" not in result.err


def test_bad_input_in_a_real_process(
    cli_subprocess: Callable[..., Any], files: dict[str, Path], tmp_path: Path
) -> None:
    done = cli_subprocess("diagnose", tmp_path / "nope.safetensors", "--expected", files["reference"])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("keyguard: error: ")
    usage = cli_subprocess("diagnose", files["clean"])  # --expected is required
    assert usage.returncode == 2 and "--expected" in usage.stderr and "Traceback" not in usage.stderr
    ok = cli_subprocess("diagnose", files["error"], "--expected", files["reference"], "--format", "github")
    assert ok.returncode == 1 and ok.stdout.startswith("::error ")


# -- formats -----------------------------------------------------------------------------------------------------


def test_json_format(cli: Cli, files: dict[str, Path]) -> None:
    result = cli("diagnose", files["error"], "-e", files["reference"], "--format", "json")
    assert result.code == 1
    data = json.loads(result.out)
    assert data["format"] == "keyguard.report/v1"
    assert data["ok"] is False
    assert data["summary"]["checkpoint"] == data["summary"]["expected"] == len(REFERENCE)
    assert {f["code"] for f in data["findings"]} == {"KG101", "KG404"}
    assert data["plan"]["rules"] == [json.loads(StripPrefix(prefix="module.", reason="KG101").model_dump_json())]
    assert data["checkpoint"]["location"] == str(files["error"])


def test_markdown_format(cli: Cli, files: dict[str, Path]) -> None:
    result = cli("diagnose", files["error"], "-e", files["reference"], "--format", "markdown")
    lines = result.out.splitlines()
    assert lines[0].startswith("### ❌ keyguard:")
    header = lines.index("| severity | code | kind | keys | fix |")
    assert lines[header + 1] == "|---|---|---|---:|---|"
    assert lines[header + 2].startswith("| fatal | `KG404` |")
    assert f"| error | `KG101` | extra_prefix | {len(REFERENCE)} | safe |" in lines
    assert result.out.count("<details>") == 2


def test_github_format(cli: Cli, files: dict[str, Path]) -> None:
    for checkpoint, first in (("error", "::error "), ("warning", "::warning "), ("clean", "::notice ")):
        result = cli("diagnose", files[checkpoint], "-e", files["reference"], "--format", "github")
        lines = result.out.strip().splitlines()
        assert lines and all(line.startswith(("::error ", "::warning ", "::notice ")) for line in lines), lines
        assert lines[0].startswith(first) and lines[-1].startswith("::notice title=keyguard%3A ")


def test_table_format_is_the_default(cli: Cli, files: dict[str, Path]) -> None:
    default = cli("diagnose", files["error"], "-e", files["reference"])
    table = cli("diagnose", files["error"], "-e", files["reference"], "--format", "table")
    assert default.out == table.out
    assert "KG101 extra_prefix" in table.out and "Safe plan (1 rule):" in table.out
    assert not [line for line in table.out.splitlines() if len(line) > 100]


@pytest.mark.slow
def test_table_fits_100_columns_for_a_94000_key_lora(cli: Cli, tmp_path: Path) -> None:
    """A DeepSeek-V3-sized LoRA (61 layers, 256 routed experts) against its keys under a doubled PEFT prefix."""
    adapter: dict[str, tuple[str, list[int], bytes]] = {}
    one = ("BF16", [1, 1], bytes(2))
    for layer in range(61):
        modules = [f"self_attn.{p}" for p in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")]
        modules += [f"mlp.experts.{e}.{p}" for e in range(256) for p in ("gate_proj", "up_proj", "down_proj")]
        for module in modules:
            for ab in "AB":
                adapter[f"base_model.model.model.layers.{layer}.{module}.lora_{ab}.weight"] = one
    assert len(adapter) > 94_000
    expected = st(tmp_path / "expected.safetensors", adapter)
    doubled = st(tmp_path / "doubled.safetensors", {"base_model.model." + k: v for k, v in adapter.items()})
    result = cli("diagnose", doubled, "--expected", expected)
    assert result.code == 1
    lines = result.out.splitlines()
    too_long = [line for line in lines if len(line) > 100]
    assert not too_long, too_long
    text = " ".join(result.out.split())
    assert f"{len(adapter):,} checkpoint keys, {len(adapter):,} expected" in text
    assert "strip prefix 'base_model.model.'" in text and "coverage 0% -> 100%" in text


# -- options -----------------------------------------------------------------------------------------------------


def test_ignore_is_repeatable_and_counted(cli: Cli, files: dict[str, Path]) -> None:
    base = ("diagnose", files["stray"], "-e", files["reference"], "--format", "json")
    before = cli(*base)
    assert before.code == 1
    assert {f["kind"] for f in json.loads(before.out)["findings"]} == {"unexpected"}
    one = cli(*base, "--ignore", r"^optimizer\.")
    assert one.code == 1 and json.loads(one.out)["summary"]["ignored"] == 1
    both = cli(*base, "--ignore", r"^optimizer\.", "--ignore", "shadow")
    data = json.loads(both.out)
    assert both.code == 0 and data["ok"] and data["findings"] == []
    assert data["summary"]["ignored"] == 2 and data["summary"]["checkpoint"] == len(REFERENCE)
    assert "2 ignored" in cli("diagnose", files["stray"], "-e", files["reference"], "--ignore", "optimizer|ema").out


def test_plan_out_writes_a_loadable_plan(cli: Cli, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "plans" / "fix.json"
    out.parent.mkdir()
    result = cli("diagnose", files["error"], "-e", files["reference"], "--plan-out", out)
    assert result.code == 1
    assert str(out) in result.err
    plan = Plan.load(out)
    assert plan.rules == [StripPrefix(prefix="module.", reason="KG101")]
    assert json.loads(out.read_text())["format"] == "keyguard.plan/v1"
    keys = ["module." + k for k in REFERENCE]
    assert plan.mapping(keys) == {"module." + k: k for k in REFERENCE}


def test_plan_out_of_a_clean_checkpoint_is_empty(cli: Cli, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fix.json"
    assert cli("diagnose", files["clean"], "-e", files["reference"], "--plan-out", out).code == 0
    assert Plan.load(out).empty


# -- explain -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["KG101", "kg101", "101", "extra_prefix", "extra-prefix", " Extra-Prefix "])
def test_explain_finds_a_kind_by_any_spelling(cli: Cli, spelling: str) -> None:
    result = cli("explain", spelling)
    assert result.code == 0 and result.err == ""
    kind = KINDS["KG101"]
    assert result.out.startswith(f"KG101 extra_prefix (error): {kind.title}")
    for heading in ("What it does", "Why is this bad?", "Fix safety", "Example"):
        assert f"\n{heading}\n" in result.out
    assert all(len(line) <= 100 for line in result.out.splitlines())
    assert " ".join(plain(kind.why).split()) in " ".join(result.out.split())
    assert "`" not in result.out  # Markdown code marks are for the docs site, not the terminal


def test_explain_every_kind(cli: Cli) -> None:
    for code, kind in KINDS.items():
        for spelling in (code, kind.kind, code[2:]):
            result = cli("explain", spelling)
            assert result.code == 0 and result.out.startswith(f"{code} {kind.kind} ({kind.severity.value})")


@pytest.mark.parametrize("unknown", ["KG999", "999", "teleported", ""])
def test_explain_an_unknown_code(cli: Cli, unknown: str) -> None:
    result = cli("explain", unknown)
    assert result.code == 2 and result.out == ""
    assert result.err.strip().count("\n") == 0
    assert result.err.startswith("keyguard: error: unknown finding code or kind") and repr(unknown) in result.err


@pytest.mark.parametrize("width", [80, 100, 200])
def test_explain_lists_all_kinds_by_code(cli: Cli, width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    result = cli("explain")
    assert result.code == 0
    lines = result.out.strip().splitlines()
    assert all(len(line) <= width for line in lines)
    heads = [line for line in lines if line[:2] == "KG"]
    assert [line.split()[0] for line in heads] == sorted(KINDS) and len(heads) >= 13  # KG550 before KG601
    text = " ".join(result.out.split())
    for line, (code, kind) in zip(heads, sorted(KINDS.items())):
        assert line.split()[:2] == [code, kind.kind] and kind.severity.value in line
        assert kind.title in text
    if width >= 100:  # a column per field, aligned whatever the length of the names
        assert len({line.index(KINDS[line.split()[0]].severity.value) for line in heads}) == 1


def test_explain_in_a_real_process(cli_subprocess: Callable[..., Any]) -> None:
    done = cli_subprocess("explain", "no_overlap")
    assert done.returncode == 0 and done.stdout.startswith("KG404 no_overlap (fatal)")
    unknown = cli_subprocess("explain", "KG000")
    assert unknown.returncode == 2 and unknown.stdout == "" and unknown.stderr.count("\n") == 1


# -- torch stays out ---------------------------------------------------------------------------------------------


def test_diagnose_of_safetensors_files_never_imports_torch(
    files: dict[str, Path], offline_env: dict[str, str], tmp_path: Path
) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from keyguard.cli import main
        codes = [main(["diagnose", {str(files["error"])!r}, "-e", {str(files["reference"])!r}, "--format", fmt])
                 for fmt in ("table", "json", "markdown", "github")]
        codes.append(main(["diagnose", {str(files["warning"])!r}, "-e", {str(files["reference"])!r},
                           "--emit", "key-mapping", "--plan-out", {str(tmp_path / "plan.json")!r}]))
        heavy = [m for m in ("torch", "numpy", "transformers", "peft", "safetensors.torch") if m in sys.modules]
        print("RESULT", codes, heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=offline_env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "RESULT [1, 1, 1, 1, 0] []"


def test_junit_format(cli: Cli, files: dict[str, Path]) -> None:
    import xml.etree.ElementTree as ET

    for checkpoint, code, failures in (("error", 1, 2), ("clean", 0, 0), ("warning", 0, 0)):
        result = cli("diagnose", files[checkpoint], "-e", files["reference"], "--format", "junit")
        assert result.code == code, result.err
        root = ET.fromstring(result.out)
        assert root.tag == "testsuites" and int(root.get("failures", "-1")) == failures
        cases = root.findall(".//testcase")
        assert any(case.get("name", "").startswith("KG101 extra_prefix") for case in cases)
        assert "keyguard.invalid" not in result.out and "http" not in result.out
    failing = cli("diagnose", files["warning"], "-e", files["reference"], "--format", "junit", "--fail-on", "warning")
    assert failing.code == 1 and ET.fromstring(failing.out).get("failures") == "1"
