"""Fixtures shared by the whole suite: tiny transformers models, safetensors writing, the CLI, offline settings.

Heavy packages (torch, transformers) are imported inside the fixtures, so tests that do not need them stay light.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _hypothesis_profiles
import pytest
from _tiny import TINY_LLAMA

# Set before anything imports huggingface_hub / transformers: nothing in the tests may reach the network.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(OFFLINE)
# Output width and colour come from the environment (COLUMNS, NO_COLOR, FORCE_COLOR): tests set them explicitly.
for _name in ("COLUMNS", "NO_COLOR", "FORCE_COLOR"):
    os.environ.pop(_name, None)

# before any test module is imported: their @settings inherit from the loaded profile (``ci`` unless fuzzing)
HYPOTHESIS_PROFILE = _hypothesis_profiles.load()


def pytest_report_header() -> str:
    return f"hypothesis profile: {HYPOTHESIS_PROFILE}"


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment for subprocesses: offline, and importing this checkout of keyguard."""
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# -- tiny transformers models ------------------------------------------------------------------------------------
# Sizes are the smallest the classes accept; building one costs a few milliseconds once transformers is imported.


@pytest.fixture
def tiny_llama_config() -> Callable[..., Any]:
    def make(**overrides: Any) -> Any:
        from transformers import LlamaConfig

        values: dict[str, Any] = {**TINY_LLAMA, "architectures": ["LlamaForCausalLM"]}
        values.update(overrides)
        return LlamaConfig(**values)

    return make


@pytest.fixture
def tiny_llama(tiny_llama_config: Callable[..., Any]) -> Callable[..., Any]:
    """``tiny_llama(meta=False, **config_overrides)`` -> a ``LlamaForCausalLM`` in eval mode."""

    def make(*, meta: bool = False, **overrides: Any) -> Any:
        import torch
        from transformers import LlamaForCausalLM

        config = tiny_llama_config(**overrides)
        torch.manual_seed(0)
        with torch.device("meta" if meta else "cpu"):
            model = LlamaForCausalLM(config)
        return model.eval()

    return make


@pytest.fixture
def tiny_bert() -> Callable[..., Any]:
    """``tiny_bert(**config_overrides)`` -> a ``BertForSequenceClassification`` with 3 labels."""

    def make(**overrides: Any) -> Any:
        from transformers import BertConfig, BertForSequenceClassification

        values: dict[str, Any] = {
            "vocab_size": 64,
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 32,
            "num_labels": 3,
            "architectures": ["BertForSequenceClassification"],
        }
        values.update(overrides)
        return BertForSequenceClassification(BertConfig(**values)).eval()

    return make


@pytest.fixture
def tiny_gpt2() -> Callable[..., Any]:
    """``tiny_gpt2(**config_overrides)`` -> a ``GPT2LMHeadModel`` (tied embeddings)."""

    def make(**overrides: Any) -> Any:
        from transformers import GPT2Config, GPT2LMHeadModel

        values: dict[str, Any] = {
            "vocab_size": 64,
            "n_embd": 16,
            "n_layer": 2,
            "n_head": 2,
            "n_positions": 32,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "architectures": ["GPT2LMHeadModel"],
        }
        values.update(overrides)
        return GPT2LMHeadModel(GPT2Config(**values)).eval()

    return make


# -- files -------------------------------------------------------------------------------------------------------


@pytest.fixture
def save_st() -> Callable[..., Path]:
    """``save_st(path, {name: tensor}, metadata=None)``: write with the safetensors library itself; returns path.

    Tensors are cloned to contiguous memory first, so tied weights and views may be passed as they are.
    """

    def save(
        path: str | os.PathLike[str], tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
    ) -> Path:
        from safetensors.torch import save_file

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(target), metadata=metadata)
        return target

    return save


def tree_hashes(*roots: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (files or folders), to prove that inputs were not modified."""
    out: dict[str, str] = {}
    for root in map(Path, roots):
        files: Iterable[Path] = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def hashes() -> Callable[..., dict[str, str]]:
    return tree_hashes


# -- the command line --------------------------------------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``keyguard ARGS...`` in this process (fast); returns exit code, stdout and stderr."""
    from keyguard.cli import main

    def run(*args: str | os.PathLike[str]) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        code = main([os.fspath(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli_subprocess(offline_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m keyguard ARGS...`` in a fresh interpreter, as a user would."""

    def run(*args: str | os.PathLike[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "keyguard", *map(os.fspath, args)],
            capture_output=True,
            text=True,
            env=offline_env,
            cwd=tmp_path,
            timeout=timeout,
        )

    return run
