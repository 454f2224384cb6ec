"""``keyguard fix``: exit codes, what it prints, what it writes (and never writes), on real files.

Every run hashes its inputs before and after (failures included): ``keyguard fix`` never modifies its input, except
``--in-place``, which replaces it through the atomic path (a new inode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".keyguard-" in p.name)


def assert_tensors(path: Path, expected: dict[str, Any]) -> None:
    got = load_file(str(path))
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.fixture
def fix(cli: Callable[..., Any], hashes: Callable[..., dict[str, str]]) -> Callable[..., Any]:
    """``fix(*inputs_to_guard, args=[...])``: run ``keyguard fix ARGS`` and check the guarded inputs are unchanged."""

    def run(*guarded: Path, args: list[Any]) -> Any:
        before = hashes(*guarded)
        result = cli("fix", *args)
        assert hashes(*guarded) == before, "keyguard fix modified its input"
        return result

    return run


G = torch.Generator().manual_seed(0)
MODEL = {
    "model.embed_tokens.weight": torch.randn(16, 8, generator=G),
    "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=G),
    "model.layers.0.self_attn.k_proj.weight": torch.randn(4, 8, generator=G),
    "model.layers.0.self_attn.v_proj.weight": torch.randn(4, 8, generator=G),
    "model.layers.0.mlp.gate_up_proj.weight": torch.randn(12, 8, generator=G),
    "model.layers.0.mlp.down_proj.weight": torch.randn(8, 6, generator=G),
    "model.norm.weight": torch.randn(8, generator=G).to(torch.bfloat16),
}


@pytest.fixture
def files(tmp_path: Path, save_st: Callable[..., Path]) -> dict[str, Path]:
    """``expected``: the model's tensors; ``ddp``: the same under ``module.``; ``extra``: plus unexpected keys."""
    ddp = {"module." + k: v for k, v in MODEL.items()}
    extra = {
        **ddp,
        "module.model.layers.0.self_attn.rotary_emb.inv_freq": torch.arange(4.0),
        "module.optimizer_step": torch.tensor(10),
    }
    return {
        "expected": save_st(tmp_path / "expected.safetensors", MODEL),
        "ddp": save_st(tmp_path / "ddp.safetensors", ddp, metadata={"format": "pt"}),
        "extra": save_st(tmp_path / "extra.safetensors", extra),
    }


# -- exit codes --------------------------------------------------------------------------------------------------


