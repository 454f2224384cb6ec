"""Reading a 94,000-tensor safetensors header: keyguard's reader against ``json.loads`` of the same bytes.

Targets: ``keyguard.sources.read_safetensors`` takes no longer than opening the file, reading the 8 + N header
bytes and ``json.loads``-ing them -- although keyguard also validates every entry (dtype, shape, sizes, exact
coverage) and builds its ``KeySet`` -- and its extra peak RSS is at most 1.5x that of ``json.loads``.

Measured four ways, the contenders interleaved in each:

- fresh subprocesses, each timing its own single call after its imports (the realistic case: one read in a new
  process, with the heap and the cyclic GC in their start-up state), in CPU time (``time.process_time``, which
  other jobs on the machine disturb far less) and in wall time;
- in this process, many calls, ``gc.collect()`` before each;
- peak RSS of a fresh process reading the header, minus that of the same process reading nothing;
- the ``keyguard inspect`` command, wall time of the whole process, against ``keyguard --version`` (start-up).

The fallback contender is keyguard as it runs where msgspec is not installed (the strict pure-Python path).

keyguard's reader disables the cyclic GC while it parses; ``json.loads`` with the GC disabled is reported as a
second baseline so the comparison is not only "GC versus no GC".
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import os
import pstats
import sys
import tracemalloc
from typing import Any
from unittest import mock

import _common as c

FULL_ROUNDS = {"subprocess": 7, "in_process": 15, "cli": 5}
QUICK_ROUNDS = {"subprocess": 3, "in_process": 5, "cli": 2}

KEYGUARD = "keyguard read_safetensors"
KEYGUARD_FALLBACK = "keyguard without msgspec (strict path)"
JSON = "open + read + json.loads"
JSON_NO_GC = "open + read + json.loads, gc off"

_SETUP = """\
import gc, json
import keyguard
from keyguard.sources import read_safetensors
import keyguard.sources._safetensors as _st
PATH = {path!r}
"""
# Runs read_safetensors as where msgspec is not installed: every header takes the strict pure-Python path.
_FORCE_FALLBACK = "import keyguard.sources._safetensors_fast as _fast; _fast.HAVE_MSGSPEC = False\n"
_STMTS = {
    KEYGUARD: "result = read_safetensors(PATH)",
    KEYGUARD_FALLBACK: "result = read_safetensors(PATH)",
    JSON: """\
