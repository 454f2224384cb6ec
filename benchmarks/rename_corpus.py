"""Score keyguard on the corpus of real renamed-layer conversions (tests/corpus).

    python benchmarks/rename_corpus.py                    # every case: a table, the totals, the wrong mappings
    python benchmarks/rename_corpus.py segformer_stages   # the cases named (or matching a glob: 'timm_*')
    python benchmarks/rename_corpus.py --write            # also write plans with data rules through write_fixed
    python benchmarks/rename_corpus.py --notes            # each case's rename shape and where its truth comes from
    python benchmarks/rename_corpus.py pvt_v2_stages --show   # also keyguard's own report for each case
    python benchmarks/rename_corpus.py --json out.json    # the figures as JSON ('-': stdout)
    python benchmarks/rename_corpus.py --markdown         # the tables as Markdown

Columns: ``need`` checkpoint keys that need a rename or a data change; ``safe``/``unsafe`` of those mapped right by
the safe plan / the unsafe plan (safe rules included); ``WRONG s/u/k`` keys put under another expected key than
their truth by the safe plan / the unsafe plan / kept silently as an exact match: the one failure keyguard must
never have; ``expl`` keys whose right target the report offers somewhere; ``hints`` right/shown "closest
candidates" pairs; ``value`` expected tensors equal by value after the unsafe plan, of those it fills; ``silent``
expected tensors left with the right shape but other data (they would load without an error). Not a test: nothing
here asserts; tests/engine/test_corpus.py holds the invariant.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _ratio(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="CASE", help="cases to run (names or globs; default: all)")
    parser.add_argument("--write", action="store_true", help="write plans with data rules through write_fixed")
    parser.add_argument("--notes", action="store_true", help="print each case's rename shape and truth source")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON ('-': stdout)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--show", action="store_true", help="also print keyguard's report for each case")
    args = parser.parse_args(argv)

    from corpus import CASES, EXTRA
    from corpus.evaluate import run, totals
    from tabulate import tabulate
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    chosen = [n for n in CASES if not args.names or any(fnmatch.fnmatch(n, p) for p in args.names)]
    chosen += [n for n in EXTRA if args.names and n in args.names]  # named exactly: kept out of the totals otherwise
    if not chosen:
        parser.error(f"no case matches {args.names}; cases: {', '.join(CASES)}")
    rows, scores, cases = [], [], []
    for name in chosen:
        case = {**CASES, **EXTRA}[name]()
        report, score = run(case, write=args.write)
        if args.show:
            print(f"==== {name}: {case.note}\n{report.render('table')}\n")
        scores.append(score)
        cases.append(case)
        rows.append(
            [
                name,
                score.checkpoint_keys,
                score.need,
                score.safe_right,
                score.unsafe_right,
                f"{score.safe_wrong}/{score.unsafe_wrong}/{score.kept_wrong}",
                score.explained,
                f"{score.hints_right}/{score.hints}",
                f"{score.value_right}/{score.value_filled}",
                score.silent,
                (score.written or "") + (f" {score.error}" if score.error else ""),
            ]
        )
    total = totals(scores)
    rows.append(
        [
            "TOTAL",
            int(total["checkpoint_keys"]),
            int(total["need"]),
            f"{int(total['safe_right'])} ({_ratio(total['safe_right'], total['need'])})",
            f"{int(total['unsafe_right'])} ({_ratio(total['unsafe_right'], total['need'])})",
            f"{int(total['safe_wrong'])}/{int(total['unsafe_wrong'])}/{int(total['kept_wrong'])}",
            f"{int(total['explained'])} ({_ratio(total['explained'], total['need'])})",
            f"{int(total['hints_right'])}/{int(total['hints'])}",
            f"{int(total['value_right'])}/{int(total['value_filled'])}",
            int(total["silent"]),
            "",
        ]
    )
    headers = ["case", "keys", "need", "safe", "unsafe", "WRONG s/u/k", "expl", "hints", "value", "silent", "write"]
    print(f"keyguard {_commit()} on {len(chosen)} corpus case(s)\n")
    style = "github" if args.markdown else "simple"
    print(tabulate(rows, headers=headers, tablefmt=style))
    broken = [s for s in scores if s.invariant_broken]
    print(
        f"\n{len(broken)} case(s) break the invariant (a key under a wrong expected key)"
        + (": " + ", ".join(s.name for s in broken) if broken else "")
    )
    for score in broken:
        print(f"\n{score.name}:" + (f" {score.error}" if score.error else ""))
        for wrong in score.wrong[:8]:
            print(f"  [{wrong.plan}] {wrong.checkpoint} -> {wrong.got}   (truth: {wrong.truth or 'no counterpart'})")
        if len(score.wrong) > 8:
            print(f"  ... and {len(score.wrong) - 8} more")
    if args.notes:
        print()
        print(
            tabulate(
                [[c.name, ", ".join(c.shapes), c.note, c.source] for c in cases],
                headers=["case", "shapes", "rename", "truth from"],
                tablefmt=style,
                maxcolwidths=None if args.markdown else [28, 18, 60, 50],
            )
        )
    if args.json:
        document: dict[str, Any] = {
            "commit": _commit(),
            "cases": [
                {**s.as_dict(), "shapes": list(c.shapes), "source": c.source, "note": c.note}
                for s, c in zip(scores, cases)
            ],
            "totals": total,
        }
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
