"""``keyguard fix`` killed with SIGKILL while it writes a ~200 MB checkpoint: the input is intact, nothing is at the
target, and at most a temporary ``.NAME.keyguard-*.tmp`` file is left beside it (documented in ``atomic_output``).
Also: an ``--in-place`` run, killed or not, never shows a partial file at the checkpoint's path."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keyguard._st_write import encode_header, layout

N_TENSORS = 50
SHAPE = (1024, 1024)  # F32: 4 MiB each, 200 MiB in all
MiB = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, Path]:
    """A real (not sparse) 200 MiB checkpoint whose keys carry ``module.``, and the expected keys (a sparse file)."""
    entries = {f"module.model.layers.{i}.mlp.weight": ("F32", SHAPE) for i in range(N_TENSORS)}
    rows = layout(entries)
    ckpt = tmp_path / "ckpt.safetensors"
    pattern = os.urandom(MiB)
    with open(ckpt, "wb") as f:
        f.write(encode_header(rows))
        for _ in range(rows[-1][4] // MiB):
            f.write(pattern)
    expected = {name.removeprefix("module."): spec for name, spec in entries.items()}
    expected_rows = layout(expected)
    reference = tmp_path / "expected.safetensors"
    header = encode_header(expected_rows)
    with open(reference, "wb") as f:
        f.write(header)
        f.truncate(len(header) + expected_rows[-1][4])
    return ckpt, reference


def temp_files(folder: Path, target: str) -> list[Path]:
    return sorted(folder.glob(f".{target}.keyguard-*.tmp"))


def start_fix(args: list[str | os.PathLike[str]], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "keyguard", "fix", *map(os.fspath, args), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )


def kill_while_writing(
    args: list[str | os.PathLike[str]], env: dict[str, str], folder: Path, target: str, attempts: int = 3
) -> int:
    """Start ``keyguard fix``, wait for its temporary file to appear and grow past 32 MiB, SIGKILL it; returns the
    size seen.

    Retried (up to ``attempts`` times) should a run finish before it could be caught writing.
    """
    for _ in range(attempts):
        proc = start_fix(args, env, folder)
        first = None
        deadline = time.monotonic() + 60
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                temps = temp_files(folder, target)
                size = temps[0].stat().st_size if temps and temps[0].exists() else None
                if size is not None and first is None:
                    first = size
                elif size is not None and first is not None and size > max(first, 32 * MiB):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    assert proc.returncode == -signal.SIGKILL
                    return size
                time.sleep(0.0005)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            if proc.stderr is not None:
                proc.stderr.close()
        # it finished (or stalled) before it could be caught: clean up and try again (a new output only: in place,
        # the checkpoint is now the fixed one)
        assert proc.returncode in (0, -signal.SIGKILL), f"keyguard fix failed: {proc.returncode}"
        if "--in-place" in args:
            break
        for stale in temp_files(folder, target):
            stale.unlink()
        (folder / target).unlink(missing_ok=True)
    pytest.fail(f"could not catch keyguard fix writing in {attempts} attempts")


def test_killed_while_writing_a_new_output(big: tuple[Path, Path], tmp_path: Path, offline_env: dict[str, str]) -> None:
    ckpt, reference = big
    before = sha256(ckpt)
    size = kill_while_writing(
        [ckpt, "-e", reference, "-o", "out.safetensors"], offline_env, tmp_path, "out.safetensors"
    )
    print(f"killed with {size:,} bytes in the temporary file")
    assert size > 0
    assert sha256(ckpt) == before
    assert not (tmp_path / "out.safetensors").exists()
    remaining = sorted(p.name for p in tmp_path.iterdir())
    temps = [p.name for p in temp_files(tmp_path, "out.safetensors")]
    assert len(temps) <= 1  # documented: at worst one temporary file beside the target
    assert remaining == sorted(["ckpt.safetensors", "expected.safetensors", *temps])


def test_killed_while_writing_in_place(big: tuple[Path, Path], tmp_path: Path, offline_env: dict[str, str]) -> None:
    ckpt, reference = big
    before = sha256(ckpt)
    inode, length = ckpt.stat().st_ino, ckpt.stat().st_size
    kill_while_writing([ckpt, "-e", reference, "--in-place"], offline_env, tmp_path, ckpt.name)
    assert (ckpt.stat().st_ino, ckpt.stat().st_size) == (inode, length)
    assert sha256(ckpt) == before  # the original, intact
    temps = temp_files(tmp_path, ckpt.name)
    assert len(temps) <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ckpt.safetensors", "expected.safetensors", *(t.name for t in temps)]
    )


def test_in_place_never_shows_a_partial_file(
    big: tuple[Path, Path], tmp_path: Path, offline_env: dict[str, str]
) -> None:
    """Watched throughout an ``--in-place`` run, the path holds the old file or the complete new one, nothing else."""
    ckpt, reference = big
    old = (ckpt.stat().st_ino, ckpt.stat().st_size)
    seen = set()
    proc = start_fix([ckpt, "-e", reference, "--in-place"], offline_env, tmp_path)
    try:
        while proc.poll() is None:
            st = ckpt.stat()  # never missing: os.replace swaps the name in one step
            seen.add((st.st_ino, st.st_size))
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    new = (ckpt.stat().st_ino, ckpt.stat().st_size)
    assert new[0] != old[0]
    assert seen <= {old, new}
    assert old in seen  # the run was watched while it wrote
    assert temp_files(tmp_path, ckpt.name) == []
    with open(ckpt, "rb") as f:
        header = f.read(8 + int.from_bytes(f.read(8), "little"))
    assert b'"model.layers.0.mlp.weight"' in header and b"module." not in header