def test_exit_0_when_the_output_matches_exactly(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    out = tmp_path / "out.safetensors"
    r = fix(files["ddp"], files["expected"], args=[files["ddp"], "-e", files["expected"], "-o", out])
    assert r.code == 0, r.err
    assert "7 tensors written (7 renamed)" in r.out
    assert f"wrote {out}" in r.out and "verified" in r.out
    assert "the output matches the expected keys and shapes exactly" in r.out
    assert_tensors(out, MODEL)
    assert leftovers(tmp_path) == []


def test_the_reference_is_read_once(
    tmp_path: Path, files: dict[str, Path], fix: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Diagnosing the checkpoint and checking the output use one reading of the reference (it may be a model)."""
    import keyguard.sources._resolve as resolve

    read = resolve.read_keys
    sources: list[Any] = []

    def counting(source: Any, **kwargs: Any) -> Any:
        sources.append(source)
        return read(source, **kwargs)

    monkeypatch.setattr(resolve, "read_keys", counting)
    monkeypatch.setattr("keyguard.sources.read_keys", counting)
    monkeypatch.setattr("keyguard.engine._pipeline.read_keys", counting)
    out = tmp_path / "out.safetensors"
    r = fix(files["ddp"], files["expected"], args=[files["ddp"], "-e", files["expected"], "-o", out])
    assert r.code == 0, r.err
    assert [s for s in sources if isinstance(s, (str, os.PathLike)) and Path(s) == files["expected"]] == [
        str(files["expected"])
    ]


def test_exit_1_when_findings_remain(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    out = tmp_path / "out.safetensors"
    r = fix(files["extra"], args=[files["extra"], "-e", files["expected"], "-o", out])
    assert r.code == 1, r.err
    assert "findings that remain in the output" in r.out
    assert "unexpected" in r.out and "optimizer_step" in r.out
    got = load_file(str(out))  # written all the same, with the safe renames
    assert set(MODEL) < set(got) and "optimizer_step" in got


def test_exit_2_for_a_missing_checkpoint(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    out = tmp_path / "out.safetensors"
    r = fix(files["expected"], args=[tmp_path / "nope.safetensors", "-e", files["expected"], "-o", out])
    assert r.code == 2
    assert r.err.startswith("keyguard: error:") and len(r.err.strip().splitlines()) == 1
    assert not out.exists() and leftovers(tmp_path) == []


def test_exit_2_for_a_refused_plan_with_one_line(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "format": "keyguard.plan/v1",
                "rules": [
                    {"op": "strip_prefix", "prefix": "module."},
                    {"op": "map", "mapping": {"model.norm.weight": "model.embed_tokens.weight"}},
                ],
            }
        )
    )
    out = tmp_path / "out.safetensors"
    r = fix(files["ddp"], plan, args=[files["ddp"], "-e", files["expected"], "-o", out, "--plan", plan])
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "plan refused" in lines[0]
    assert "'module.model.embed_tokens.weight'" in lines[0] and "'module.model.norm.weight'" in lines[0]
    assert r.out == ""
    assert not out.exists() and leftovers(tmp_path) == []


def test_exit_2_for_an_invalid_plan_file(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"format": "keyguard.plan/v1", "rules": [{"op": "teleport"}]}')
    out = tmp_path / "out.safetensors"
    r = fix(files["ddp"], args=[files["ddp"], "-e", files["expected"], "-o", out, "--plan", plan])
    assert r.code == 2 and "invalid plan" in r.err
    assert not out.exists()


# -- options -----------------------------------------------------------------------------------------------------


def test_dry_run_writes_nothing(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    out = tmp_path / "out.safetensors"
    before = sorted(p.name for p in tmp_path.iterdir())
    r = fix(files["extra"], args=[files["extra"], "-e", files["expected"], "-o", out, "--dry-run", "--drop-unexpected"])
    assert r.code == 0, r.err
    assert "7 tensors would be written (7 renamed), 2 would be dropped" in r.out
    assert "wrote" not in r.out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_dry_run_in_place_writes_nothing(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    inode = files["ddp"].stat().st_ino
    r = fix(files["ddp"], args=[files["ddp"], "-e", files["expected"], "--in-place", "--dry-run"])
    assert r.code == 0 and "7 tensors would be written (7 renamed)" in r.out
    assert files["ddp"].stat().st_ino == inode and leftovers(tmp_path) == []


def test_drop_unexpected_lists_every_dropped_key(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    out = tmp_path / "out.safetensors"
    r = fix(files["extra"], args=[files["extra"], "-e", files["expected"], "-o", out, "--drop-unexpected"])
    assert r.code == 0, r.out + r.err
    assert "dropped 2 keys (--drop-unexpected):" in r.out
    listed = [line.strip() for line in r.out.splitlines() if line.startswith("  module.")]
    assert sorted(listed) == ["module.model.layers.0.self_attn.rotary_emb.inv_freq", "module.optimizer_step"]
    assert_tensors(out, MODEL)


def test_unsafe_fixes_list_each_transposed_split_and_fused_key(
    tmp_path: Path, save_st: Callable[..., Path], files: dict[str, Path], fix: Any
) -> None:
    m = MODEL
    p = "model.layers.0."
    ck = {
        "model.embed_tokens.weight": m["model.embed_tokens.weight"],
        p + "self_attn.qkv_proj.weight": torch.cat(
            [m[p + "self_attn.q_proj.weight"], m[p + "self_attn.k_proj.weight"], m[p + "self_attn.v_proj.weight"]]
        ),
        p + "mlp.gate_proj.weight": m[p + "mlp.gate_up_proj.weight"][:6],
        p + "mlp.up_proj.weight": m[p + "mlp.gate_up_proj.weight"][6:],
        p + "mlp.down_proj.weight": m[p + "mlp.down_proj.weight"].t().contiguous(),
        "model.norm.weight": m["model.norm.weight"],
    }
    src = save_st(tmp_path / "unsafe.safetensors", ck)
    out = tmp_path / "out.safetensors"

    r = fix(src, args=[src, "-e", files["expected"], "-o", out])
    assert r.code == 1  # the safe plan cannot do it: findings remain
    assert "unsafe fix" not in r.out

    r = fix(src, args=[src, "-e", files["expected"], "-o", out, "--unsafe-fixes"])
    assert r.code == 2 and "already exists; use --force to replace it" in r.err  # the first run's output
    r = fix(src, args=[src, "-e", files["expected"], "-o", out, "--unsafe-fixes", "--force"])
    assert r.code == 0, r.out + r.err
    # one entry per tensor, wrapped to the width (continuation lines are indented)
    entries = " ".join(line.strip() if line.startswith("  ") else "\n" + line for line in r.out.splitlines())
    lines = [line.strip() for line in entries.splitlines() if "(unsafe fix, data changed)" in line]
    assert sorted(lines) == sorted(
        [
            f"transposed (unsafe fix, data changed): {p}mlp.down_proj.weight",
            f"split (unsafe fix, data changed): {p}self_attn.qkv_proj.weight -> {p}self_attn.q_proj.weight,"
            f" {p}self_attn.k_proj.weight, {p}self_attn.v_proj.weight",
            f"fused (unsafe fix, data changed): {p}mlp.gate_proj.weight -> {p}mlp.gate_up_proj.weight",
            f"fused (unsafe fix, data changed): {p}mlp.up_proj.weight -> {p}mlp.gate_up_proj.weight",
        ]
    )
    assert_tensors(out, MODEL)  # the data was really transposed, split and fused


def test_a_hand_written_plan(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "format": "keyguard.plan/v1",
                "rules": [
                    {"op": "replace_prefix", "old": "module.model.", "new": "model."},
                    {"op": "drop", "keys": ["module.optimizer_step"]},
                    {
                        "op": "map",
                        "mapping": {"model.layers.0.self_attn.rotary_emb.inv_freq": "model.inv_freq"},
                    },
                ],
            }
        )
    )
    out = tmp_path / "out.safetensors"
    args = [files["extra"], "-e", files["expected"], "-o", out, "--plan", plan]
    r = fix(files["extra"], plan, args=args)
    assert r.code == 1  # the drop is unsafe: not applied without --unsafe-fixes, and said so
    assert f"note: 1 rule(s) of {plan} are not safe and were not applied (--unsafe-fixes)" in r.out
    got = load_file(str(out))
    assert sorted(got) == sorted([*MODEL, "model.inv_freq", "module.optimizer_step"])

    r = fix(files["extra"], plan, args=[*args, "--unsafe-fixes", "--force"])
    assert r.code == 1  # model.inv_freq is still not expected
    assert ", 1 dropped" in r.out and "note:" not in r.out
    expected = {**MODEL, "model.inv_freq": torch.arange(4.0)}
    assert_tensors(out, expected)


def test_ignore_leaves_keys_out_of_the_diagnosis(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    out = tmp_path / "out.safetensors"
    args = [files["extra"], "-e", files["expected"], "-o", out, "--ignore", "inv_freq$", "--ignore", "optimizer_step"]
    r = fix(files["extra"], args=args)
    assert r.code == 0, r.out
    got = load_file(str(out))  # ignored keys are neither flagged nor dropped; the prefix rule renames them too
    assert sorted(got) == sorted([*MODEL, "optimizer_step", "model.layers.0.self_attn.rotary_emb.inv_freq"])


def test_quiet_prints_only_the_summary(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    out = tmp_path / "out.safetensors"
    r = fix(files["extra"], args=[files["extra"], "-e", files["expected"], "-o", out, "--quiet", "--drop-unexpected"])
    assert r.code == 0
    assert r.out.splitlines()[0] == "7 tensors written (7 renamed), 2 dropped"
    assert "renamed from" not in r.out and "  module." not in r.out
    assert r.err == ""  # no progress bar either


# -- in place ----------------------------------------------------------------------------------------------------


def test_in_place_replaces_the_file_atomically(tmp_path: Path, files: dict[str, Path], cli: Any) -> None:
    target = files["ddp"]
    inode = target.stat().st_ino
    r = cli("fix", target, "-e", files["expected"], "--in-place")
    assert r.code == 0, r.err
    assert target.stat().st_ino != inode
    assert_tensors(target, MODEL)
    assert leftovers(tmp_path) == []


def test_in_place_refuses_a_pickle(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    src = tmp_path / "ckpt.pt"
    torch.save({"module." + k: v for k, v in MODEL.items()}, src)
    r = fix(src, args=[src, "-e", files["expected"], "--in-place"])
    assert r.code == 2 and "--in-place needs a safetensors checkpoint" in r.err
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix not in (".safetensors",)) == ["ckpt.pt"]


def test_a_pickle_becomes_a_safetensors_file(tmp_path: Path, files: dict[str, Path], fix: Any) -> None:
    src = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"module." + k: v for k, v in MODEL.items()}, "epoch": 1}, src)
    out = tmp_path / "out.safetensors"
    r = fix(src, args=[src, "-e", files["expected"], "-o", out])
    assert r.code == 0, r.out + r.err
    assert_tensors(out, MODEL)


@pytest.fixture
def sharded(tmp_path: Path, tiny_llama: Callable[..., Any]) -> tuple[Path, Path, Any]:
    """A tiny Llama, ``save_pretrained`` in shards with a ``module.`` prefix on every key; and its expected keys."""
    from safetensors.torch import save_file

    model = tiny_llama()
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder, max_shard_size="8KB")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for shard in set(index["weight_map"].values()):
        save_file({"module." + k: v for k, v in load_file(str(folder / shard)).items()}, str(folder / shard))
    index["weight_map"] = {"module." + k: v for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    expected = tmp_path / "expected.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(expected))
    return folder, expected, model


def test_sharded_output_folder(tmp_path: Path, sharded: tuple[Path, Path, Any], fix: Any) -> None:
    folder, expected, model = sharded
    out = tmp_path / "fixed"
    r = fix(folder, args=[folder, "-e", expected, "-o", out, "--quiet"])
    assert r.code == 0, r.out + r.err
    index = json.loads((out / "model.safetensors.index.json").read_text())
    got: dict[str, Any] = {}
    for shard in set(index["weight_map"].values()):
        got.update(load_file(str(out / shard)))
    state = model.state_dict()
    assert sorted(got) == sorted(state) and all(torch.equal(got[k], state[k]) for k in got)
    assert (out / "config.json").exists()

    r = fix(folder, args=[folder, "-e", expected, "-o", out])  # the output folder exists now
    assert r.code == 2 and "already exists" in r.err


def test_sharded_in_place_leaves_no_staging_folder(tmp_path: Path, sharded: tuple[Path, Path, Any], cli: Any) -> None:
    folder, expected, model = sharded
    r = cli("fix", folder, "-e", expected, "--in-place", "--quiet")
    assert r.code == 0, r.out + r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "expected.safetensors"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(model.state_dict())
    assert cli("diagnose", folder, "-e", expected).code == 0


# -- the progress bar ------------------------------------------------------------------------------------------


def _run_with_tty_stderr(args: list[Any], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run ``python -m keyguard ARGS`` with stderr on a pseudo-terminal; returns exit code and what it drew."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyguard", *map(os.fspath, args)],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=env,
            cwd=cwd,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=120)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_shows_each_phase_only_on_a_terminal_and_not_with_quiet(
    tmp_path: Path, files: dict[str, Path], offline_env: dict[str, str], cli: Any
) -> None:
    out = tmp_path / "out.safetensors"
    base = ["fix", files["ddp"], "-e", files["expected"], "-o", out]
    code, drawn = _run_with_tty_stderr(base, offline_env, tmp_path)
    assert code == 0
    for phase in ("reading", "diagnosing", "writing", "verifying", "checking"):
        assert phase in drawn, phase  # each phase has its line, labelled
    assert "100%" in drawn and "KiB" in drawn  # writing and verifying count bytes
    out.unlink()
    code, drawn = _run_with_tty_stderr([*base, "--quiet"], offline_env, tmp_path)
    assert code == 0 and "writing" not in drawn
    out.unlink()
    r = cli(*base)  # stderr captured: not a terminal
    assert r.code == 0 and r.err == ""


@pytest.mark.slow
def test_the_progress_library_is_imported_only_to_draw(
    tmp_path: Path, files: dict[str, Path], offline_env: dict[str, str]
) -> None:
    out = tmp_path / "out.safetensors"
    args = ["fix", files["ddp"], "-e", files["expected"], "-o", out]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keyguard", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        env=offline_env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "keyguard._progress" in imported and "rich" not in imported  # no terminal, no drawing, no rich


# -- the early copy: the data section copied while the diagnosis runs ---------------------------------------------


def header_length(path: Path) -> int:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")


@pytest.fixture
def early(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any checkpoint is large enough for the early copy (it starts from 64 MiB of data); the copies started."""
    from keyguard.fixes import _early_copy

    monkeypatch.setattr(_early_copy, "MIN_BYTES", 0)
    started: list[Any] = []
    start = _early_copy.EarlyCopy.start.__func__  # type: ignore[attr-defined]

    def recording(cls: Any, keys: Any, output: str) -> Any:
        copy = start(cls, keys, output)
        started.append(copy)
        return copy

    monkeypatch.setattr(_early_copy.EarlyCopy, "start", classmethod(recording))
    return started


@pytest.fixture
def compiled(tmp_path: Path, save_st: Callable[..., Path]) -> Path:
    """The model saved from DDP + torch.compile: prefixes long enough for the new header to fit in the old one's
    room (with keyguard's note in the metadata)."""
    tensors = {"module._orig_mod." + k: v for k, v in MODEL.items()}
    return save_st(tmp_path / "compiled.safetensors", tensors, metadata={"format": "pt"})


def test_the_early_copy_keeps_the_data_where_the_source_has_it(
    tmp_path: Path, compiled: Path, files: dict[str, Path], fix: Any, early: list[Any]
) -> None:
    source = compiled
    out = tmp_path / "out.safetensors"
    r = fix(source, files["expected"], args=[source, "-e", files["expected"], "-o", out])
    assert r.code == 0, r.err
    assert "verified" in r.out
    n = header_length(source)
    assert header_length(out) == n  # the new header, padded with spaces to the old one's length
    assert out.read_bytes()[8 + n :] == source.read_bytes()[8 + n :]
    header = json.loads(out.read_bytes()[8 : 8 + n])
    assert sorted(k for k in header if k != "__metadata__") == sorted(MODEL)
    assert_tensors(out, MODEL)
    assert leftovers(tmp_path) == []


def test_the_early_copy_is_dropped_when_the_header_does_not_fit(
    tmp_path: Path, files: dict[str, Path], fix: Any, early: list[Any]
) -> None:
    plan = tmp_path / "plan.json"  # a reviewed plan that lengthens every key instead
    plan.write_text(json.dumps({"format": "keyguard.plan/v1", "rules": [{"op": "add_prefix", "prefix": "x." * 40}]}))
    out = tmp_path / "out.safetensors"
    r = fix(files["ddp"], files["expected"], args=[files["ddp"], "-e", files["expected"], "-o", out, "--plan", plan])
    assert r.code == 1, r.err  # written; the keys do not match the model
    assert len(early) == 1 and early[0] is not None  # started, then dropped
    assert header_length(out) > header_length(files["ddp"])
    assert_tensors(out, {"x." * 40 + "module." + k: v for k, v in MODEL.items()})
    assert leftovers(tmp_path) == []


def test_the_early_copy_leaves_nothing_when_the_run_fails(
    tmp_path: Path, files: dict[str, Path], fix: Any, early: list[Any]
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"format": "keyguard.plan/v1", "rules": [{"op": "teleport"}]}')
    out = tmp_path / "out.safetensors"
    r = fix(files["ddp"], args=[files["ddp"], "-e", files["expected"], "-o", out, "--plan", plan])
    assert r.code == 2 and "invalid plan" in r.err
    assert len(early) == 1 and early[0] is not None  # started, then dropped
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_source_changed_during_the_early_copy_is_refused(
    tmp_path: Path, compiled: Path, files: dict[str, Path], cli: Any, early: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyguard.fixes._early_copy import EarlyCopy

    take = EarlyCopy.take

    taken = []

    def changed_meanwhile(self: EarlyCopy, names: Any) -> Any:
        result = take(self, names)
        taken.append(True)
        with open(compiled, "ab") as f:
            f.write(b"\0" * 8)
        return result

    monkeypatch.setattr(EarlyCopy, "take", changed_meanwhile)
    out = tmp_path / "out.safetensors"
    r = cli("fix", compiled, "-e", files["expected"], "-o", out)
    assert r.code == 2 and "changed since its keys were read" in r.err
    assert not out.exists() and leftovers(tmp_path) == []
