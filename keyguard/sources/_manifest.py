"""keyguard's key manifest (``"format": "keyguard.keys/v1"``): the keys a model expects, without the model.

One tensor per line, so a committed manifest reviews well in a diff.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keyguard._exceptions import SourceError
from keyguard._printable import printable
from keyguard.sources._jsonfile import load_json_object
from keyguard.sources._keyset import KeySet, TensorInfo

MANIFEST_FORMAT: Final = "keyguard.keys/v1"


#: As in safetensors files: no dimension, and no tensor, is larger than 64-bit sizes can say.
_MAX_SIZE: Final = 2**64 - 1


class ManifestTensor(BaseModel):
    """One tensor of a manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: list[Annotated[int, Field(strict=True, ge=0, le=_MAX_SIZE)]] | None = None
    dtype: Annotated[str, Field(strict=True)] | None = None

    @field_validator("shape")
    @classmethod
    def _fits_in_64_bits(cls, shape: list[int] | None) -> list[int] | None:
        if shape is None or 0 in shape:
            return shape
        numel = 1
        for dim in shape:  # stops at the first dimension that overflows: 200,000 dims cost nothing more
            numel *= dim
            if numel > _MAX_SIZE:
                raise ValueError(f"a tensor of {len(shape)} dimensions this large has more than 2**64 elements")
        return shape


class ManifestSource(BaseModel):
    """Where a manifest's keys came from, and the source-level facts keyguard uses in diagnoses."""

    model_config = ConfigDict(extra="allow")

    format: str
    location: str | None = None
    architecture: str | None = None
    unwrapped: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    tied: list[list[str]] = Field(default_factory=list)
    non_persistent: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    adapter_config: dict[str, Any] | None = None


class Manifest(BaseModel):
    """A ``keyguard.keys/v1`` document."""

    model_config = ConfigDict(extra="allow")

    format: Literal["keyguard.keys/v1"]
    source: ManifestSource
    tensors: dict[str, ManifestTensor]


def manifest_json(keys: KeySet) -> str:
    """Render ``keys`` as a manifest document (one tensor per line)."""
    from keyguard import __version__

    source = {
        "format": keys.format,
        "location": None if keys.location is None else printable(keys.location),
        "architecture": keys.architecture,
        "unwrapped": keys.unwrapped,
        "metadata": dict(keys.metadata),
        "tied": [list(group) for group in keys.tied],
        "non_persistent": sorted(keys.non_persistent),
        "files": [printable(name) for name in keys.files],
        "notes": list(keys.notes),
        "adapter_config": keys.adapter.model_dump(mode="json") if keys.adapter is not None else None,
    }
    lines = [
        "{",
        f'  "format": "{MANIFEST_FORMAT}",',
        f'  "created_by": {json.dumps("keyguard " + __version__)},',
        f'  "source": {json.dumps(source, ensure_ascii=False)},',
        '  "tensors": {',
    ]
    entries = [f"    {json.dumps(key, ensure_ascii=False)}: {_tensor_json(info)}" for key, info in keys.items()]
    lines.append(",\n".join(entries))
    lines.append("  }")
    lines.append("}")
    return "\n".join(line for line in lines if line) + "\n"


def _tensor_json(info: TensorInfo) -> str:
    shape = json.dumps(list(info.shape)) if info.shape is not None else "null"
    return f'{{"shape": {shape}, "dtype": {json.dumps(info.dtype)}}}'


def write_manifest(keys: Any, path: str | os.PathLike[str]) -> None:
    """Write the keys of ``keys`` as a manifest, atomically (a crash never leaves a partial file at ``path``).

    ``keys`` is a ``KeySet`` or anything ``keyguard.read_keys`` accepts: a live ``torch.nn.Module`` (a meta-device
    one too), a state dict, a checkpoint path, a ``config.json`` folder.
    """
    from keyguard._atomic import atomic_write_text

    if not isinstance(keys, KeySet):
        from keyguard.sources._resolve import read_keys

        keys = read_keys(keys)
    atomic_write_text(path, manifest_json(keys))


def read_manifest(path: str | os.PathLike[str]) -> KeySet:
    """Read a manifest back into a ``KeySet`` whose format is ``"manifest"``."""
    path = os.fspath(path)
    raw = load_json_object(path)
    if raw.get("format") != MANIFEST_FORMAT:
        raise SourceError(
            path,
            "not-a-manifest",
            f"is not a keyguard manifest (format is {raw.get('format')!r}, expected {MANIFEST_FORMAT!r})",
        )
    try:
        doc = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[:3]
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in first)
        raise SourceError(
            path, "invalid-manifest", f"invalid manifest ({exc.error_count()} problems): {problems}"
        ) from None
    tensors = {
        key: TensorInfo(tuple(t.shape) if t.shape is not None else None, t.dtype) for key, t in doc.tensors.items()
    }
    adapter = None
    if doc.source.adapter_config is not None:
        from keyguard.sources._adapter import AdapterConfig

        try:
            adapter = AdapterConfig.model_validate(doc.source.adapter_config)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise SourceError(
                path,
                "invalid-manifest",
                f"invalid manifest: source.adapter_config is not a valid adapter config: {problems}",
            ) from None
    origin = doc.source
    notes = [f"snapshot of {origin.format} {origin.location or ''}".rstrip(), *origin.notes]
    return KeySet(
        tensors=tensors,
        format="manifest",
        location=path,
        metadata=origin.metadata,
        unwrapped=origin.unwrapped,
        tied=tuple(tuple(g) for g in origin.tied),
        non_persistent=frozenset(origin.non_persistent),
        architecture=origin.architecture,
        adapter=adapter,
        files=tuple(origin.files),
        notes=tuple(notes),
    )
