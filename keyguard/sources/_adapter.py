"""PEFT adapter folders: ``adapter_config.json`` plus ``adapter_model.safetensors`` (or ``adapter_model.bin``)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keyguard._exceptions import AdapterConfigError, SourceError
from keyguard.sources._confine import escapes
from keyguard.sources._jsonfile import load_json_object
from keyguard.sources._keyset import KeySet

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterConfig(BaseModel):
    """The fields of a PEFT ``adapter_config.json`` that decide which tensors an adapter must hold.

    Unknown fields are kept (PEFT adds fields in most releases); invalid values of known fields are explained.
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    peft_type: str | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    r: int = Field(default=8, gt=0)
    lora_alpha: float = 8
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    fan_in_fan_out: bool = False
    use_dora: bool = False
    use_rslora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    lora_bias: bool = False
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    target_parameters: list[str] | None = None
    inference_mode: bool = True

    @field_validator("rank_pattern")
    @classmethod
    def _ranks_positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v <= 0}
        if bad:
            raise ValueError(f"ranks must be positive, found {bad}")
        return value


def parse_adapter_config(path: str | os.PathLike[str]) -> AdapterConfig:
    """Parse and validate ``adapter_config.json``; every problem is listed in one ``AdapterConfigError``."""
    path = os.fspath(path)
    raw = load_json_object(path, AdapterConfigError)
    try:
        return AdapterConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors(include_url=False)
        )
        raise AdapterConfigError(path, "invalid-adapter-config", f"invalid adapter config: {problems}") from None


def read_adapter(folder: str | os.PathLike[str]) -> KeySet:
    """Read a PEFT adapter folder: its config (validated) and the keys of its weights file."""
    folder = os.fspath(folder)
    config = parse_adapter_config(os.path.join(folder, ADAPTER_CONFIG))
    weights = adapter_weights(folder)
    if weights.endswith(".safetensors"):
        from keyguard.sources._safetensors import read_safetensors

        inner = read_safetensors(weights)
    else:
        from keyguard.sources._pickle import read_pickle

        inner = read_pickle(weights)
    return inner.evolve(format="peft-adapter", location=folder, adapter=config)


def adapter_weights(folder: str) -> str:
    """The adapter's weights file (``adapter_model.safetensors``, else ``.bin``), held to the rule shards follow: a
    symlink may not lead outside the adapter's own tree (its folder, or its repository's blobs in the Hugging Face
    cache).

    Raises:
        SourceError: ``missing-adapter-weights`` or ``weights-outside-folder``.
    """
    weights = next((os.path.join(folder, n) for n in ADAPTER_WEIGHTS if os.path.exists(os.path.join(folder, n))), None)
    if weights is None:
        raise SourceError(
            folder, "missing-adapter-weights", f"has {ADAPTER_CONFIG} but neither {' nor '.join(ADAPTER_WEIGHTS)}"
        )
    real = escapes(folder, weights)
    if real is not None:
        raise SourceError(
            folder,
            "weights-outside-folder",
            f"{os.path.basename(weights)} is a symlink that leads outside the adapter's folder (to {real}); refused",
            weights=weights,
        )
    return weights
