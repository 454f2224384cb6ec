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
    from keyguard._progress import Progress
    from keyguard.cli._screen import screen

    out = screen(args)
    # reading a large pickle, diagnosing millions of keys, writing and verifying: each phase shows on a terminal
    with Progress(enabled=False if args.quiet or args.dry_run else None, color=out.color) as progress:
        return _run(args, progress, out.width)


def _run(args: argparse.Namespace, progress: Any, width: int) -> int:
    from keyguard._exceptions import PlanError
    from keyguard.engine import diagnose
    from keyguard.fixes import Plan
    from keyguard.fixes._writer import write_fixed
    from keyguard.sources import read_keys

    progress.phase("reading")
    keys = read_keys(args.checkpoint, container=args.container)
    if keys.format not in ("safetensors", "safetensors-sharded", "torch-pickle"):
        raise PlanError(f"{args.checkpoint}: keyguard fix writes safetensors files; a {keys.format} source has no data")
    progress.phase("diagnosing")
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
        print(_changes_table(changes, quiet=args.quiet, dry_run=True, width=width))
        return 0
    result = write_fixed(keys, plan, output, drop=drop, progress=progress)
    progress.phase("checking")
    after = diagnose(output, args.expected, ignore=args.ignore, architecture=args.architecture)
    progress.close()  # the display ends before the summary is printed
    print(_changes_table(result.changes, quiet=args.quiet, dry_run=False, width=width))
    print(f"\nwrote {output} ({result.bytes_written:,} bytes, verified)")
    remaining = [f for f in after.findings if f.kind != "dtype_mismatch"]
    if not remaining:
        print("the output matches the expected keys and shapes exactly")
        return 0
    print("\nfindings that remain in the output:\n")
    print(after.render("table", width=width))
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


def _changes_table(changes: list[Any], *, quiet: bool, dry_run: bool, width: int = 100) -> str:
    from keyguard._console import clip, wrap
    from keyguard._patterns import KeyGroup, collapse

    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    labels = {"kept": "unchanged"}  # the other actions name themselves: renamed, transposed, split, fused
    parts = ", ".join(f"{n:,} {labels.get(a, a)}" for a, n in sorted(counts.items()) if a != "dropped")
    total = sum(n for action, n in counts.items() if action != "dropped")
    text = f"{total:,} tensor{'s' if total != 1 else ''} {'would be written' if dry_run else 'written'}"
    text += f" ({parts})" if parts else ""
    if counts.get("dropped"):
        text += f", {counts['dropped']:,} {'would be dropped' if dry_run else 'dropped'}"
    lines = wrap(text, width, hang=2) if changes else ["no tensors"]
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
        lines.extend(_renamed_table(rows, width))
        if len(groups) > 20:
            lines.append(f"... {len(groups) - 20} more patterns")
    for action in ("transposed", "split", "fused"):
        for c in (c for c in changes if c.action == action):
            what = c.source if list(c.targets) == [c.source] else f"{c.source} -> {', '.join(c.targets)}"
            lines.extend(wrap(f"{action} (unsafe fix, data changed): {what}", width, hang=2))
    dropped = [c.source for c in changes if c.action == "dropped"]
    if dropped:
        lines.append("")
        lines.append(f"dropped {len(dropped):,} key{'s' if len(dropped) != 1 else ''} (--drop-unexpected):")
        lines.extend("  " + clip(k, width - 2) for k in dropped)
    return "\n".join(lines)


def _renamed_table(rows: list[list[str]], width: int) -> list[str]:
    """Old and new patterns side by side when they fit ``width``, else each old pattern with its new name under it
    (keys are never cut in the middle when a layout that shows them whole exists)."""
    from tabulate import tabulate

    from keyguard._console import clip

    table = tabulate(
        rows, headers=["renamed from", "to", "keys"], tablefmt="simple", colalign=["left", "left", "right"]
    )
    if max(map(len, table.splitlines())) <= width:
        return table.splitlines()
    out = ["renamed:"]
    for old, new, count in rows:
        out.append("  " + clip(old, width - 4 - len(count)) + f"  {count}")
        out.append("    -> " + clip(new, width - 7))
    return out
