"""The adapters every integration test uses, saved by PEFT once per session (see ``_integration_models``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from _integration_models import ARCHS, MISSING_KEY, PEFT_PREFIX, save_adapter, variant


@pytest.fixture(scope="session")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every adapter the tests use, by name: ``<arch>`` and ``<arch>_2`` (another seed), and broken variants."""
    root = tmp_path_factory.mktemp("adapters")
    out: dict[str, Path] = {}
    for arch in ARCHS:
        out[arch] = save_adapter(arch, root / arch, seed=1)
        out[f"{arch}_2"] = save_adapter(arch, root / f"{arch}_2", seed=2)

    def strip(tensors: dict[str, Any]) -> dict[str, Any]:
        return {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}

    def extra(tensors: dict[str, Any]) -> dict[str, Any]:
        return {"module." + k: v for k, v in tensors.items()}

    def missing(tensors: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in tensors.items() if k != MISSING_KEY}

    def wrapped(tensors: dict[str, Any]) -> dict[str, Any]:  # trained on a model wrapped in one more `model`
        return {k.replace(PEFT_PREFIX, PEFT_PREFIX + "model.", 1): v for k, v in tensors.items()}

    out["bert_cls_stripped"] = variant(out["bert_cls"], root / "bert_cls_stripped", strip)
    out["gpt2_extra"] = variant(out["gpt2"], root / "gpt2_extra", extra)
    out["llama_missing"] = variant(out["llama"], root / "llama_missing", missing)
    out["llama_wrapped"] = variant(out["llama"], root / "llama_wrapped", wrapped)
    return out
