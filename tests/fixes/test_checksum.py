"""The write checksum: a range's value does not depend on how the stream was cut into chunks, with XXH3 or with
the CRC-32 fallback; and starting writeback early leaves the written bytes as they are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _hypothesis_profiles import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyguard.fixes import _checksum
from keyguard.fixes._block_copy import Spans, start_writeback


@pytest.fixture(params=["xxh3-64", "crc32"])
def algorithm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "xxh3-64" and not _checksum.HAVE_XXHASH:
        pytest.skip("xxhash is not installed")
    monkeypatch.setattr(_checksum, "HAVE_XXHASH", request.param == "xxh3-64")
    return str(request.param)


@settings(
    max_examples=examples(60),
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the fixture only picks the algorithm
)
@given(
    data=st.binary(min_size=0, max_size=400),
    sizes=st.lists(st.integers(0, 120), max_size=8),
    cuts=st.lists(st.integers(1, 90), max_size=12),
)
def test_spans_do_not_depend_on_the_chunks(algorithm: str, data: bytes, sizes: list[int], cuts: list[int]) -> None:
    bounds, position = [], 0
    for i, size in enumerate(sizes):
        size = min(size, len(data) - position)
        bounds.append((f"t{i}", position, position + size))
        position += size
    spans = Spans(bounds)
    offset = 0
    for cut in [*cuts, len(data)]:
        piece = data[offset : offset + cut]
        if piece:
            spans.feed(memoryview(piece), offset)
        offset += len(piece)
    assert spans.result() == {name: _checksum.digest(data[start:end]) for name, start, end in bounds}
    running = _checksum.running()
    running.update(data[: len(data) // 2])
    running.update(data[len(data) // 2 :])
    assert running.value() == _checksum.digest(data)


def test_the_checksum_tells_one_flipped_bit(algorithm: str) -> None:
    data = bytearray(os.urandom(1 << 16))
    before = _checksum.digest(data)
    data[12345] ^= 0x10
    assert _checksum.digest(data) != before


def test_start_writeback_keeps_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    payload = os.urandom(3 << 20)
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        start_writeback(f.fileno(), 0, len(payload))
        start_writeback(f.fileno(), len(payload), 0)  # an empty range is fine too
    assert path.read_bytes() == payload
