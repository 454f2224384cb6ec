"""Run keyguard's benchmarks: every ``benchmarks/bench_*.py`` in name order, or the ones named.

    python benchmarks/run.py                  # all of them
    python benchmarks/run.py header           # just bench_header.py
    python benchmarks/run.py --quick          # fewer rounds, for a smoke run

Each benchmark runs in its own process (with this interpreter) and prints its own report. Not part of the tests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def available() -> dict[str, Path]:
    """``short name -> script``: ``header`` for ``bench_header.py``, in name order."""
    return {path.stem.removeprefix("bench_"): path for path in sorted(BENCH_DIR.glob("bench_*.py"))}


def main(argv: list[str] | None = None) -> int:
    scripts = available()
    parser = argparse.ArgumentParser(description="Run keyguard's benchmarks.")
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(scripts)}"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name.removeprefix("bench_").removesuffix(".py") not in scripts]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(scripts)}")
    chosen = [name.removeprefix("bench_").removesuffix(".py") for name in args.names] or list(scripts)
    failed = []
    for name in chosen:
        start = time.perf_counter()
        command = [sys.executable, str(scripts[name]), *(["--quick"] if args.quick else [])]
        code = subprocess.call(command, cwd=BENCH_DIR.parent)
        print(f"-- {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - start:.0f} s\n")
        sys.stdout.flush()
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
