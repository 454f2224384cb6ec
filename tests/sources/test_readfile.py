"""Only regular files are read, and small files are read with a bound: FIFOs and devices never hang keyguard.

The cases that used to hang run in a subprocess with a timeout (a hang fails the test instead of the suite), the
device cases under a memory limit (an unbounded read fails with MemoryError instead of taking the machine).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keyguard import ShardIndexError, SourceError
from keyguard.sources._readfile import open_regular, read_bounded

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")

TIMEOUT = 60  # seconds; a hang is what fails, not slowness
MEMORY = 1 << 30  # address space for the device cases: far below what reading /dev/zero for 5 s takes


def keyguard_process(env: dict[str, str], cwd: Path, *args: str, memory: int | None = None) -> Any:
    def limit() -> None:
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [sys.executable, "-m", "keyguard", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=TIMEOUT,
        preexec_fn=limit,
    )


def st_file(path: Path) -> Path:
    header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return st_file(tmp_path / "good.safetensors")


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["p.safetensors", "p.json", "p.index.json", "noext", "p.pt", "config.json"])
def test_a_fifo_source_is_refused_at_once(offline_env: dict[str, str], tmp_path: Path, name: str, good: Path) -> None:
    path = fifo(tmp_path / name)
    done = keyguard_process(offline_env, tmp_path, "inspect", str(path))
    assert done.returncode == 2, done.stderr
    assert "FIFO (named pipe), not a regular file" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_fifo_as_expected_or_plan_is_refused(offline_env: dict[str, str], tmp_path: Path, good: Path) -> None:
    expected = fifo(tmp_path / "expected.json")
    done = keyguard_process(offline_env, tmp_path, "diagnose", str(good), "--expected", str(expected))
    assert done.returncode == 2 and "FIFO" in done.stderr, done.stderr
    plan = fifo(tmp_path / "plan.json")
    done = keyguard_process(
        offline_env, tmp_path, "fix", str(good), "-e", str(good), "--plan", str(plan), "-o", "out.safetensors"
    )
    assert done.returncode == 2 and "FIFO" in done.stderr, done.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_a_fifo_shard_is_refused(offline_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    st_file(folder / "model-1.safetensors")
    fifo(folder / "model-2.safetensors")
    weight_map = {"a": "model-1.safetensors", "b": "model-2.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    done = keyguard_process(offline_env, tmp_path, "inspect", str(folder))
    assert done.returncode == 2, done.stderr
    assert "model-2.safetensors: is a FIFO" in done.stderr


@pytest.mark.parametrize("name", ["x.json", "x.index.json", "config.json"])
def test_a_device_behind_a_json_name_is_refused_without_reading(
    offline_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    done = keyguard_process(offline_env, tmp_path, "inspect", str(link), memory=MEMORY)
    assert done.returncode == 2, done.stderr
    assert "is a character device, not a regular file" in done.stderr


def test_a_device_as_expected_is_refused(offline_env: dict[str, str], tmp_path: Path, good: Path) -> None:
    link = tmp_path / "keys.json"
    link.symlink_to("/dev/zero")
    done = keyguard_process(offline_env, tmp_path, "diagnose", str(good), "-e", str(link), memory=MEMORY)
    assert done.returncode == 2 and "character device" in done.stderr, done.stderr


# -- the two functions ---------------------------------------------------------------------------------------------
def test_open_regular_reads_regular_files_and_symlinks_to_them(tmp_path: Path, good: Path) -> None:
    link = tmp_path / "link.safetensors"
    link.symlink_to(good)
    with open_regular(link) as f:
        assert f.read() == good.read_bytes()
    with open_regular(str(good)) as f:
        assert os.get_blocking(f.fileno())  # switched back to blocking after the non-blocking open


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: fifo(p), "not-a-regular-file"),
        (lambda p: p.symlink_to("/dev/null") or p, "not-a-regular-file"),
        (lambda p: p.mkdir() or p, "is-a-directory"),
        (lambda p: p, "not-found"),
        (lambda p: p.symlink_to(p.parent / "gone") or p, "not-found"),
    ],
)
def test_open_regular_refuses_everything_else(tmp_path: Path, make: Callable[[Path], Any], problem: str) -> None:
    path = tmp_path / "x.json"
    make(path)
    with pytest.raises(SourceError) as info:
        open_regular(path)
    assert info.value.problem == problem and info.value.path == str(path)
    with pytest.raises(ShardIndexError) as info2:  # the caller's error class
        read_bounded(path, 10, error=ShardIndexError)
    assert info2.value.problem == problem


def test_open_regular_refuses_a_nul_byte(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        open_regular(f"{tmp_path}/a\x00b")
    assert info.value.problem == "invalid-path"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_open_regular_says_permission_denied(tmp_path: Path, good: Path) -> None:
    good.chmod(0)
    with pytest.raises(SourceError, match="permission denied") as info:
        open_regular(good)
    assert info.value.problem == "unreadable"


def test_read_bounded_reads_at_most_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100) == b"x" * 100
    with pytest.raises(SourceError, match="above the 99-byte limit") as info:
        read_bounded(path, 99)
    assert info.value.problem == "file-too-large"


def test_read_bounded_reads_a_file_that_says_it_is_empty(tmp_path: Path) -> None:
    """/proc files are regular files of size 0 that hold text: read in small pieces, still bounded."""
    status = Path("/proc/self/status")
    if not status.is_file() or status.stat().st_size != 0:
        pytest.skip("no /proc")
    assert b"Name:" in read_bounded(status, 1 << 20)
    with pytest.raises(SourceError) as info:
        read_bounded(status, 10)
    assert info.value.problem == "file-too-large"
