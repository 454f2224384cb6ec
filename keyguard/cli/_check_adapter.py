"""``keyguard check-adapter ADAPTER_DIR... --base REFERENCE``: check exported PEFT adapters, in parallel, for CI."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from keyguard.cli._options import add_source_options, source_kwargs

HELP = "check exported PEFT LoRA adapters against their base model, from the files alone (for CI)"
FORMATS = ("table", "json", "markdown", "github", "junit")

# the base's keys, read once by the parent and handed to each worker process when it starts
_BASE: Any = None


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check-adapter", help=HELP, description=HELP + ".", parents=[common])
    p.add_argument(
        "adapters",
        metavar="ADAPTER_DIR",
        nargs="+",
        help="adapter folders (adapter_config.json + adapter_model.safetensors/.bin), or files inside them",
    )
    p.add_argument(
        "--base",
        "-b",
        required=True,
        metavar="REFERENCE",
        help="the base model: a checkpoint file or folder, a config.json folder, or a manifest (keyguard snapshot)",
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument(
        "--fail-on",
        choices=["error", "warning", "never"],
        default="error",
        help="exit 1 when findings at or above this severity remain (default: error)",
    )
    p.add_argument(
        "--check-values",
        action="store_true",
        help="also read every tensor (needs torch): NaN/Inf are errors, an all-zero lora_B a warning",
    )
    p.add_argument("--xlora", action="store_true", help="also predict whether PEFT's X-LoRA would load each adapter")
    p.add_argument(
        "--jobs",
        "-j",
        type=_positive,
        metavar="N",
        help="adapters checked in parallel processes (default: the number of CPUs, at most one per adapter)",
    )
    p.add_argument("--junit-xml", metavar="PATH", help="also write a JUnit XML report to PATH")
    add_source_options(p)
    p.set_defaults(run=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of jobs, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from keyguard._exceptions import KeyguardError, SourceError
    from keyguard._printable import printable
    from keyguard.adapter_checks import checked_kinds
    from keyguard.report._render import render_many
    from keyguard.sources import read_keys

    if args.check_values:  # once, before any adapter is read, rather than once per adapter
        from keyguard.sources._torch import require

        require("to read tensor values (--check-values)", "torch")
    base = read_keys(args.base, **source_kwargs(args))
    if base.format == "peft-adapter":
        raise SourceError(args.base, "base-is-adapter", "is a PEFT adapter; --base must be the model it was trained on")
    with contextlib.ExitStack() as stack:
        folders, mirrors = _local_folders(args.adapters, stack, check_values=args.check_values)
        jobs = args.jobs or min(_cpus(), len(folders))
        results = _check_all(folders, base, jobs, check_values=args.check_values, xlora=args.xlora)
        results = [_relabel(result, mirrors.get(folder)) for folder, result in zip(folders, results)]
        folders = [mirrors[f].url if f in mirrors else f for f in folders]
    reports = [r.failing_on(args.fail_on) for r in results if not isinstance(r, str)]
    errors = {printable(folder): printable(r) for folder, r in zip(folders, results) if isinstance(r, str)}
    for message in errors.values():
        print(f"keyguard: error: {message}", file=sys.stderr)
    checks = checked_kinds(check_values=args.check_values, xlora=args.xlora)
    if reports or args.format == "junit":
        options = {}
        if args.format == "table":
            from keyguard.cli._screen import screen

            out = screen(args)
            options = {"width": out.width, "color": out.color, "next_steps_for": _fix_steps(args)}
        text = render_many(reports, args.format, errors=errors, checks=checks, **options)
        print(text.rstrip("\n"))
    if args.junit_xml:
        from keyguard._atomic import atomic_write_text

        document = render_many(reports, "junit", errors=errors, checks=checks)
        try:
            atomic_write_text(args.junit_xml, document)
        except OSError as exc:
            raise KeyguardError(f"{args.junit_xml}: cannot write the JUnit report ({exc.strerror or exc})") from exc
    if errors:
        return 2
    return max((r.exit_code() for r in reports), default=0)


def _fix_steps(args: argparse.Namespace) -> Any:
    """The command that applies a report's plan: ``keyguard fix ADAPTER --base BASE -o ADAPTER-fixed``."""
    from keyguard.report._next import next_steps

    def steps(report: Any) -> list[Any]:
        found = next_steps(
            report,
            checkpoint=report.checkpoint.location,
            expected=args.base,
            container=args.container,
            architecture=args.architecture,
        )
        return [step for step in found if step.argv[:2] == ("keyguard", "fix")]

    return steps


def _local_folders(
    paths: Sequence[str], stack: contextlib.ExitStack, *, check_values: bool
) -> tuple[list[str], dict[str, Any]]:
    """Each adapter's local folder; a remote one (hf://, https://) is mirrored (its config and header) for the run."""
    from keyguard.adapter_checks import adapter_folder
    from keyguard.sources._remote import is_remote, mirrored

    folders: list[str] = []
    mirrors: dict[str, Any] = {}
    for path in dict.fromkeys(paths):
        if not is_remote(path):
            folders.append(adapter_folder(path))
            continue
        if check_values:
            from keyguard._exceptions import KeyguardError

            raise KeyguardError(f"{path}: --check-values reads every tensor; download the adapter to check its values")
        mirror = stack.enter_context(mirrored(path))
        folder = mirror.path if os.path.isdir(mirror.path) else os.path.dirname(mirror.path)
        folders.append(folder)
        mirrors[folder] = mirror
    return list(dict.fromkeys(folders)), mirrors


def _relabel(result: Any, mirror: Any) -> Any:
    if mirror is None:
        return result
    from keyguard.sources._remote import relabel_report, relabel_text

    return relabel_text(result, mirror) if isinstance(result, str) else relabel_report(result, mirror)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_all(folders: Sequence[str], base: Any, jobs: int, *, check_values: bool, xlora: bool) -> list[Any]:
    """A report, or the one-line reason it could not be made, per folder, in the folders' order."""
    if jobs <= 1 or len(folders) <= 1:
        _init(base)
        return [_check_one(folder, check_values, xlora) for folder in folders]
    import multiprocessing  # only for parallel runs: it costs start-up time every command would pay
    from concurrent.futures import ProcessPoolExecutor

    # fork shares the parent's memory for free, but a child forked after torch started its threads can deadlock
    method = "spawn" if "torch" in sys.modules else "fork"
    context = multiprocessing.get_context(method if method in multiprocessing.get_all_start_methods() else None)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(base,))
    try:
        return list(pool.map(_check_one, folders, [check_values] * len(folders), [xlora] * len(folders)))
    except KeyboardInterrupt:  # the workers ignore Ctrl-C (no traceback from each): stop them here
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _init(base: Any) -> None:
    global _BASE
    _BASE = base


def _init_worker(base: Any) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent reports the interruption, once
    _init(base)


def _check_one(folder: str, check_values: bool, xlora: bool) -> Any:
    from keyguard._exceptions import KeyguardError
    from keyguard.adapter_checks import check_adapter

    try:
        return check_adapter(folder, _BASE, check_values=check_values, xlora=xlora)
    except KeyguardError as exc:  # one line for the parent to print; exceptions need not survive pickling
        return str(exc)