with open(PATH, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    result = json.loads(f.read(n))""",
    JSON_NO_GC: """\
gc.disable()
with open(PATH, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    result = json.loads(f.read(n))
gc.enable()""",
}
# Both results hold one entry per tensor (json.loads's also has no "__metadata__" here).
_CHECK = "assert len(result) == {count}, len(result)"


def _json_loads(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        result: dict[str, Any] = json.loads(f.read(n))
    return result


def _json_loads_no_gc(path: str) -> dict[str, Any]:
    gc.disable()
    try:
        return _json_loads(path)
    finally:
        gc.enable()


def check_reader(path: str, count: int) -> dict[str, object]:
    """Check keyguard reads the file right and through its fast (canonical) path; facts for the report."""
    from keyguard.sources import read_safetensors
    from keyguard.sources._safetensors import _read_header_bytes
    from keyguard.sources._safetensors_fast import parse_fast

    keys = read_safetensors(path)
    loaded = _json_loads(path)
    if len(keys) != count or list(keys) != list(loaded):
        raise AssertionError("keyguard and json.loads disagree on the keys")
    for key in (next(iter(loaded)), list(loaded)[-1]):
        info = keys[key]
        if list(info.shape or ()) != loaded[key]["shape"] or info.dtype != loaded[key]["dtype"]:
            raise AssertionError(f"keyguard and json.loads disagree on {key!r}")
    header, data_start, _ = _read_header_bytes(path)
    size = len(header)
    fast = parse_fast(header, data_start, "x") is not None
    return {"tensors": len(keys), "header_bytes": size, "fast_path": fast}


KEYGUARD_BEFORE = "keyguard read_safetensors, before (KG_BENCH_BEFORE)"
# The older keyguard in KG_BENCH_BEFORE, imported instead of this checkout's (whose editable finder is left out).
_BEFORE_SETUP = """\
import sys
sys.meta_path = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
sys.path.insert(0, {before!r})
"""


def fresh_subprocesses(path: str, count: int, rounds: int, clock: str = "perf_counter") -> dict[str, c.Stats]:
    setup = _SETUP.format(path=path)
    snippets = {
        name: (setup + (_FORCE_FALLBACK if name == KEYGUARD_FALLBACK else ""), stmt) for name, stmt in _STMTS.items()
    }
    if c.BEFORE:
        snippets[KEYGUARD_BEFORE] = (_BEFORE_SETUP.format(before=c.BEFORE) + setup, _STMTS[KEYGUARD])
    return c.interleaved_snippets(snippets, rounds, check=_CHECK.format(count=count), clock=clock)


def _read_with_fallback(path: str) -> object:
    import keyguard.sources._safetensors as st
    import keyguard.sources._safetensors_fast as fast

    with mock.patch.object(fast, "HAVE_MSGSPEC", False):
        return st.read_safetensors(path)


_RSS_BASE = "import gc, json, sys; import keyguard.sources._safetensors as _st; P = sys.argv[1]\n"
_RSS_SNIPPETS = {
    "nothing read (baseline)": "pass",
    KEYGUARD: "r = _st.read_safetensors(P)",
    JSON: "f = open(P, 'rb'); n = int.from_bytes(f.read(8), 'little'); r = json.loads(f.read(n))",
}


def peak_memory(path: str, rounds: int) -> dict[str, c.Stats]:
    """Extra peak RSS of a fresh process reading the header, over the same process reading nothing."""
    commands = {name: c.python_command(_RSS_BASE + code, path) for name, code in _RSS_SNIPPETS.items()}
    if c.BEFORE:
        before = _BEFORE_SETUP.format(before=c.BEFORE)
        commands["nothing read, before"] = c.python_command(before + _RSS_BASE + "pass", path)
        commands[KEYGUARD_BEFORE] = c.python_command(before + _RSS_BASE + _RSS_SNIPPETS[KEYGUARD], path)
    runs = c.interleaved_commands(commands, rounds)
    base = c.Stats([float(m.peak_rss) for m in runs["nothing read (baseline)"]]).median
    out = {name: c.Stats([m.peak_rss - base for m in runs[name]]) for name in (KEYGUARD, JSON)}
    if c.BEFORE:
        base_before = c.Stats([float(m.peak_rss) for m in runs["nothing read, before"]]).median
        out[KEYGUARD_BEFORE] = c.Stats([m.peak_rss - base_before for m in runs[KEYGUARD_BEFORE]])
    return out


def in_process(path: str, rounds: int) -> dict[str, c.Stats]:
    from keyguard.sources import read_safetensors

    return c.interleaved(
        {
            KEYGUARD: lambda: read_safetensors(path),
            KEYGUARD_FALLBACK: lambda: _read_with_fallback(path),
            JSON: lambda: _json_loads(path),
            JSON_NO_GC: lambda: _json_loads_no_gc(path),
        },
        rounds,
    )


def cli(path: str, rounds: int) -> dict[str, list[c.Measured]]:
    return c.interleaved_commands(
        {
            "keyguard --version (start-up only)": [c.KEYGUARD_CLI, "--version"],
            "keyguard inspect FILE": [c.KEYGUARD_CLI, "inspect", path],
        },
        rounds,
    )


def torch_check(path: str) -> dict[str, object]:
    """Does ``keyguard inspect`` (or ``read_keys``) on a safetensors file import torch? Read two ways."""
    modules = c.imported_modules([c.KEYGUARD_CLI, "inspect", path])
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "transformers", "numpy", "safetensors"))
    code = "import sys, keyguard; keyguard.read_keys(sys.argv[1]); print(sorted(m for m in sys.modules))"
    listed = c.measure_command(c.python_command(code, path)).stdout
    in_sys_modules = "'torch'" in listed
    return {
        "modules_imported_by_inspect": len(modules),
        "heavy_modules_imported_by_inspect": heavy,
        "torch_in_sys_modules_after_read_keys": in_sys_modules,
    }


def traced_memory(path: str) -> list[list[str]]:
    """Python allocations of one call (tracemalloc): what the result keeps, and the peak while it is built."""
    from keyguard.sources import read_safetensors

    rows = []
    for name, fn in ((KEYGUARD, read_safetensors), (JSON, _json_loads)):
        gc.collect()
        tracemalloc.start()
        result = fn(path)
        retained, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del result
        rows.append([name, c.mb(retained), c.mb(peak)])
    return rows


def profile(path: str, top: int = 15) -> str:
    """cProfile of one ``read_safetensors`` call, top entries by own time."""
    from keyguard.sources import read_safetensors

    read_safetensors(path)
    profiler = cProfile.Profile()
    profiler.enable()
    read_safetensors(path)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _rows(results: dict[str, c.Stats]) -> list[list[str]]:
    base = results[JSON]
    base_no_gc = results[JSON_NO_GC]
    return [
        [
            name,
            c.ms(s.min),
            c.ms(s.median),
            f"{s.median / base.median:.2f}x",
            f"{s.median / base_no_gc.median:.2f}x",
        ]
        for name, s in results.items()
    ]


_HEADERS = ["contender", "min ms", "median ms", "vs json.loads", "vs json.loads gc off"]


def main(argv: list[str] | None = None) -> int:
    args = c.parse_args(__doc__.splitlines()[0], argv)
    rounds = QUICK_ROUNDS if args.quick else FULL_ROUNDS
    count = c.DEEPSEEK_LORA_TENSORS
    path = str(c.work_dir() / f"deepseek_v3_lora_{count}.safetensors")
    print(f"== bench_header: {count:,}-tensor safetensors header ({c.environment()}, quick={args.quick})")
    snapshot = c.code_snapshot()
    print(c.code_version())
    try:
        size = c.write_sparse_safetensors(path, c.deepseek_lora_entries(count))
        facts = check_reader(path, count)
        print(
            f"file: {size / 1e9:.1f} GB (sparse, {c.disk_usage(path) / 1e6:.1f} MB on disk),"
            f" header {facts['header_bytes']:,} bytes, {facts['tensors']:,} tensors,"
            f" keyguard fast path: {'yes' if facts['fast_path'] else 'NO (json fallback)'}"
        )

        cpu = fresh_subprocesses(path, count, rounds["subprocess"], clock="process_time")
        print(f"\nfresh subprocess, one call each, CPU time ({rounds['subprocess']} interleaved rounds):")
        print(c.table(_HEADERS, _rows(cpu)))

        sub = fresh_subprocesses(path, count, rounds["subprocess"])
        print(f"\nfresh subprocess, one call each, wall time ({rounds['subprocess']} interleaved rounds):")
        print(c.table(_HEADERS, _rows(sub)))

        memory_rss = peak_memory(path, rounds["cli"])
        print(f"\nextra peak RSS of a fresh process reading the header ({rounds['cli']} interleaved rounds):")
        print(
            c.table(
                ["contender", "min MB", "median MB", "vs json.loads"],
                [
                    [name, c.mb(s.min), c.mb(s.median), f"{s.median / memory_rss[JSON].median:.2f}x"]
                    for name, s in memory_rss.items()
                ],
            )
        )

        inproc = in_process(path, rounds["in_process"])
        print(f"\nin process ({rounds['in_process']} interleaved rounds, gc.collect() before each call):")
        print(c.table(_HEADERS, _rows(inproc)))

        runs = cli(path, rounds["cli"])
        print(f"\nCLI, whole process wall time ({rounds['cli']} interleaved rounds):")
        cli_rows = []
        for name, measured in runs.items():
            walls = c.Stats([m.wall for m in measured])
            rss = c.Stats([float(m.peak_rss) for m in measured])
            cli_rows.append([name, c.ms(walls.min), c.ms(walls.median), c.mb(rss.median)])
        print(c.table(["command", "min ms", "median ms", "peak RSS MB (median)"], cli_rows))

        memory = traced_memory(path)
        print("\nPython allocations of one call (tracemalloc, in process):")
        print(c.table(["contender", "result keeps MB", "peak while reading MB"], memory))

        imports = torch_check(path)
        heavy = imports["heavy_modules_imported_by_inspect"] or "none"
        print(
            f"\nimports: `keyguard inspect FILE` imports {imports['modules_imported_by_inspect']} modules;"
            f" torch/transformers/numpy/safetensors among them: {heavy};"
            f" torch in sys.modules after keyguard.read_keys: {imports['torch_in_sys_modules_after_read_keys']}"
        )

        slower = cpu[KEYGUARD].median > cpu[JSON].median or inproc[KEYGUARD].median > inproc[JSON].median
        target = "MET" if not slower else "NOT MET"
        print(f"\ntarget (keyguard median <= json.loads median, subprocess CPU and in-process): {target}")
        bigger = memory_rss[KEYGUARD].median > 1.5 * memory_rss[JSON].median
        print(f"target (extra peak RSS <= 1.5x json.loads): {'NOT MET' if bigger else 'MET'}")
        if slower or os.environ.get("KG_BENCH_PROFILE"):
            print("\ncProfile of one read_safetensors call (top entries by own time):")
            print(profile(path))
        c.warn_if_code_changed(snapshot)
        c.write_json(
            args.json,
            {
                "facts": facts,
                "subprocess_cpu": {k: v.samples for k, v in cpu.items()},
                "subprocess": {k: v.samples for k, v in sub.items()},
                "peak_rss_extra": {k: v.samples for k, v in memory_rss.items()},
                "in_process": {k: v.samples for k, v in inproc.items()},
                "cli": {k: [(m.wall, m.peak_rss) for m in v] for k, v in runs.items()},
                "imports": imports,
                "traced_memory": memory,
            },
        )
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
