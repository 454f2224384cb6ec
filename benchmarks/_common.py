"""Helpers shared by the benchmark scripts: timing, fresh subprocesses, peak RSS, synthetic checkpoints.

Nothing here is part of keyguard or its test suite. The machines these run on are small and noisy, so every
measurement is taken against a baseline in the same run, the contenders are interleaved, and results are given as
min and median over several rounds.
"""

from __future__ import annotations

import argparse
import ast
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "_work"
#: The interpreter running the benchmarks (the project's virtualenv); subprocesses use the same one.
PYTHON = os.path.abspath(sys.executable)  # not resolved: a virtualenv's python is a symlink
#: The ``keyguard`` console script next to that interpreter.
KEYGUARD_CLI = str(Path(PYTHON).with_name("keyguard"))

_TIME_MARKER = "KG_BENCH_SECONDS="

Entries = dict[str, tuple[str, tuple[int, ...]]]


# --------------------------------------------------------------------------------------------------- statistics


@dataclass
class Stats:
    """Samples of one measurement (seconds or bytes), with the figures reported."""

    samples: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)


def _round_order(names: Sequence[str], round_index: int) -> list[str]:
    """Rotate the order every round so that no contender always runs first (or always right after another)."""
    shift = round_index % len(names)
    order = list(names[shift:]) + list(names[:shift])
    return order if round_index % 2 == 0 else order[::-1]


def interleaved(
    contenders: Mapping[str, Callable[[], object]], rounds: int, *, warmup: int = 1, collect: bool = True
) -> dict[str, Stats]:
    """Time each callable ``rounds`` times in this process, interleaved; returns seconds per call.

    ``collect`` runs ``gc.collect()`` before every call (outside the timing) so each call starts from the same
    heap state instead of paying for the previous call's garbage.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    results = {name: Stats() for name in names}
    for round_index in range(rounds):
        for name in _round_order(names, round_index):
            fn = contenders[name]
            if collect:
                gc.collect()
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
            del result
            results[name].samples.append(elapsed)
    return results


# ------------------------------------------------------------------------------------------ fresh subprocesses


def time_snippet(
    setup: str, stmt: str, *, python_args: Sequence[str] = (), check: str = "", clock: str = "perf_counter"
) -> float:
    """Run ``setup`` then ``stmt`` in a fresh interpreter; return the seconds ``stmt`` took, as the child measured.

    The child times only ``stmt`` (imports in ``setup`` are not counted) with ``time.perf_counter`` (wall time) or
    ``time.process_time`` (``clock="process_time"``: CPU time, which other jobs on the machine disturb far less).
    ``check`` runs after the timing (e.g. an ``assert`` on the result) so a wrong answer fails loudly instead of
    looking fast.
    """
    body = "\n".join(
        [
            setup,
            "import time as _kg_time",
            f"_kg_t0 = _kg_time.{clock}()",
            stmt,
            f"_kg_t1 = _kg_time.{clock}()",
            check,
            f"print({_TIME_MARKER!r} + repr(_kg_t1 - _kg_t0))",
        ]
    )
    proc = subprocess.run([PYTHON, *python_args, "-c", body], capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark snippet failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(_TIME_MARKER):
            return float(line[len(_TIME_MARKER) :])
    raise RuntimeError(f"benchmark snippet printed no timing:\n{proc.stdout[-2000:]}")


def interleaved_snippets(
    snippets: Mapping[str, tuple[str, str]], rounds: int, *, check: str = "", clock: str = "perf_counter"
) -> dict[str, Stats]:
    """``time_snippet`` for each ``name -> (setup, stmt)``, one fresh process per run, interleaved."""
    names = list(snippets)
    results = {name: Stats() for name in names}
    for round_index in range(rounds):
        for name in _round_order(names, round_index):
            setup, stmt = snippets[name]
            results[name].samples.append(time_snippet(setup, stmt, check=check, clock=clock))
    return results


def cpu_seconds(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> float:
    """User + system CPU seconds of a fresh process running ``argv`` (output discarded; any exit code)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.chdir(REPO)
            os.execve(argv[0], list(argv), {**os.environ, **(env or {})})
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) == 127:
        raise RuntimeError(f"could not run {' '.join(argv)}")
    return usage.ru_utime + usage.ru_stime


