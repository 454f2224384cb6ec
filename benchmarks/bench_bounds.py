"""Memory bounds of the readers (issue 11): a 1,000,000-tensor safetensors header and a 100 MB JSON index.

1. A safetensors file whose header lists 1,000,000 BF16 tensors (``blocks.{i // 1000}.{i % 1000}.weight``, shapes
   [16, 64..66], canonical layout, a 94.7 MB header; the data is a sparse hole). ``read_safetensors(path)`` in a
   fresh process against the same process importing ``keyguard.sources`` only; the extra peak RSS is the read's.
   For scale: ``json.loads`` of the header. **Target:** extra peak RSS at most 4x the header's size.
2. A 99 MB ``model.safetensors.index.json``: 10 keys in ``weight_map`` (one real shard beside it) and an unknown
   ``padding`` field holding 33,000,000 empty objects. ``keyguard inspect INDEX`` against ``keyguard --version``
   (start-up); CPU time and peak RSS. **Target:** bounded memory: extra peak RSS at most 1.5x the file (its bytes are
   read once), not a multiple of what the unknown field would build.

Fresh processes, interleaved, 3 rounds (2 with ``--quick``); peak RSS and CPU time from ``wait4`` through
``_common.measure_command``. With ``KG_BENCH_BEFORE=DIR`` the older keyguard runs in the same rounds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import _common as c

N_TENSORS = 1_000_000
PADDING = 33_000_000
SHARD = "model-00001-of-00001.safetensors"

# The older keyguard in KG_BENCH_BEFORE, imported instead of this checkout's (whose editable finder is left out).
_BEFORE = """\
import sys
sys.meta_path = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
sys.path.insert(0, {before!r})
"""
_READ = """\
import sys
import keyguard.sources as sources
assert sources.__file__.startswith({root!r}), sources.__file__
{action}
"""


def write_header_file(path: str) -> int:
    entries = {f"blocks.{i // 1000}.{i % 1000}.weight": ("BF16", (16, 64 + i % 3)) for i in range(N_TENSORS)}
    c.write_sparse_safetensors(path, entries)
    return c.header_length(path)


def write_index(folder: str) -> str:
    import json

    from keyguard._st_write import encode_header, layout

    weight_map = {f"model.layers.{i}.weight": SHARD for i in range(10)}
    rows = layout(dict.fromkeys(weight_map, ("F32", (1,))))
    with open(os.path.join(folder, SHARD), "wb") as f:
        f.write(encode_header(rows))
        f.write(bytes(rows[-1][4]))
    path = os.path.join(folder, "model.safetensors.index.json")
    with open(path, "w") as f:
        f.write('{"metadata": {"total_size": 40}, "weight_map": ' + json.dumps(weight_map) + ', "padding": [')
        f.write(",".join(["{}"] * PADDING))
        f.write("]}")
    return path


def _reader(action: str, *, before: bool = False) -> list[str]:
    root = c.BEFORE if before else str(c.REPO)
    setup = _BEFORE.format(before=c.BEFORE) if before else ""
    return c.python_command(setup + _READ.format(root=root, action=action))


def header_bound(path: str, size: int, rounds: int) -> dict[str, Any]:
    read = f"sources.read_safetensors({path!r})"
    loads = f"import json\nwith open({path!r}, 'rb') as f:\n    json.loads(f.read(int.from_bytes(f.read(8), 'little')))"
    commands = {
        "read_safetensors": _reader(read),
        "baseline: import keyguard.sources": _reader("pass"),
        "for scale: json.loads of the header": _reader(loads),
    }
    if c.BEFORE:
        commands["read_safetensors, before"] = _reader(read, before=True)
        commands["baseline, before"] = _reader("pass", before=True)
    results = c.interleaved_commands(commands, rounds)
    rows, figures = _memory_rows(
        results,
        size,
        lambda name: "baseline, before" if name.endswith("before") else "baseline: import keyguard.sources",
    )
    print(f"\n1. Reading a {N_TENSORS:,}-tensor header ({size / 1e6:.1f} MB), fresh processes:")
    print(c.table(["contender", "CPU min s", "CPU median s", "peak RSS MB", "extra MB", "extra / header"], rows))
    ratio = figures["read_safetensors"]["extra_rss"] / size
    print(f"target (extra peak RSS <= 4x the header): {'met' if ratio <= 4 else 'NOT met'} ({ratio:.2f}x)")
    figures["header_bytes"] = size
    return figures


def index_bound(path: str, rounds: int) -> dict[str, Any]:
    size = os.path.getsize(path)
    commands = {
        "keyguard inspect INDEX": c.keyguard_cli("inspect", path),
        "baseline: keyguard --version": c.keyguard_cli("--version"),
    }
    if c.BEFORE:
        commands["keyguard inspect INDEX, before"] = c.keyguard_cli("inspect", path, before=True)
    results = c.interleaved_commands(commands, rounds)
    rows, figures = _memory_rows(results, size, lambda name: "baseline: keyguard --version")
    print(f"\n2. A {size / 1e6:.1f} MB index padded with {PADDING:,} empty objects, fresh processes:")
    print(c.table(["command", "CPU min s", "CPU median s", "peak RSS MB", "extra MB", "extra / file"], rows))
    ratio = figures["keyguard inspect INDEX"]["extra_rss"] / size
    print(f"target (bounded: extra peak RSS <= 1.5x the file): {'met' if ratio <= 1.5 else 'NOT met'} ({ratio:.2f}x)")
    figures["file_bytes"] = size
    return figures


def _memory_rows(
    results: dict[str, list[Any]], size: int, baseline: Callable[[str], str]
) -> tuple[list[list[str]], dict[str, Any]]:
    """One row per contender: CPU time, peak RSS, and the extra peak RSS over its baseline's (``baseline(name)`` names
    that contender), also as a multiple of ``size``."""
    rows, figures = [], {}
    for name, runs in results.items():
        peak = c.Stats([float(m.peak_rss) for m in runs])
        extra = peak.median - c.Stats([float(m.peak_rss) for m in results[baseline(name)]]).median
        cpu = c.Stats([m.cpu for m in runs])
        ratio = f"{extra / size:.2f}x" if not name.startswith("baseline") else ""
        rows.append([name, f"{cpu.min:.2f}", f"{cpu.median:.2f}", c.mb(peak.median), c.mb(extra), ratio])
        figures[name] = {"cpu_min": cpu.min, "cpu_median": cpu.median, "peak_rss": peak.median, "extra_rss": extra}
    return rows, figures


def main(argv: list[str] | None = None) -> int:
    args = c.parse_args((__doc__ or "").splitlines()[0], argv)
    rounds = 2 if args.quick else 3
    work = c.work_dir()
    print(f"== bench_bounds ({c.environment()}, quick={args.quick})")
    snapshot = c.code_snapshot()
    print(c.code_version())
    header = str(work / "bounds_1m.safetensors")
    folder = work / "bounds_index"
    folder.mkdir(exist_ok=True)
    figures: dict[str, Any] = {}
    try:
        figures["header"] = header_bound(header, write_header_file(header), rounds)
        os.unlink(header)
        figures["index"] = index_bound(write_index(str(folder)), rounds)
        print(f"\n({rounds} interleaved rounds; MB = 10^6 bytes)")
        c.warn_if_code_changed(snapshot)
        c.write_json(args.json, figures)
    finally:
        if os.path.exists(header):
            os.unlink(header)
        for name in os.listdir(folder):
            os.unlink(folder / name)
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
