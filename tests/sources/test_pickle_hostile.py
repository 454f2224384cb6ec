"""Hostile PyTorch checkpoints: zip bombs, overlapping entries, impossible storages, tensors safetensors cannot hold.

The bombs are built in the test (``_hostile_pickles``). The CLI runs that could take memory before the fix run in a
subprocess under an address-space limit, so a regression fails the test rather than the machine.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from _hostile_pickles import (  # noqa: E402
    MIB,
    deflated_zeros,
    genuine_entries,
    legacy_with_storage,
    overlapping_zip,
    write_zip,
    zip_bomb,
)

from keyguard import SourceError  # noqa: E402
from keyguard.sources import read_keys, read_pickle  # noqa: E402
from keyguard.sources._pickle_zip import MAX_PICKLE, MAX_RATIO, check_zip  # noqa: E402

LIMIT = 3 << 30  # torch itself maps about 650 MB of address space; inflating the bomb needs 2 GiB more


def inspect_limited(env: dict[str, str], path: Path) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "keyguard", "inspect", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT)),
    )


def test_a_zip_bomb_is_refused_before_torch_load(offline_env: dict[str, str], tmp_path: Path) -> None:
    bomb = zip_bomb(tmp_path, 2048)  # 2 MB whose data.pkl inflates to 2 GiB
    assert bomb.stat().st_size < 3 * MIB
    done = inspect_limited(offline_env, bomb)
    assert done.returncode == 2, done.stderr
    assert "refused before loading: its pickle 'genuine/data.pkl' declares 2,147,483,648 bytes" in done.stderr
    with pytest.raises(SourceError) as info:
        check_zip(str(bomb), bomb.stat().st_size)
    assert info.value.problem == "zip-bomb" and info.value.ctx["declared"] == 2048 * MIB


def test_a_compressed_entry_inflating_beyond_the_ratio_is_refused(tmp_path: Path) -> None:
    entries = genuine_entries(tmp_path)
    storage = deflated_zeros(8)  # 8 MiB of zeros in about 8 KiB: a ratio deflate reaches, no checkpoint holds
    storage.name = next(e.name for e in entries if "/data/" in e.name)
    path = write_zip(tmp_path / "ratio.pt", [storage if e.name == storage.name else e for e in entries])
    with pytest.raises(SourceError, match=r"inflates [\d,]+ bytes to 8,388,608 \([\d,]+:1\)") as info:
        read_pickle(path)
    assert info.value.problem == "zip-bomb"
    assert 8 * MIB / len(storage.data) > MAX_RATIO


def test_compressed_entries_below_the_limits_are_left_to_torch(tmp_path: Path) -> None:
    """A re-zipped checkpoint (deflated entries of ordinary ratios) is not a bomb: torch decides what it makes of it."""
    import zipfile

    torch.save({"w": torch.randn(64)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(tmp_path / "deflated.pt", "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info.filename), zipfile.ZIP_DEFLATED)
    check_zip(str(tmp_path / "deflated.pt"), (tmp_path / "deflated.pt").stat().st_size)  # no error


def test_entries_sharing_their_bytes_are_refused(tmp_path: Path) -> None:
    path = overlapping_zip(tmp_path)
    with pytest.raises(SourceError, match="overlap") as info:
        read_keys(path)
    assert info.value.problem == "invalid-zip"


def test_an_entry_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    entries = genuine_entries(tmp_path)
    path = write_zip(tmp_path / "past.pt", entries, offsets=[0] * (len(entries) - 1) + [10**6])
    with pytest.raises(SourceError) as info:
        check_zip(str(path), path.stat().st_size)
    assert info.value.problem == "invalid-zip"


def test_genuine_checkpoints_pass_the_zip_check(tmp_path: Path, tiny_gpt2: Any) -> None:
    path = tmp_path / "model.bin"
    torch.save(tiny_gpt2().state_dict(), path)
    check_zip(str(path), path.stat().st_size)
    assert path.stat().st_size < MAX_PICKLE
    assert len(read_keys(path)) > 10


@pytest.mark.parametrize("numel", [2**28, 2**40])
def test_a_legacy_storage_larger_than_the_file_is_refused_on_read(tmp_path: Path, numel: int) -> None:
    """skip_data allocates (never touches) what the storage declares; the file cannot hold it: refused on read, not
    when ``fix`` loads the data."""
    path = legacy_with_storage(tmp_path, numel)
    with pytest.raises(SourceError) as info:
        read_keys(path)
    # 2**40 float32 elements cannot even be reserved on most machines: torch's own error then says so
    allowed = {"storage-too-large"} if numel == 2**28 else {"storage-too-large", "corrupted-pickle"}
    assert info.value.problem in allowed


def test_a_key_that_is_not_unicode_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "surrogate.pt"
    torch.save({"w\ud800": torch.zeros(1)}, path)
    with pytest.raises(SourceError, match="not valid Unicode") as info:
        read_keys(path)
    assert info.value.problem == "lone-surrogate"


def test_sparse_tensors_are_read_with_a_note(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "sparse.pt"
    torch.save({"s": torch.eye(3).to_sparse(), "w": torch.zeros(2)}, path)
    keys = read_keys(path)
    assert keys["s"].shape == (3, 3) and keys["s"].dtype == "F32"
    assert any("not dense: 's' (sparse_coo)" in note for note in keys.notes)
    r = cli("inspect", path)
    assert r.code == 0, r.err


@pytest.mark.parametrize("dtype", ["complex128", "complex32", "qint8"])
def test_dtypes_safetensors_cannot_hold_are_read(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / f"{dtype}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is experimental, quantized tensors deprecated
        if dtype == "qint8":
            tensor = torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8)
        else:
            tensor = torch.zeros(2, dtype=getattr(torch, dtype))
        torch.save({"t": tensor}, path)
        assert read_keys(path)["t"].dtype == f"TORCH.{dtype.upper()}"
