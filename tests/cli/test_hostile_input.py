"""Bad input is one line and exit 2 (or a finding), never an internal error: surrogates, file names that are not
UTF-8, absurd manifest shapes, plan files that do not fit, tensors safetensors cannot hold, Ctrl-C."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

import keyguard.cli._app as app  # noqa: E402

Cli = Callable[..., Any]


def raw_safetensors(path: Path, header: str, data: bytes = b"\0\0\0\0") -> Path:
    encoded = header.encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)
    return path


def one_line_error(result: Any, *expected: str) -> None:
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith("keyguard: error: ") and result.err.count("\n") == 1, result.err
    for text in expected:
        assert text in result.err, result.err


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(1)}, str(path))
    return path


# -- lone surrogate escapes -----------------------------------------------------------------------------------------
ENTRY = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


@pytest.mark.parametrize(
    "header",
    ['{"a\\ud800":' + ENTRY + "}", '{"__metadata__":{"x":"\\udc00"},"a":' + ENTRY + "}"],
    ids=["key", "metadata"],
)
def test_a_lone_surrogate_in_a_safetensors_header_is_refused(cli: Cli, tmp_path: Path, header: str) -> None:
    path = raw_safetensors(tmp_path / "s.safetensors", header)
    one_line_error(cli("inspect", path), "unpaired UTF-16 surrogate escape")


def test_a_surrogate_pair_is_a_character_not_an_error(cli: Cli, tmp_path: Path) -> None:
    path = raw_safetensors(tmp_path / "s.safetensors", '{"a\\ud83d\\ude00":' + ENTRY + "}")
    result = cli("inspect", "--format", "json", path)
    assert result.code == 0, result.err
    assert "a\U0001f600" in json.loads(result.out)["groups"][0]["pattern"]


def test_a_lone_surrogate_in_a_manifest_or_an_index_is_refused(cli: Cli, tmp_path: Path, good: Path) -> None:
    manifest = tmp_path / "keys.json"
    manifest.write_text(
        '{"format": "keyguard.keys/v1", "source": {"format": "x"}, "tensors": {"a\\ud800": {"shape": [1]}}}'
    )
    one_line_error(cli("diagnose", good, "-e", manifest), "keys.json: holds 'a\\ud800'")
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"a": torch.zeros(1)}, str(folder / "m.safetensors"))
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "m\\ud800.safetensors"}}')
    one_line_error(cli("inspect", folder), "model.safetensors.index.json: holds 'm\\ud800.safetensors'")


def test_a_lone_surrogate_in_an_adapter_config_is_a_finding(cli: Cli, tmp_path: Path, good: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"base_model.model.a.lora_A.weight": torch.zeros(1, 1)}, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "target_modules": ["\\ud800"]}')
    for fmt in ("table", "json", "junit", "markdown", "github"):
        result = cli("check-adapter", adapter, "--base", good, "--format", fmt)
        assert result.code == 1, (fmt, result.err)
        assert "KG501" in result.out and "Traceback" not in result.err


# -- file names that are not UTF-8 ----------------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="file names are bytes on POSIX only")
def test_a_file_name_that_is_not_utf8_is_shown_escaped(cli: Cli, tmp_path: Path, good: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.safetensors")
    try:
        os.rename(good, raw)
    except OSError:  # pragma: no cover - a file system that refuses such names
        pytest.skip("the file system refuses file names that are not UTF-8")
    name = os.fsdecode(raw)
    shown = str(tmp_path / "caf\\xe9.safetensors")
    result = cli("inspect", "--format", "json", name)
    assert result.code == 0, result.err
    assert json.loads(result.out)["source"] == shown
    result = cli("diagnose", "--format", "json", name, "-e", name)
    assert result.code == 0, result.err
    assert json.loads(result.out)["checkpoint"]["location"] == shown
    manifest = tmp_path / "keys.json"
    result = cli("snapshot", name, "-o", manifest)
    assert result.code == 0, result.err
    assert json.loads(manifest.read_text(encoding="utf-8"))["source"]["location"] == shown
    assert cli("inspect", name).code == 0
    result = cli("check-adapter", name, "--base", manifest, "--junit-xml", tmp_path / "r.xml")
    one_line_error(result, "caf\\xe9.safetensors")
    assert "caf\\xe9" in (tmp_path / "r.xml").read_text(encoding="utf-8")


# -- manifests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape",
    ["[1" + "0" * 4000 + "]", json.dumps([2] * 200_000), "[18446744073709551616]", "[4294967296, 4294967297]"],
    ids=["10^4000", "200000-dims", "2^64", "product"],
)
def test_a_manifest_shape_beyond_64_bits_is_refused(cli: Cli, tmp_path: Path, good: Path, shape: str) -> None:
    manifest = tmp_path / "keys.json"
    manifest.write_text(
        '{"format": "keyguard.keys/v1", "source": {"format": "x"}, "tensors": {"a": {"shape": ' + shape + "}}}"
    )
    for args in (["inspect", manifest], ["diagnose", good, "-e", manifest], ["snapshot", manifest, "-o", "-"]):
        one_line_error(cli(*args), "invalid manifest")


def test_a_manifest_with_many_dimensions_of_one_is_read(cli: Cli, tmp_path: Path) -> None:
    manifest = tmp_path / "keys.json"
    manifest.write_text(
        json.dumps({"format": "keyguard.keys/v1", "source": {"format": "x"}, "tensors": {"a": {"shape": [1] * 1000}}})
    )
    assert cli("inspect", manifest).code == 0


# -- plans ----------------------------------------------------------------------------------------------------------
def test_a_plan_whose_replacement_names_a_missing_group_is_refused(cli: Cli, tmp_path: Path, good: Path) -> None:
    plan = tmp_path / "plan.json"
    rule = {"op": "rename", "pattern": "(a)", "replacement": "\\2"}
    plan.write_text(json.dumps({"format": "keyguard.plan/v1", "rules": [rule]}))
    out = tmp_path / "out.safetensors"
    one_line_error(cli("fix", good, "-e", good, "--plan", plan, "-o", out), "invalid group reference 2")
    assert not out.exists()


# -- tensors safetensors cannot hold ---------------------------------------------------------------------------------
def _exotic(kind: str) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "sparse":
            return torch.eye(3).to_sparse()
        if kind == "qint8":
            return torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8)
        return torch.zeros(2, dtype=getattr(torch, kind))


@pytest.mark.parametrize("kind", ["complex128", "complex32", "qint8", "sparse"])
def test_fix_refuses_what_safetensors_cannot_hold(cli: Cli, tmp_path: Path, kind: str) -> None:
    import warnings

    path = tmp_path / f"{kind}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"t": _exotic(kind), "w": torch.zeros(2)}, path)
    assert cli("inspect", path).code == 0
    out = tmp_path / "out.safetensors"
    expected = "is a sparse_coo tensor" if kind == "sparse" else f"has dtype torch.{kind}"
    one_line_error(cli("fix", path, "-e", path, "-o", out), expected, "safetensors")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "keyguard" in p.name] == []


# -- Ctrl-C ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["build_parser", "parse_args", "command"])
def test_ctrl_c_at_any_moment_is_one_line_and_130(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, good: Path, where: str
) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    if where == "build_parser":
        monkeypatch.setattr(app, "build_parser", interrupt)
    elif where == "parse_args":
        monkeypatch.setattr(app.argparse.ArgumentParser, "parse_args", interrupt)
    else:
        monkeypatch.setattr("keyguard.sources.read_keys", interrupt)
    result = cli("inspect", good)
    assert (result.code, result.err) == (130, "keyguard: interrupted\n")


def test_a_plan_rename_that_backtracks_forever_is_refused(cli: Cli, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt.safetensors"
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(2)}, str(checkpoint))
    plan = tmp_path / "plan.json"
    rule = {"op": "rename", "pattern": "(.*)*X", "replacement": "y"}
    plan.write_text(json.dumps({"format": "keyguard.plan/v1", "rules": [rule]}))
    out = tmp_path / "out.safetensors"
    result = cli("fix", checkpoint, "-e", checkpoint, "--plan", plan, "--unsafe-fixes", "-o", out)
    one_line_error(result, "the rename pattern '(.*)*X' did not finish matching 1 keys within")
    assert not out.exists()


def test_a_plan_rename_that_backtracks_forever_is_refused_off_the_main_thread() -> None:
    import threading

    from keyguard import Plan, PlanError
    from keyguard.fixes import Rename

    plan = Plan(rules=[Rename(pattern="(.*)*X", replacement="y")])
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            plan.mapping(["model.layers.0.self_attn.q_proj.weight"])
        except PlanError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive() and len(outcome) == 1 and "did not finish matching" in str(outcome[0])
