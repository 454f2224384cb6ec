"""The reader tests use small files; they run the msgspec path on every header, not only on headers of at least
``FAST_FROM`` bytes (where ``read_safetensors`` takes it), so both parsers see every case.
``test_small_headers_take_the_strict_path`` checks the threshold itself."""

from __future__ import annotations

import pytest

from keyguard.sources import _safetensors


@pytest.fixture(autouse=True)
def fast_path_for_every_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_safetensors, "FAST_FROM", 0)
