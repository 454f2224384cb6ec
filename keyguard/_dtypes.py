"""Element types, named as safetensors names them (``F32``, ``BF16``, ...), whatever the source.

Torch dtypes are mapped by name so this module never imports torch.
"""

from __future__ import annotations

from typing import Final

#: bits per element for every dtype the safetensors format defines.
DTYPE_BITS: Final[dict[str, int]] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

#: The largest value a ``usize`` dimension may take: the safetensors library reads shapes as 64-bit integers.
MAX_DIM: Final = 2**64 - 1


def nbytes_or_none(dtype: str, shape: tuple[int, ...]) -> int | None:
    """Bytes of a tensor, computed as the safetensors library does, or ``None`` where it refuses the tensor.

    The element count is a running product that must stay within 64 bits at every step (even when a later
    dimension is 0), so must the count in bits, and the bits must fill whole bytes.
    """
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        return None
    count = 1
    for dim in shape:
        count *= dim
        if count > MAX_DIM or dim > MAX_DIM:
            return None
    total = count * bits
    if total > MAX_DIM or total % 8:
        return None
    return total // 8


_TORCH_TO_SAFETENSORS: Final[dict[str, str]] = {
    "torch.bool": "BOOL",
    "torch.uint8": "U8",
    "torch.int8": "I8",
    "torch.float8_e5m2": "F8_E5M2",
    "torch.float8_e4m3fn": "F8_E4M3",
    "torch.float8_e5m2fnuz": "F8_E5M2FNUZ",
    "torch.float8_e4m3fnuz": "F8_E4M3FNUZ",
    "torch.float8_e8m0fnu": "F8_E8M0",
    "torch.int16": "I16",
    "torch.uint16": "U16",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.int32": "I32",
    "torch.uint32": "U32",
    "torch.float32": "F32",
    "torch.complex64": "C64",
    "torch.float64": "F64",
    "torch.int64": "I64",
    "torch.uint64": "U64",
}

_NUMPY_TO_SAFETENSORS: Final[dict[str, str]] = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "float16": "F16",
    "int32": "I32",
    "uint32": "U32",
    "float32": "F32",
    "complex64": "C64",
    "float64": "F64",
    "int64": "I64",
    "uint64": "U64",
}

_ALIASES: Final[dict[str, str]] = {
    **{k.lower(): k for k in DTYPE_BITS},
    **{k.removeprefix("torch."): v for k, v in _TORCH_TO_SAFETENSORS.items()},
    **_NUMPY_TO_SAFETENSORS,
    "float": "F32",
    "half": "F16",
    "double": "F64",
    "long": "I64",
    "int": "I32",
    "fp32": "F32",
    "fp16": "F16",
    "bf16": "BF16",
}


def canonical_dtype(dtype: object) -> str:
    """Return the safetensors name of ``dtype``: a torch dtype, a numpy dtype or a name (``"bf16"``, ``"F32"``).

    Names keyguard does not know are returned unchanged (upper-cased) rather than refused, so a source with an
    exotic dtype can still be diagnosed by its keys.
    """
    text = str(dtype)
    if text in DTYPE_BITS:
        return text
    if text in _TORCH_TO_SAFETENSORS:
        return _TORCH_TO_SAFETENSORS[text]
    found = _ALIASES.get(text.removeprefix("torch.").lower())
    return found if found is not None else text.upper()


def dtype_label(dtype: str | None) -> str:
    """Short lower-case label for tables: ``BF16`` -> ``bf16``; unknown -> ``?``."""
    return "?" if dtype is None else dtype.lower()


def nbytes_of(numel: int, dtype: str | None) -> int | None:
    """Bytes taken by ``numel`` elements of ``dtype``, or ``None`` when the dtype is unknown."""
    bits = DTYPE_BITS.get(dtype) if dtype is not None else None
    if bits is None:
        return None
    return (numel * bits + 7) // 8
