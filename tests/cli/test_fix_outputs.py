"""What ``keyguard fix`` writes, and what it refuses to write over: no file that lies about its format, no input,
no existing file without ``--force``, the folder named when it is missing, the source's permissions kept, files the
user could not write left alone, and leftovers of killed runs found and removed only when provably stale."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import keyguard  # noqa: E402
from keyguard._atomic import host_token  # noqa: E402
from keyguard.fixes import find_stale_temps  # noqa: E402

Cli = Callable[..., Any]
MODEL = {"model.embed.weight": torch.arange(8.0).reshape(2, 4), "model.norm.weight": torch.ones(4)}


def refused(result: Any, *expected: str) -> None:
    assert result.code == 2, (result.out, result.err)
    assert result.err.count("\n") == 1, result.err
    for text in expected:
        assert text in result.err, result.err


@pytest.fixture
def expected(tmp_path: Path) -> Path:
    path = tmp_path / "expected.safetensors"
    save_file(MODEL, str(path))
    return path


@pytest.fixture
def ddp(tmp_path: Path) -> Path:
    path = tmp_path / "ddp.safetensors"
    save_file({"module." + k: v for k, v in MODEL.items()}, str(path))
    return path


def digest(*paths: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in paths}


# -- what a name says --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["out.pt", "out.bin", "out", "out.ckpt"])
def test_a_file_output_must_be_named_safetensors(cli: Cli, tmp_path: Path, expected: Path, name: str) -> None:
    checkpoint = tmp_path / "X.pt"
    torch.save({"module." + k: v for k, v in MODEL.items()}, checkpoint)
    refused(cli("fix", checkpoint, "-e", expected, "-o", tmp_path / name), "name the output *.safetensors")
    assert not (tmp_path / name).exists()
    assert cli("fix", checkpoint, "-e", expected, "-o", tmp_path / "out.safetensors").code == 0


# -- inputs are never outputs ------------------------------------------------------------------------------------
def test_the_output_is_never_an_input(cli: Cli, tmp_path: Path, expected: Path, ddp: Path) -> None:
    ckpt = tmp_path / "training.ckpt"
    torch.save({"state_dict": {"module." + k: v for k, v in MODEL.items()}, "epoch": 3}, ckpt)
    manifest = tmp_path / "keys.json"
    keyguard.write_manifest(keyguard.read_keys(expected), manifest)
    plan = tmp_path / "plan.json"
    keyguard.diagnose(ddp, expected).plan.save(plan)
    before = digest(ckpt, manifest, plan, ddp, expected)
    refused(cli("fix", ckpt, "-e", expected, "-o", ckpt), "is the checkpoint", "use --in-place")
    refused(cli("fix", ddp, "-e", expected, "-o", ddp, "--force"), "is the checkpoint", "use --in-place")
    refused(cli("fix", ddp, "-e", manifest, "-o", manifest, "--force"), "is the --expected reference")
    refused(cli("fix", ddp, "-e", expected, "-o", expected, "--force"), "is the --expected reference")
    refused(cli("fix", ddp, "-e", expected, "--plan", plan, "-o", plan, "--force"), "is the --plan file")
    link = tmp_path / "link.safetensors"
    link.symlink_to(ddp)
    refused(cli("fix", ddp, "-e", expected, "-o", link, "--force"), "is the checkpoint")
    assert digest(ckpt, manifest, plan, ddp, expected) == before


def test_a_shard_or_the_sharded_folder_is_never_the_output(cli: Cli, tmp_path: Path, expected: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"module.model.embed.weight": MODEL["model.embed.weight"]}, str(folder / "m-1.safetensors"))
    save_file({"module.model.norm.weight": MODEL["model.norm.weight"]}, str(folder / "m-2.safetensors"))
    weight_map = {"module.model.embed.weight": "m-1.safetensors", "module.model.norm.weight": "m-2.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    refused(cli("fix", folder, "-e", expected, "-o", folder), "is the checkpoint", "--in-place")
    refused(cli("fix", folder, "-e", expected, "-o", folder / "m-1.safetensors"), "is a file of the checkpoint")
    refused(cli("fix", folder, "-e", expected, "-o", tmp_path / "out.safetensors"), "name it like one")
    assert cli("fix", folder, "-e", expected, "-o", tmp_path / "fixed").code == 0


# -- existing outputs, missing folders ---------------------------------------------------------------------------
def test_an_existing_output_is_replaced_only_with_force(cli: Cli, tmp_path: Path, expected: Path, ddp: Path) -> None:
    out = tmp_path / "notes.safetensors"
    out.write_text("my notes")
    os.chmod(out, 0o640)
    refused(cli("fix", ddp, "-e", expected, "-o", out), "already exists; use --force")
    assert out.read_text() == "my notes"
    result = cli("fix", ddp, "-e", expected, "-o", out, "--force")
    assert result.code == 0, result.err
    assert sorted(load_file(str(out))) == sorted(MODEL)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # a replaced file keeps its permissions
    (tmp_path / "dir.safetensors").mkdir()
    refused(cli("fix", ddp, "-e", expected, "-o", tmp_path / "dir.safetensors", "--force"), "already exists")


def test_a_missing_folder_is_named_not_the_temporary_file(cli: Cli, tmp_path: Path, expected: Path, ddp: Path) -> None:
    out = tmp_path / "missing" / "out.safetensors"
    result = cli("fix", ddp, "-e", expected, "-o", out)
    refused(result, f"no such folder: '{tmp_path / 'missing'}'")
    assert ".keyguard-" not in result.err and ".tmp" not in result.err


def test_a_new_output_keeps_the_source_s_permissions(cli: Cli, tmp_path: Path, expected: Path, ddp: Path) -> None:
    os.chmod(ddp, 0o600)
    out = tmp_path / "out.safetensors"
    assert cli("fix", ddp, "-e", expected, "-o", out).code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


# -- files the user could not write -------------------------------------------------------------------------------
# As root, the fix runs as user nobody: the interpreter starts as root (it may live where nobody cannot read), runs
# a dry run to import what the command needs, then gives up root before the real run.
_AS_ANOTHER_USER = """
import os, sys
from keyguard.cli import main
main(["fix", sys.argv[1], "-e", sys.argv[2], "-o", sys.argv[3], "--dry-run", "-q"])
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
sys.exit(main(["fix", sys.argv[1], "-e", sys.argv[2], "--in-place"]))
"""


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_in_place_never_replaces_a_file_the_user_could_not_write(
    offline_env: dict[str, str], expected: Path, ddp: Path
) -> None:
    """Root's read-only file in a world-writable folder, ``--in-place`` run by another user: refused, owner kept
    (as any other user: the user's own read-only file). The folder is outside pytest's (private) temporary tree."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="keyguard-shared-"))
    try:
        os.chmod(shared, 0o1777 if os.geteuid() == 0 else 0o755)
        target, reference = shared / ddp.name, shared / expected.name
        shutil.copy(ddp, target)
        shutil.copy(expected, reference)
        for path in (target, reference):
            os.chmod(path, 0o444)
        owner, before = target.stat().st_uid, target.read_bytes()
        done = subprocess.run(
            [sys.executable, "-c", _AS_ANOTHER_USER, str(target), str(reference), str(shared / "dry.safetensors")],
            capture_output=True,
            text=True,
            env=offline_env,
            cwd=shared,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "not writable by you; not replaced" in done.stderr
        assert target.read_bytes() == before and target.stat().st_uid == owner
        assert [p for p in shared.iterdir() if ".keyguard-" in p.name] == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="root can give files to other users")
def test_root_replacing_another_user_s_file_keeps_its_owner(
    cli: Cli, tmp_path: Path, expected: Path, ddp: Path
) -> None:
    os.chown(ddp, 65534, 65534)
    assert cli("fix", ddp, "-e", expected, "--in-place").code == 0
    assert (ddp.stat().st_uid, ddp.stat().st_gid) == (65534, 65534)
    assert sorted(load_file(str(ddp))) == sorted(MODEL)


# -- leftovers of killed runs -------------------------------------------------------------------------------------
def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_killed_fix_are_named_and_removed(
    offline_env: dict[str, str], cli: Cli, tmp_path: Path, expected: Path
) -> None:
    big = tmp_path / "big.safetensors"
    save_file({f"module.layers.{i}.w": torch.rand(1024, 1024) for i in range(48)}, str(big))
    reference = tmp_path / "reference.json"
    shapes = {k.removeprefix("module."): ((1024, 1024), "F32") for k in keyguard.read_keys(big)}
    keyguard.write_manifest(keyguard.read_keys(shapes), reference)
    process = subprocess.Popen(
        [sys.executable, "-m", "keyguard", "fix", str(big), "-e", str(reference), "-o", "out.safetensors", "-q"],
        env=offline_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.safetensors.keyguard-*.tmp")):
        assert process.poll() is None and time.monotonic() < deadline, "fix ended before it was killed"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (leftover,) = tmp_path.glob(".out.safetensors.keyguard-*.tmp")
    assert f".keyguard-{process.pid}-{host_token()}-" in leftover.name
    # what is not provably a dead run's leftover stays: a live process's, an older keyguard's, a symlink, a folder
    # made elsewhere
    alive = tmp_path / f".other.safetensors.keyguard-{os.getpid()}-{host_token()}-abcd1234.tmp"
    alive.write_bytes(b"x")
    older = tmp_path / ".old.safetensors.keyguard-abcd1234.tmp"
    older.write_bytes(b"x")
    elsewhere = tmp_path / f".shards.keyguard-{_dead_pid()}-ffffffff-abcd1234"
    elsewhere.mkdir()
    linked = tmp_path / f".link.safetensors.keyguard-{_dead_pid()}-{host_token()}-abcd1234.tmp"
    linked.symlink_to(expected)
    staging = tmp_path / f".shards.keyguard-{_dead_pid()}-{host_token()}-efgh5678"
    staging.mkdir()
    (staging / "model-1.safetensors").write_bytes(b"y" * 100)
    unrelated = tmp_path / "keyguard-notes.txt"
    unrelated.write_text("mine")

    found = {Path(t.path).name: t for t in find_stale_temps(tmp_path)}
    assert found[leftover.name].removable and found[staging.name].removable
    assert found[staging.name].kind == "folder" and found[staging.name].size == 100
    assert not any(found[p.name].removable for p in (alive, older, elsewhere, linked))
    assert "still running" in found[alive.name].reason and "older keyguard" in found[older.name].reason

    result = cli("fix", expected, "-e", expected, "-o", tmp_path / "again.safetensors")
    assert result.code == 0 and "leftover(s) of killed keyguard runs" in result.err
    assert f"keyguard fix --clean-stale {tmp_path}" in result.err
    assert leftover.exists()  # named, not removed, without --clean-stale

    result = cli("fix", "--clean-stale", tmp_path)
    assert result.code == 0, result.err
    assert f"removed {leftover}" in result.out and f"removed {staging}" in result.out
    assert not leftover.exists() and not staging.exists()
    for kept in (alive, older, elsewhere, linked, unrelated, big, expected):
        assert os.path.lexists(kept), kept
    assert sorted(load_file(str(expected))) == sorted(MODEL)  # the symlink's target is untouched


def test_clean_stale_before_a_write(cli: Cli, tmp_path: Path, expected: Path, ddp: Path) -> None:
    stale = tmp_path / f".out.safetensors.keyguard-{_dead_pid()}-{host_token()}-abcd1234.tmp"
    stale.write_bytes(b"partial")
    result = cli("fix", ddp, "-e", expected, "-o", tmp_path / "out.safetensors", "--clean-stale")
    assert result.code == 0 and not stale.exists()
    assert f"removed {stale}" in result.out


def test_a_sharded_output_folder_keeps_the_source_folder_s_permissions(
    cli: Cli, tmp_path: Path, expected: Path
) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"module.model.embed.weight": MODEL["model.embed.weight"]}, str(folder / "m-1.safetensors"))
    save_file({"module.model.norm.weight": MODEL["model.norm.weight"]}, str(folder / "m-2.safetensors"))
    weight_map = {"module.model.embed.weight": "m-1.safetensors", "module.model.norm.weight": "m-2.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    os.chmod(folder, 0o750)
    os.chmod(folder / "m-1.safetensors", 0o600)
    umask = os.umask(0o022)
    try:
        assert cli("fix", folder, "-e", expected, "-o", tmp_path / "fixed").code == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fixed").stat().st_mode) == 0o750  # not mkdtemp's 0700
    assert stat.S_IMODE((tmp_path / "fixed" / "m-1.safetensors").stat().st_mode) == 0o600