def interleaved_cpu(commands: Mapping[str, Sequence[str]], rounds: int) -> dict[str, Stats]:
    """``cpu_seconds`` for each ``name -> argv``, interleaved over ``rounds``."""
    names = list(commands)
    results = {name: Stats() for name in names}
    for round_index in range(rounds):
        for name in _round_order(names, round_index):
            results[name].samples.append(cpu_seconds(commands[name]))
    return results


# A tiny wrapper interpreter (-I -S: no site, ~5 MB) forks and execs the command and reports the child's peak
# RSS from wait4's rusage. The wrapper matters: on Linux a child's ru_maxrss includes the peak RSS of the process
# image it exec'ed from, and subprocess spawns with vfork, so measuring straight from a large benchmark process
# reports the parent's own peak for every child (a 600 MB parent makes "python -c pass" look like 611 MB).
_WRAPPER = """\
import os, sys, time
out = sys.argv[1]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(out, "w") as f:
    f.write(repr((os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, wall, usage.ru_utime + usage.ru_stime)))
"""


@dataclass(frozen=True)
class Measured:
    """One run of a command: exit code, peak resident set size, wall time, its output, and its CPU time."""

    returncode: int
    peak_rss: int  # bytes
    wall: float  # seconds, from fork to exit as seen by the wrapper
    stdout: str
    stderr: str
    cpu: float = 0.0  # user + system seconds of the command (wait4)


