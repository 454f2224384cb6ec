"""Explore the restructure strategies at scale: collect, minimise and print every distinct counterexample, and
measure coverage per conversion kind. A tool, not a test (pytest does not collect it).

    python tests/engine/explore_restructure.py run --examples 5000 --seed 1 --out run1.pkl
    python tests/engine/explore_restructure.py minimise run1.pkl run2.pkl --out min.pkl
    python tests/engine/explore_restructure.py show min.pkl
    python tests/engine/explore_restructure.py coverage --examples 300

Counterexamples are grouped by *signature*: the invariant broken and what in the report broke it (finding kind,
applicability, rule types, evidence). Minimising removes keys (an expected key with its checkpoint keys, or one
checkpoint key) while the signature still shows.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _restructure as R
import _restructure_checks as K
from hypothesis import HealthCheck, Phase, given, seed, settings

Signature = tuple[str, str]


def _run(examples: int, run_seed: int, kinds: Sequence[str] | None) -> dict[str, Any]:
    counts: Counter[Signature] = Counter()
    samples: dict[Signature, list[R.Case]] = {}
    cases = Counter[str]()

    @seed(run_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(R.cases(kinds=tuple(kinds)) if kinds else R.cases())
    def body(case: R.Case) -> None:
        cases["all"] += 1
        found = {v.signature for v in K.violations(case, K.diagnose(case))}
        if found:
            cases["failing"] += 1
        for signature in found:
            counts[signature] += 1
            bucket = samples.setdefault(signature, [])
            if len(bucket) < 3:
                bucket.append(case)

    body()
    return {"counts": counts, "samples": samples, "cases": cases}


def _measure(strategy: Any, examples: int, run_seed: int) -> tuple[int, K.Coverage]:
    """Coverage summed over ``examples`` cases drawn from ``strategy``."""
    total = K.Coverage()
    count = [0]

    @seed(run_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def measure(case: R.Case) -> None:
        count[0] += 1
        total.add(K.coverage(case, K.diagnose(case)))

    measure()
    return count[0], total


def _atoms(case: R.Case) -> list[tuple[str, str]]:
    return [*(("e", k) for k in case.expected), *(("c", k) for k in case.checkpoint)]


def _without(case: R.Case, atoms: Sequence[tuple[str, str]]) -> R.Case:
    gone_e = {k for kind, k in atoms if kind == "e"}
    gone_c = {k for kind, k in atoms if kind == "c"}
    gone_c |= {k for k, t in case.truth.items() if t in gone_e}
    expected = {k: v for k, v in case.expected.items() if k not in gone_e}
    checkpoint = {k: v for k, v in case.checkpoint.items() if k not in gone_c}
    truth = {k: t for k, t in case.truth.items() if k in checkpoint}
    return replace(case, expected=expected, checkpoint=checkpoint, truth=truth)


def minimise(case: R.Case, keeps: Callable[[R.Case], bool]) -> R.Case:
    """ddmin over keys: drop chunks of atoms while ``keeps`` holds, halving the chunk size."""
    atoms = _atoms(case)
    size = max(1, len(atoms) // 2)
    while True:
        start = 0
        changed = False
        while start < len(atoms):
            chunk = atoms[start : start + size]
            trial = _without(case, chunk)
            if trial.expected and trial.checkpoint and keeps(trial):
                case = trial
                atoms = _atoms(case)
                changed = True
            else:
                start += size
        if size == 1 and not changed:
            break
        size = max(1, size // 2)
    if case.ordered and keeps(replace(case, ordered=False)):
        case = replace(case, ordered=False)
    return case


def _shows(signature: Signature) -> Callable[[R.Case], bool]:
    def keeps(case: R.Case) -> bool:
        try:
            return signature in {v.signature for v in K.violations(case, K.diagnose(case))}
        except Exception:  # a crash is not the same counterexample
            return False

    return keeps


def code(case: R.Case) -> str:
    """The case as an ``explicit(...)`` call."""

    def shape(info: Any) -> str:
        return repr(tuple(info.shape))

    lines = ["explicit(", "    expected={"]
    lines += [f"        {k!r}: {shape(v)}," for k, v in case.expected.items()]
    lines += ["    },", "    checkpoint={"]
    lines += [f"        {k!r}: {shape(v)}," for k, v in case.checkpoint.items()]
    lines += ["    },", "    truth={"]
    lines += [f"        {k!r}: {t!r}," for k, t in case.truth.items() if t != (k if k in case.expected else None)]
    lines += ["    },"]
    if case.ordered:
        lines += ["    ordered=True,"]
    lines += [")"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--examples", type=int, default=2000)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--kinds", nargs="*")
    run.add_argument("--out", required=True)
    mini = sub.add_parser("minimise")
    mini.add_argument("runs", nargs="+")
    mini.add_argument("--out", required=True)
    show = sub.add_parser("show")
    show.add_argument("file")
    cov = sub.add_parser("coverage")
    cov.add_argument("--examples", type=int, default=300)
    cov.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "run":
        start = time.perf_counter()
        result = _run(args.examples, args.seed, args.kinds)
        result["seconds"] = time.perf_counter() - start
        Path(args.out).write_bytes(pickle.dumps(result))
        print(f"{result['cases']['all']} cases, {result['cases']['failing']} failing, {result['seconds']:.0f} s")
        for signature, count in result["counts"].most_common():
            print(f"{count:6} {signature}")
    elif args.command == "minimise":
        counts: Counter[Signature] = Counter()
        samples: dict[Signature, list[R.Case]] = {}
        total = Counter[str]()
        for name in args.runs:
            result = pickle.loads(Path(name).read_bytes())
            counts.update(result["counts"])
            total.update(result["cases"])
            for signature, bucket in result["samples"].items():
                samples.setdefault(signature, []).extend(bucket)
        minimal: dict[Signature, R.Case] = {}
        for signature, _ in counts.most_common():
            keeps = _shows(signature)
            best = min(
                (minimise(case, keeps) for case in samples[signature][:3]),
                key=lambda c: len(c.expected) + len(c.checkpoint),
            )
            minimal[signature] = best
            print(f"{counts[signature]:6} {signature}: {len(best.expected)}+{len(best.checkpoint)} keys", flush=True)
        Path(args.out).write_bytes(pickle.dumps({"counts": counts, "minimal": minimal, "cases": total}))
    elif args.command == "show":
        data = pickle.loads(Path(args.file).read_bytes())
        for signature, case in data["minimal"].items():
            print(f"# {data['counts'][signature]} x {signature}")
            for violation in K.violations(case, K.diagnose(case)):
                if violation.signature == signature:
                    print(f"#   {violation.message}")
            print(code(case))
            print()
    elif args.command == "coverage":
        rows = []
        for kind in [*R.CONVERSIONS, "mixed"]:
            row: list[tuple[int, K.Coverage]] = []
            for noise in (False, True):
                kinds = tuple(R.CONVERSIONS) if kind == "mixed" else (kind,)
                strategy = R.cases(kinds=kinds, max_conversions=3 if kind == "mixed" else 1, noise=noise)
                n, total_cov = _measure(strategy, args.examples, args.seed)
                row.append((n, total_cov))
            rows.append((kind, row))
        print("| conversion | cases | keys to rename | safe right | safe+unsafe right | explained | wrong |", end="")
        print(" with noise: keys | safe | safe+unsafe | explained | wrong |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for kind, row in rows:
            cells = [kind, str(row[0][0])]
            for _, c in row:
                need = c.need or 1
                cells += [f"{c.need:,}", f"{c.safe / need:.0%}", f"{c.unsafe / need:.0%}", f"{c.explained / need:.0%}"]
                cells.append(f"{c.wrong:,}")
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
