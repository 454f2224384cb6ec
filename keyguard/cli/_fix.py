"""``keyguard fix CHECKPOINT --expected REFERENCE -o OUTPUT``: write a fixed checkpoint that loses nothing.

``keyguard fix ADAPTER_DIR --base REFERENCE -o OUT_DIR`` writes a fixed PEFT adapter folder (``check-adapter``'s plan).
``keyguard fix --clean-stale [FOLDER]`` removes what killed runs left behind.

Exit codes: 0 the output matches the expected keys and shapes exactly (an adapter: it passes ``check-adapter``);
1 an output was written but findings remain (or nothing could be fixed); 2 bad input, a refused plan or a refused
output.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from keyguard.cli._options import add_hint_option, add_match_values_option, add_source_options

HELP = "write a fixed checkpoint: apply the safe plan (or a reviewed one), atomically and verified"
#: What a file output must be called: keyguard fix writes safetensors, and a name must not lie about the format.
OUTPUT_SUFFIX = ".safetensors"
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".pkl")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fix", help=HELP, description=HELP + ".", parents=[common])
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        nargs="?",
        help="safetensors file, sharded folder/index, PyTorch pickle, DCP folder, or PEFT adapter folder (with --base)",
    )
    p.add_argument("--expected", "-e", metavar="REFERENCE", help="what the model expects")
    p.add_argument(
        "--base", "-b", metavar="REFERENCE", help="for a PEFT adapter folder: the base model (as for check-adapter)"
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "-o", "--output", metavar="OUTPUT", help="*.safetensors file (a new folder, for sharded input or an adapter)"
    )
    target.add_argument(
        "--in-place", action="store_true", help="replace CHECKPOINT, through the same atomic, verified path"
    )
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it is an existing file (never an input)")
    p.add_argument("--plan", metavar="PLAN.json", help="apply this keyguard.plan/v1 file instead of the safe plan")
    p.add_argument(
        "--unsafe-fixes",
        action="store_true",
        help="also apply unsafe fixes (transposes, splits, fusions, inferred renames); each is listed",
    )
    p.add_argument("--drop-unexpected", action="store_true", help="leave out keys the model does not expect (listed)")
    p.add_argument("--dry-run", action="store_true", help="show what would be written; write nothing")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", help="keys to leave out of the diagnosis")
    add_hint_option(p)
    add_match_values_option(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, and only the summary")
    p.add_argument(
        "--clean-stale",
        action="store_true",
        help="remove what killed keyguard runs left in the output's folder (alone: in CHECKPOINT, a folder, or .)",
    )
    add_source_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keyguard._progress import Progress
    from keyguard.cli._screen import screen

    if args.clean_stale and args.expected is None and args.base is None and not (args.output or args.in_place):
        return _clean_only(args.checkpoint or ".")
    _check_usage(args)
    out = screen(args)
    # reading a large pickle, diagnosing millions of keys, writing and verifying: each phase shows on a terminal
    with Progress(enabled=False if args.quiet or args.dry_run else None, color=out.color) as progress:
        return _run(args, progress, out.width)


def _check_usage(args: argparse.Namespace) -> None:
    from keyguard._exceptions import KeyguardError

    missing = []
    if args.checkpoint is None:
        missing.append("CHECKPOINT")
    if args.expected is None and args.base is None:
        missing.append("--expected REFERENCE (or --base REFERENCE for an adapter)")
    if not (args.output or args.in_place):
        missing.append("-o OUTPUT or --in-place")
    if missing:
        raise KeyguardError(f"fix: missing {', '.join(missing)} (see keyguard fix --help)")
    if args.expected is not None and args.base is not None and args.expected != args.base:
        raise KeyguardError("fix: --expected and --base name the same thing (the reference); give one")


def _run(args: argparse.Namespace, progress: Any, width: int) -> int:
    from keyguard._exceptions import PlanError
    from keyguard.sources import read_keys
    from keyguard.sources._remote import is_remote

    if args.checkpoint is not None and is_remote(args.checkpoint):
        raise PlanError(f"{args.checkpoint}: keyguard fix needs the tensor data; download the checkpoint first")
    reference: str = args.expected if args.expected is not None else args.base
    progress.phase("reading")
    keys = read_keys(args.checkpoint, container=args.container)
    if keys.format == "peft-adapter":
        return _run_adapter(args, keys, reference, progress, width)
    if keys.format not in ("safetensors", "safetensors-sharded", "torch-pickle", "torch-dcp"):
        raise PlanError(f"{args.checkpoint}: keyguard fix writes safetensors files; a {keys.format} source has no data")
    output = _output_path(args, keys)
    if not args.in_place:
        _refuse_output(args, keys, output, folder=keys.format == "safetensors-sharded")
    progress.phase("diagnosing")
    # the reference is read once, for the diagnosis and for the check of the output (it may be a model to build);
    # comparing values needs it as given
    expected = reference if args.match_values else read_keys(reference, architecture=args.architecture)
    early = None
    if not args.dry_run:
        _stale_temps(args, output)  # before this run's own temporary file exists
        early = _start_early_copy(args, keys, expected, output)
    try:
        return _diagnose_and_write(args, keys, expected, output, early, progress, width)
    finally:
        if early is not None:
            early.cancel()  # nothing when the write took it over


def _start_early_copy(args: argparse.Namespace, keys: Any, expected: Any, output: str) -> Any:
    """Start copying the data section into the output's temporary file while the engine is imported and runs
    (see ``keyguard.fixes._early_copy``), when the plan is likely to rename keys only and to shorten them: the new
    header must fit before the data. Whether it is used is decided once the plan is known."""
    from keyguard.sources._keyset import KeySet

    if args.drop_unexpected or args.unsafe_fixes or not isinstance(expected, KeySet) or not len(expected):
        return None
    if sum(map(len, expected)) / len(expected) >= sum(map(len, keys)) / max(len(keys), 1):
        return None  # the expected names are not shorter: the header would likely not fit
    from keyguard.fixes._early_copy import EarlyCopy

    return EarlyCopy.start(keys, output)


def _diagnose_and_write(
    args: argparse.Namespace,
    keys: Any,
    expected: Any,
    output: str,
    early: Any,
    progress: Any,
    width: int,
) -> int:
    from keyguard.engine import diagnose
    from keyguard.fixes._writer import write_fixed_early

    report = diagnose(
        args.checkpoint if args.match_values else keys,
        expected,
        ignore=args.ignore,
        architecture=args.architecture,
        hints=dict(args.hint),
        match_values=args.match_values,
        container=args.container,
    )
    plan = _chosen_plan(args, report)
    drop = _dropped(args, report)
    if args.dry_run:
        from keyguard.fixes._output_plan import plan_output

        _, changes = plan_output(keys, plan, drop=drop)
        print(_changes_table(changes, quiet=args.quiet, dry_run=True, width=width))
        return 0
    result = write_fixed_early(keys, plan, output, drop=drop, progress=progress, early=early)
    progress.phase("checking")
    after = diagnose(output, expected, ignore=args.ignore, architecture=args.architecture)
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


def _run_adapter(args: argparse.Namespace, keys: Any, base: str, progress: Any, width: int) -> int:
    """``keyguard fix ADAPTER_DIR --base REF -o OUT_DIR``: check-adapter's plan, applied to a new adapter folder."""
    from keyguard._exceptions import PlanError
    from keyguard.adapter_checks import check_adapter
    from keyguard.fixes._adapter_write import write_fixed_adapter
    from keyguard.report._kinds import Severity

    folder = keys.location or args.checkpoint
    if args.in_place:
        raise PlanError(f"{args.checkpoint}: --in-place is not offered for adapter folders; write a new one with -o")
    output: str = args.output
    _refuse_output(args, keys, output, folder=True)
    progress.phase("checking")
    report = check_adapter(folder, base, container=args.container, architecture=args.architecture)
    plan = _chosen_plan(args, report)
    drop = _dropped(args, report)
    if args.dry_run:
        from keyguard.fixes._output_plan import plan_output
        from keyguard.sources._adapter import adapter_weights
        from keyguard.sources._resolve import read_keys

        _, changes = plan_output(read_keys(adapter_weights(folder)), plan, drop=drop)
        print(_changes_table(changes, quiet=args.quiet, dry_run=True, width=width))
        return 0
    _stale_temps(args, output)
    result = write_fixed_adapter(folder, plan, output, drop=drop, progress=progress)
    progress.phase("checking")
    after = check_adapter(output, base, container=args.container, architecture=args.architecture)
    progress.close()
    print(_changes_table(result.changes, quiet=args.quiet, dry_run=False, width=width))
    print(
        f"\nwrote {output}/ (adapter_model.safetensors verified, adapter_config.json copied unchanged;"
        f" {result.bytes_written:,} bytes)"
    )
    if not any(f.severity.at_least(Severity.error) for f in after.findings):
        print("the fixed adapter passes check-adapter against the base")
        return 0
    print("\nfindings that remain in the fixed adapter:\n")
    print(after.render("table", width=width))
    return 1