def measure_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None, check: bool = True) -> Measured:
    """Run ``argv`` in a fresh process; return its exit code, peak RSS (VmHWM via wait4) and wall time."""
    argv = list(argv)
    if not os.path.isabs(argv[0]):
        raise ValueError(f"give the program as an absolute path, not {argv[0]!r}")
    with tempfile.NamedTemporaryFile("r", suffix=".rusage", delete=False) as report:
        report_path = report.name
    try:
        proc = subprocess.run(
            [PYTHON, "-I", "-S", "-c", _WRAPPER, report_path, *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=None if env is None else {**os.environ, **env},
            check=False,
        )
        with open(report_path) as f:
            text = f.read()
    finally:
        os.unlink(report_path)
    if not text:
        raise RuntimeError(f"measurement wrapper failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    returncode, peak, wall, cpu = ast.literal_eval(text)
    result = Measured(int(returncode), int(peak), float(wall), proc.stdout, proc.stderr, float(cpu))
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def interleaved_commands(commands: Mapping[str, Sequence[str]], rounds: int) -> dict[str, list[Measured]]:
    """``measure_command`` for each ``name -> argv``, interleaved over ``rounds``."""
    names = list(commands)
    results: dict[str, list[Measured]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in _round_order(names, round_index):
            results[name].append(measure_command(commands[name]))
    return results


def python_command(code: str, *args: str) -> list[str]:
    """``python -c code args...`` with the benchmark interpreter."""
    return [PYTHON, "-c", code, *args]


def imported_modules(argv_after_python: Sequence[str]) -> set[str]:
    """Every module a ``python -X importtime ...`` run imports (read from its import-time report)."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", *argv_after_python], capture_output=True, text=True, cwd=REPO, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"-X importtime run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                modules.add(name)
    return modules


# ------------------------------------------------------------------------------------------------ checkpoints

HIDDEN = 7168  # DeepSeek-V3 hidden size
MOE_INTERMEDIATE = 2048  # per routed expert, and the one shared expert
DENSE_INTERMEDIATE = 18432  # the dense MLP of layers 0..2
N_LAYERS = 61
FIRST_MOE_LAYER = 3
N_EXPERTS = 256
LORA_RANK = 16
DEEPSEEK_LORA_TENSORS = 94_000

# (module path under the layer, in_features, out_features); DeepSeek-V3 MLA attention.
_ATTENTION = (
    ("self_attn.q_a_proj", HIDDEN, 1536),
    ("self_attn.q_b_proj", 1536, 128 * 192),
    ("self_attn.kv_a_proj_with_mqa", HIDDEN, 512 + 64),
    ("self_attn.kv_b_proj", 512, 128 * (128 + 128)),
    ("self_attn.o_proj", 128 * 128, HIDDEN),
)


def _mlp(prefix: str, intermediate: int) -> tuple[tuple[str, int, int], ...]:
    return (
        (f"{prefix}.gate_proj", HIDDEN, intermediate),
        (f"{prefix}.up_proj", HIDDEN, intermediate),
        (f"{prefix}.down_proj", intermediate, HIDDEN),
    )


def _lora(module: str, fan_in: int, fan_out: int, rank: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield f"base_model.model.{module}.lora_A.weight", (rank, fan_in)
    yield f"base_model.model.{module}.lora_B.weight", (fan_out, rank)


def deepseek_lora_entries(total: int = DEEPSEEK_LORA_TENSORS, *, rank: int = LORA_RANK) -> Entries:
    """A DeepSeek-V3-style LoRA adapter's tensors, ``name -> ("BF16", shape)``, exactly ``total`` of them.

    Routed experts of the 58 MoE layers (3..60) x 256 experts x gate/up/down x lora_A/B give 89,088 tensors; then
    the attention (q_a, q_b, kv_a, kv_b, o) and MLP LoRA of layers 0..60 (the dense MLP of layers 0..2, the shared
    expert of the MoE layers) add 976. DeepSeek-V3 has no more LoRA targets, so the rest up to ``total`` are
    numbered extra shared experts of the MoE layers (``mlp.shared_experts.{k}.*``, k = 1, 2, ...), layer by layer,
    which keeps the key lengths and the shape mix of the real thing.
    """
    entries: Entries = {}

    def add(module: str, fan_in: int, fan_out: int) -> bool:
        for name, shape in _lora(module, fan_in, fan_out, rank):
            if len(entries) >= total:
                return False
            entries[name] = ("BF16", shape)
        return len(entries) < total

    for layer in range(FIRST_MOE_LAYER, N_LAYERS):
        for expert in range(N_EXPERTS):
            for module, fan_in, fan_out in _mlp(f"model.layers.{layer}.mlp.experts.{expert}", MOE_INTERMEDIATE):
                if not add(module, fan_in, fan_out):
                    return entries
    for layer in range(N_LAYERS):
        dense = layer < FIRST_MOE_LAYER
        mlp = _mlp(
            f"model.layers.{layer}.mlp" if dense else f"model.layers.{layer}.mlp.shared_experts",
            DENSE_INTERMEDIATE if dense else MOE_INTERMEDIATE,
        )
        for module, fan_in, fan_out in (*((f"model.layers.{layer}.{m}", i, o) for m, i, o in _ATTENTION), *mlp):
            if not add(module, fan_in, fan_out):
                return entries
    extra = 1
    while True:
        for layer in range(FIRST_MOE_LAYER, N_LAYERS):
            prefix = f"model.layers.{layer}.mlp.shared_experts.{extra}"
            for module, fan_in, fan_out in _mlp(prefix, MOE_INTERMEDIATE):
                if not add(module, fan_in, fan_out):
                    return entries
        extra += 1


def write_sparse_safetensors(path: str | os.PathLike[str], entries: Mapping[str, tuple[str, Sequence[int]]]) -> int:
    """Write a canonical header for ``entries`` and leave the data a sparse hole; returns the file size."""
    from keyguard._st_write import encode_header, layout

    rows = layout(entries)
    header = encode_header(rows)
    total = len(header) + (rows[-1][4] if rows else 0)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(total)
    return total


def write_filled_safetensors(
    path: str | os.PathLike[str],
    entries: Mapping[str, tuple[str, Sequence[int]]],
    *,
    chunk: int = 8 * 1024 * 1024,
) -> int:
    """Write a real (non-sparse) safetensors file, data from a repeating byte pattern, ``chunk`` bytes at a time."""
    from keyguard._st_write import encode_header, layout

    rows = layout(entries)
    header = encode_header(rows)
    data_size = rows[-1][4] if rows else 0
    pattern = bytes(range(256)) * (chunk // 256)
    with open(path, "wb") as f:
        f.write(header)
        remaining = data_size
        while remaining:
            piece = pattern if remaining >= len(pattern) else pattern[:remaining]
            f.write(piece)
            remaining -= len(piece)
        f.flush()
        os.fsync(f.fileno())
    return len(header) + data_size


def header_length(path: str | os.PathLike[str]) -> int:
    """The JSON header's length in bytes (the first 8 bytes of a safetensors file)."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")


def work_dir() -> Path:
    """``benchmarks/_work`` (git-ignored), created if needed."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    return WORK_DIR


def disk_usage(path: str | os.PathLike[str]) -> int:
    """Bytes the file really occupies on disk (a sparse file occupies less than its size)."""
    return os.stat(path).st_blocks * 512


# ------------------------------------------------------------------------------------------------- reporting


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return parser.parse_args(argv)


#: ``KG_BENCH_BEFORE=DIR`` (a checkout of an older keyguard, e.g. ``git archive COMMIT | tar -x -C DIR``) adds
#: that version as a contender, run by the same interpreter, so "before" and "after" come from the same run.
BEFORE = os.environ.get("KG_BENCH_BEFORE") or None

_BEFORE_CLI = """\
import sys
# the editable install's finder would import this checkout's keyguard: leave it out for the older tree
sys.meta_path = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
sys.path.insert(0, sys.argv.pop(1))
from keyguard.cli import main
assert main.__code__.co_filename.startswith(sys.path[0]), main.__code__.co_filename
sys.exit(main(sys.argv[1:]))
"""


def compile_bytecode(*roots: str | Path) -> None:
    """Write the bytecode of the keyguard packages under ``roots`` into their ``__pycache__`` (git-ignored).

    keyguard is installed in editable mode and the environment may set ``PYTHONDONTWRITEBYTECODE=1``: then no
    process ever writes its bytecode, and every fresh process compiles keyguard from source (70 to 120 ms of
    start-up that a user of an installed wheel, whose bytecode pip writes at install time, never pays). Compiling it
    once before timing makes the processes measure what an installed package costs; stale files are harmless
    (Python checks the source's mtime and recompiles in memory).
    """
    for root in roots:
        package = Path(root) / "keyguard"
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(package)], check=True, cwd=REPO)


def keyguard_cli(*args: str, before: bool = False) -> list[str]:
    """argv of ``keyguard ARGS``; with ``before``, of the older keyguard in ``KG_BENCH_BEFORE``."""
    if before:
        if BEFORE is None:
            raise ValueError("set KG_BENCH_BEFORE to an older checkout first")
        return [PYTHON, "-c", _BEFORE_CLI, BEFORE, *args]
    return [KEYGUARD_CLI, *args]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _is_number(text: str) -> bool:
    stripped = text.replace(",", "").replace("x", "").replace("%", "").replace("+", "").strip()
    try:
        float(stripped)
    except ValueError:
        return text in ("", "-")
    return True


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f}"


def write_json(path: str | None, figures: object) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def code_snapshot() -> dict[str, str]:
    """``path -> sha1`` of every file of the keyguard package in the working tree."""
    package = REPO / "keyguard"
    return {
        str(file.relative_to(REPO)): hashlib.sha1(file.read_bytes()).hexdigest()
        for file in sorted(package.rglob("*"))
        if file.is_file() and "__pycache__" not in file.parts
    }


def code_version() -> str:
    """Which keyguard code is measured: the commit, and which package files differ from it."""
    commit = _git("rev-parse", "--short", "HEAD").strip() or "unknown commit"
    changed = [line[3:] for line in _git("status", "--porcelain", "--", "keyguard").splitlines()]
    if not changed:
        return f"keyguard at {commit}, clean"
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    return f"keyguard at {commit} + uncommitted changes to {shown}"


def warn_if_code_changed(before: Mapping[str, str]) -> None:
    """Say which files of keyguard changed while the benchmark ran (others may be editing the tree)."""
    after = code_snapshot()
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        print(f"WARNING: keyguard files changed during the run (figures may mix versions): {shown}")


def environment() -> str:
    """One line saying where the figures come from."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    when = time.strftime("%Y-%m-%d %H:%M")
    return f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {when}, load average {load}"
