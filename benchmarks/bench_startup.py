"""Start-up: CPU time of ``keyguard --version``, ``--help`` and ``diagnose`` on two small safetensors files.

Targets: ``--version`` and ``--help`` at most 60 ms of CPU, ``diagnose`` of two small files at most 150 ms (the
same with ``--format json`` is shown too, without a target: it serialises the report with pydantic), each a
whole fresh process (interpreter start-up included), and none of them importing torch. CPU time (user + system,
from ``wait4``) rather than wall time: other jobs on the machine disturb it far less. ``python -c pass`` is the
floor every command pays. With ``KG_BENCH_BEFORE=DIR`` the older keyguard in DIR runs too, in the same rounds.
keyguard's bytecode (and the older one's) is compiled into ``__pycache__`` first, as an installed package has it.
"""

from __future__ import annotations

import sys

import _common as c

TARGETS_MS = {"keyguard --version": 60.0, "keyguard --help": 60.0, "keyguard diagnose (2 small files)": 150.0}


def small_files(work: str) -> tuple[str, str]:
    checkpoint = f"{work}/startup_ck.safetensors"
    expected = f"{work}/startup_ex.safetensors"
    c.write_sparse_safetensors(checkpoint, {f"module.layers.{i}.w": ("F32", (4, 4)) for i in range(8)})
    c.write_sparse_safetensors(expected, {f"layers.{i}.w": ("F32", (4, 4)) for i in range(8)})
    return checkpoint, expected


def commands(checkpoint: str, expected: str) -> dict[str, list[str]]:
    runs = {
        "python -c pass (floor)": c.python_command("pass"),
        # what a diagnosis would pay if its report were a pydantic model (it was until issue 14): the import, and
        # building one validator (the first build imports importlib.metadata and scans for pydantic plugins);
        # --format json still pays them, to build the report's serializer
        "python: import pydantic's BaseModel": c.python_command("from pydantic import BaseModel"),
        "python: same + build one model's validator": c.python_command(
            "from pydantic import BaseModel\nclass M(BaseModel):\n    x: int\nM(x=1)"
        ),
        "keyguard --version": ["--version"],
        "keyguard --help": ["--help"],
        "keyguard diagnose (2 small files)": ["diagnose", checkpoint, "--expected", expected],
        "keyguard diagnose --format json (2 small files)": ["diagnose", checkpoint, "-e", expected, "--format", "json"],
    }
    out = {name: argv for name, argv in runs.items() if name.startswith("python")}
    for name, argv in runs.items():
        if name.startswith("keyguard"):
            out[name] = c.keyguard_cli(*argv)
            if c.BEFORE:
                out[f"{name}, before"] = c.keyguard_cli(*argv, before=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = c.parse_args(__doc__.splitlines()[0], argv)
    rounds = 5 if args.quick else 15
    print(f"== bench_startup ({c.environment()}, quick={args.quick})")
    print(c.code_version())
    work = str(c.work_dir())
    c.compile_bytecode(c.REPO, *([c.BEFORE] if c.BEFORE else []))
    checkpoint, expected = small_files(work)
    try:
        cpu = c.interleaved_cpu(commands(checkpoint, expected), rounds)
        rows = []
        for name, stats in cpu.items():
            target = TARGETS_MS.get(name)
            verdict = "" if target is None else ("met" if stats.median * 1000 <= target else "NOT MET")
            rows.append([name, c.ms(stats.min), c.ms(stats.median), f"{target:.0f}" if target else "", verdict])
        print(f"\nCPU time of a fresh process ({rounds} interleaved rounds):")
        print(c.table(["command", "min ms", "median ms", "target ms", "status"], rows))
        for name, code in (
            ("--version", "from keyguard.cli import main; main(['--version'])"),
            ("diagnose", f"from keyguard.cli import main; main(['diagnose', {checkpoint!r}, '-e', {expected!r}])"),
        ):
            try:
                modules = c.imported_modules(["-c", code])
            except RuntimeError:  # --version and findings exit through SystemExit / exit 1
                modules = set()
            heavy = sorted({m.split(".")[0] for m in modules} & {"torch", "numpy", "transformers", "pydantic"})
            print(f"`keyguard {name}` imports {len(modules)} modules; torch/numpy/transformers/pydantic: {heavy}")
        c.write_json(args.json, {name: s.samples for name, s in cpu.items()})
    finally:
        for path in (checkpoint, expected):
            c.os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