def _chosen_plan(args: argparse.Namespace, report: Any) -> Any:
    from keyguard.fixes import Plan

    if not args.plan:
        return report.unsafe_plan if args.unsafe_fixes else report.plan
    plan = Plan.load(args.plan)
    if args.unsafe_fixes:
        return plan
    safe = plan.at_least("safe")
    skipped = len(plan.rules) - len(safe.rules)
    if skipped:
        print(f"note: {skipped} rule(s) of {args.plan} are not safe and were not applied (--unsafe-fixes)")
    return safe


def _dropped(args: argparse.Namespace, report: Any) -> list[str]:
    if not args.drop_unexpected:
        return []
    return [k for f in report.findings if f.kind == "unexpected" for k in f.checkpoint_keys]


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


def _refuse_output(args: argparse.Namespace, keys: Any, output: str, *, folder: bool) -> None:
    """Before anything is read further or written: the output must say what it holds, be no input, and be new
    (or, for a file, replaced on purpose with ``--force``)."""
    from keyguard._exceptions import KeyguardError

    for path, role in _inputs(args, keys):
        if _same(output, path):
            hint = " (to replace the checkpoint, use --in-place)" if role == "the checkpoint" else ""
            raise KeyguardError(f"{output}: is {role}; keyguard fix never writes over an input{hint}")
    name = os.path.basename(os.path.normpath(output))
    if folder and name.endswith(_FILE_SUFFIXES):
        raise KeyguardError(f"{output}: the output is a folder here; name it like one, not like a checkpoint file")
    if not folder and not name.endswith(OUTPUT_SUFFIX):
        raise KeyguardError(
            f"{output}: keyguard fix writes safetensors; name the output *{OUTPUT_SUFFIX} (a safetensors file under"
            f" another name would lie about its format)"
        )
    if not os.path.lexists(output):
        return
    if folder or os.path.isdir(output):
        raise KeyguardError(f"{output}: already exists; the output goes to a new folder (remove it first)")
    if not args.force:
        raise KeyguardError(f"{output}: already exists; use --force to replace it")


