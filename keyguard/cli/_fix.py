"""``keyguard fix CHECKPOINT --expected REFERENCE -o OUTPUT``: write a fixed checkpoint that loses nothing.

Exit codes: 0 the output matches the expected keys and shapes exactly; 1 an output was written but findings remain
(or nothing could be fixed); 2 bad input or a refused plan.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from keyguard.cli._options import add_source_options

HELP = "write a fixed checkpoint: apply the safe plan (or a reviewed one), atomically and verified"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fix", help=HELP, description=HELP + ".", parents=[common])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="safetensors file, sharded folder/index, or PyTorch pickle")
    p.add_argument("--expected", "-e", required=True, metavar="REFERENCE", help="what the model expects")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", metavar="OUTPUT", help="file (or folder, for sharded input) to write")
    target.add_argument(
        "--in-place", action="store_true", help="replace CHECKPOINT, through the same atomic, verified path"
    )
    p.add_argument("--plan", metavar="PLAN.json", help="apply this keyguard.plan/v1 file instead of the safe plan")
    p.add_argument(
        "--unsafe-fixes",
        action="store_true",
        help="also apply unsafe fixes (transposes, splits, fusions, inferred renames); each is listed",
    )
    p.add_argument("--drop-unexpected", action="store_true", help="leave out keys the model does not expect (listed)")
    p.add_argument("--dry-run", action="store_true", help="show what would be written; write nothing")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", help="keys to leave out of the diagnosis")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, and only the summary")
    add_source_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keyguard._exceptions import PlanError
    from keyguard.engine import diagnose
    from keyguard.fixes import Plan
    from keyguard.fixes._writer import write_fixed
    from keyguard.sources import read_keys

    keys = read_keys(args.checkpoint, container=args.container)
    if keys.format not in ("safetensors", "safetensors-sharded", "torch-pickle"):
        raise PlanError(f"{args.checkpoint}: keyguard fix writes safetensors files; a {keys.format} source has no data")
    report = diagnose(keys, args.expected, ignore=args.ignore, architecture=args.architecture)
    if args.plan:
        plan = Plan.load(args.plan)
        if not args.unsafe_fixes:
            safe = plan.at_least("safe")
            skipped = len(plan.rules) - len(safe.rules)
            if skipped:
                print(f"note: {skipped} rule(s) of {args.plan} are not safe and were not applied (--unsafe-fixes)")
            plan = safe
    else:
        plan = report.unsafe_plan if args.unsafe_fixes else report.plan
    drop = (
        [k for f in report.findings if f.kind == "unexpected" for k in f.checkpoint_keys]
        if args.drop_unexpected
        else []
    )
    output = _output_path(args, keys)
    if args.dry_run:
        from keyguard.fixes._output_plan import plan_output

        _, changes = plan_output(keys, plan, drop=drop)
        print(_changes_table(changes, quiet=args.quiet, dry_run=True))
        return 0
    result = write_fixed(keys, plan, output, drop=drop, progress=False if args.quiet else None)
    print(_changes_table(result.changes, quiet=args.quiet, dry_run=False))
    print(f"\nwrote {output} ({result.bytes_written:,} bytes, verified)")
    after = diagnose(output, args.expected, ignore=args.ignore, architecture=args.architecture)
    remaining = [f for f in after.findings if f.kind != "dtype_mismatch"]
    if not remaining:
        print("the output matches the expected keys and shapes exactly")
        return 0
    print("\nfindings that remain in the output:\n")
    print(after.render("table"))
    return 1


def _output_path(args: argparse.Namespace, keys: Any) -> str:
    if args.in_place:
        location: str = keys.location or args.checkpoint
        if keys.format == "safetensors-sharded":
            return os.path.dirname(location) if os.path.isfile(location) else location
        if keys.format != "safetensors":
            from keyguard._exceptions import PlanError

            raise PlanError(
                f"{args.checkpoint}: --in-place needs a safetensors checkpoint (a pickle becomes a new file)"
            )
        return location
    out: str = args.output
    return out


def _changes_table(changes: list[Any], *, quiet: bool, dry_run: bool) -> str:
    from tabulate import tabulate

    from keyguard._patterns import KeyGroup, collapse

    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    verb = "would be" if dry_run else "were"
    lines = [
        ", ".join(f"{n:,} {verb} {action}" for action, n in sorted(counts.items())) or "no tensors",
    ]
    if quiet:
        return "\n".join(lines)
    renamed = [c for c in changes if c.action == "renamed"]
    if renamed:
        rows = []
        groups: list[KeyGroup[None]] = collapse([c.source for c in renamed])
        new_groups: list[KeyGroup[None]] = collapse([c.targets[0] for c in renamed])
        for old, new in zip(groups[:20], new_groups[:20]):
            rows.append([old.pattern, new.pattern, f"x{old.count:,}"])
        lines.append("")
        lines.append(tabulate(rows, headers=["renamed from", "to", "keys"], tablefmt="simple"))
        if len(groups) > 20:
            lines.append(f"... {len(groups) - 20} more patterns")
    for action in ("transposed", "split", "fused"):
        for c in (c for c in changes if c.action == action):
            lines.append(f"{action} (unsafe fix, data changed): {c.source} -> {', '.join(c.targets)}")
    dropped = [c.source for c in changes if c.action == "dropped"]
    if dropped:
        lines.append("")
        lines.append(f"dropped {len(dropped):,} key(s) (--drop-unexpected):")
        lines.extend(f"  {k}" for k in dropped)
    return "\n".join(lines)
