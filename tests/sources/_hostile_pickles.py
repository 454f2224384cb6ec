"""Hostile PyTorch checkpoints built byte by byte: zip bombs, overlapping entries, impossible storages.

A zip is written by hand here (local headers, central directory, end record) so a test can declare any size and
put any bytes in an entry; ``torch.save`` provides the genuine entries around the hostile one.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

MIB = 1024 * 1024


@dataclass
class Entry:
    name: str
    data: bytes  # as stored (compressed when method is deflate)
    crc: int
    size: int  # inflated size
    method: int = zipfile.ZIP_STORED


def write_zip(path: Path, entries: Sequence[Entry], *, offsets: Sequence[int] | None = None) -> Path:
    """Write ``entries`` as a zip; ``offsets`` overrides where the central directory says each one starts."""
    out = io.BytesIO()
    starts = []
    for entry in entries:
        starts.append(out.tell())
        name = entry.name.encode()
        sizes = (entry.crc, len(entry.data), entry.size, len(name), 0)
        header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, entry.method, 0, 0x21, *sizes)
        out.write(header + name + entry.data)
    directory = out.tell()
    for i, entry in enumerate(entries):
        name = entry.name.encode()
        start = offsets[i] if offsets is not None else starts[i]
        out.write(
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                entry.method,
                0,
                0x21,
                entry.crc,
                len(entry.data),
                entry.size,
                len(name),
                0,
                0,
                0,
                0,
                0,
                start,
            )
            + name
        )
    size = out.tell() - directory
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), size, directory, 0))
    path.write_bytes(out.getvalue())
    return path


def genuine_entries(tmp_path: Path) -> list[Entry]:
    """The entries of a real ``torch.save`` of a one-tensor state dict."""
    source = tmp_path / "genuine.pt"
    torch.save({"w": torch.zeros(2)}, source)
    with zipfile.ZipFile(source) as archive:
        return [Entry(i.filename, archive.read(i.filename), i.CRC, i.file_size) for i in archive.infolist()]


def deflated_zeros(size_mib: int) -> Entry:
    """A deflate stream of ``size_mib`` MiB of zeros, about a thousand times smaller, made in a fraction of a second:
    one fully flushed block of a MiB of zeros, repeated (each flushed block stands alone), then an empty final one."""
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH) == block
    crc = 0
    for _ in range(size_mib):
        crc = zlib.crc32(zeros, crc)
    return Entry("", block * size_mib + compressor.flush(), crc, size_mib * MIB, zipfile.ZIP_DEFLATED)


def zip_bomb(tmp_path: Path, inflated_mib: int = 2048, name: str = "bomb.pt") -> Path:
    """A checkpoint whose ``data.pkl`` is a deflate stream declaring (and inflating to) ``inflated_mib`` MiB."""
    entries = genuine_entries(tmp_path)
    bomb = deflated_zeros(inflated_mib)
    out = []
    for entry in entries:
        if entry.name.endswith("/data.pkl"):
            bomb.name = entry.name
            out.append(bomb)
        else:
            out.append(entry)
    return write_zip(tmp_path / name, out)


def overlapping_zip(tmp_path: Path) -> Path:
    """A genuine checkpoint whose central directory points two entries at the same bytes."""
    entries = genuine_entries(tmp_path)
    plain = tmp_path / "plain.pt"
    write_zip(plain, entries)
    with zipfile.ZipFile(plain) as archive:
        offsets = [i.header_offset for i in archive.infolist()]
    offsets[-1] = offsets[0]
    return write_zip(tmp_path / "overlap.pt", entries, offsets=offsets)


def legacy_with_storage(tmp_path: Path, numel: int) -> Path:
    """A legacy (pre-1.6) checkpoint of one 2-element tensor whose storage declares ``numel`` elements."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    stream = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(stream)
    start = stream.tell()
    for opcode, arg, position in pickletools.genops(raw[start:]):
        if opcode.name == "BININT1" and arg == 2:  # the first small int is the storage's element count
            at = start + (position or 0)
            patched = raw[:at] + b"\x8a" + _long1(numel) + raw[at + 2 :]
            path.write_bytes(patched)
            return path
    raise AssertionError("no storage size found")


def _long1(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return bytes([len(body)]) + body