def _inputs(args: argparse.Namespace, keys: Any) -> list[tuple[str, str]]:
    """Every file the run reads, and what it is to the user."""
    out: list[tuple[str, str]] = [(args.checkpoint, "the checkpoint")]
    location = keys.location or args.checkpoint
    base = os.path.dirname(location) if os.path.isfile(location) else location
    out.append((location, "the checkpoint"))
    out += [(os.path.join(base, name), "a file of the checkpoint") for name in keys.files]
    if keys.format == "peft-adapter":
        from keyguard.sources._adapter import ADAPTER_CONFIG

        out.append((os.path.join(base, ADAPTER_CONFIG), "a file of the checkpoint"))
    for option, role in (("expected", "the --expected reference"), ("base", "the --base reference")):
        value = getattr(args, option)
        if value is not None:
            out.append((value, role))
    if args.plan:
        out.append((args.plan, "the --plan file"))
    return out


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist: compare the paths themselves
        return os.path.abspath(a) == os.path.abspath(b)


def _stale_temps(args: argparse.Namespace, output: str) -> None:
    """Leftovers of killed runs beside the output: removed with ``--clean-stale``, else named once."""
    from keyguard.fixes._stale import find_stale_temps, remove_stale_temps

    folder = os.path.dirname(os.path.abspath(output)) or "."
    if args.clean_stale:
        _report_cleaning(remove_stale_temps(folder))
        return
    found = find_stale_temps(folder)
    if found:
        size = sum(t.size for t in found)
        print(
            f"note: {len(found)} leftover(s) of killed keyguard runs in {folder} ({size:,} bytes);"
            f" remove them with: keyguard fix --clean-stale {folder}",
            file=sys.stderr,
        )


def _clean_only(where: str) -> int:
    from keyguard.fixes._stale import remove_stale_temps

    folder = where if os.path.isdir(where) else (os.path.dirname(os.path.abspath(where)) or ".")
    found = remove_stale_temps(folder)
    _report_cleaning(found)
    if not found:
        print(f"no leftovers of keyguard runs in {folder}")
    return 0


def _report_cleaning(found: list[Any]) -> None:
    for temp in found:
        verb = "removed" if temp.removable else "kept"
        print(f"{verb} {temp.path} ({temp.kind}, {temp.size:,} bytes): {temp.reason}")


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
