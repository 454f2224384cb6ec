"""A PyTorch pickle truncated while ``keyguard fix`` reads it: exit 0 (the file as it was read) or 2 (one line),
never SIGBUS or an internal error, and nothing left behind.

``torch.load(mmap=True)`` maps the file; touching a page past a truncation kills the process with SIGBUS. ``fix``
loads from a private copy instead. The truncation is made in the test, from outside, once ``fix`` has started
writing (its temporary output exists), at several delays.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

import keyguard  # noqa: E402

N_TENSORS = 32
ELEMENTS = 2 * 1024 * 1024  # F32: 8 MiB each, 256 MiB in all


@pytest.fixture
def big_pickle(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    tensors = {f"module.layers.{i}.weight": torch.rand(ELEMENTS, generator=generator) for i in range(N_TENSORS)}
    path = tmp_path / "big.pt"
    torch.save(tensors, path)
    return path, tensors


@pytest.mark.slow
@pytest.mark.parametrize("written", [0.0, 0.1, 0.3, 0.6])
def test_truncation_while_fix_reads_a_pickle(
    offline_env: dict[str, str], tmp_path: Path, big_pickle: tuple[Path, dict[str, torch.Tensor]], written: float
) -> None:
    """The source is cut in half once the temporary output holds ``written`` of the data."""
    source, tensors = big_pickle
    expected = tmp_path / "expected.json"
    keyguard.write_manifest(keyguard.read_keys(source), expected)  # the expected keys, read before any truncation
    out = tmp_path / "out.safetensors"
    process = subprocess.Popen(
        [sys.executable, "-m", "keyguard", "fix", str(source), "-e", str(expected), "-o", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=offline_env,
        cwd=tmp_path,
    )
    target = written * source.stat().st_size
    deadline = time.monotonic() + 120
    while process.poll() is None and not any(p.stat().st_size >= target for p in _temps(tmp_path)):
        assert time.monotonic() < deadline, "fix never started writing"
        time.sleep(0.001)
    os.truncate(source, source.stat().st_size // 2)
    _, err = process.communicate(timeout=300)
    message = err.decode()
    assert process.returncode in (0, 2), (process.returncode, message)  # never -SIGBUS, never 3
    if process.returncode == 2:
        assert message.startswith("keyguard: error: ") and message.count("\n") == 1, message
        assert "changed" in message or "cannot be loaded" in message, message
        assert not out.exists()
    else:  # the private copy was complete before the truncation: the output is the file as it was read
        written_tensors = load_file(str(out))
        assert sorted(written_tensors) == sorted(tensors)
        assert all(torch.equal(written_tensors[k], v) for k, v in tensors.items())
    assert [p.name for p in tmp_path.iterdir() if ".keyguard-" in p.name] == []


def _temps(folder: Path) -> list[Path]:
    found = []
    for path in folder.glob(".out.safetensors.keyguard-*.tmp"):
        try:
            path.stat()
        except FileNotFoundError:  # renamed into place meanwhile
            continue
        found.append(path)
    return found
