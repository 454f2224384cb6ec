"""``keyguard diagnose CHECKPOINT --expected REFERENCE``: explain why a checkpoint does not load."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keyguard.cli._options import add_hint_option, add_match_values_option, add_report_options, add_source_options

HELP = "explain every key mismatch between a checkpoint and what a model expects"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("diagnose", help=HELP, description=HELP + ".", parents=[common])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the weights to load (file, folder, index, adapter)")
    p.add_argument(
        "--expected",
        "-e",
        required=True,
        metavar="REFERENCE",
        help="what the model expects: a config.json folder, a manifest, a checkpoint that loads,"
        " transformers:CLASS (with --config: diagnosed the way from_pretrained loads it), or module:callable"
        " (imports the module and calls it: this runs that code)",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="with --expected transformers:CLASS: the model's config.json, or the folder holding it"
        " (default: the config.json beside the checkpoint)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="REGEX",
        help="leave out keys matching REGEX on either side (repeatable)",
    )
    add_hint_option(p)
    add_match_values_option(p)
    p.add_argument(
        "--emit",
        choices=["key-mapping"],
        help="print the safe plan for other loaders (transformers/PEFT key_mapping, mmengine revise_keys)",
    )
    p.add_argument("--plan-out", metavar="PLAN.json", help="also write the safe plan as a keyguard.plan/v1 file")
    add_report_options(p)
    add_source_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keyguard.engine import diagnose

    expected: str = args.expected
    if expected.startswith("transformers:"):
        from keyguard.integrations import transformers as kg_transformers
        from keyguard.sources import read_keys

        if args.hint or args.match_values:
            from keyguard._exceptions import KeyguardError

            raise KeyguardError("--hint and --match-values do not go with --expected transformers:CLASS")
        checkpoint = read_keys(args.checkpoint, container=args.container)
        report = kg_transformers.diagnose(
            checkpoint, expected.removeprefix("transformers:"), config=args.config, ignore=args.ignore
        ).failing_on(args.fail_on)
    else:
        if args.config:
            from keyguard._exceptions import KeyguardError

            raise KeyguardError("--config goes with --expected transformers:CLASS")
        from keyguard.sources._factory import is_factory_reference, read_factory

        reference = read_factory(expected) if is_factory_reference(expected) else expected
        report = diagnose(
            args.checkpoint,
            reference,
            ignore=args.ignore,
            container=args.container,
            architecture=args.architecture,
            hints=dict(args.hint),
            match_values=args.match_values,
        ).failing_on(args.fail_on)  # the verdict printed and the exit code agree
    if args.emit == "key-mapping":
        from keyguard.fixes._emit import render_key_mapping

        keys = [k for finding in report.findings for k in finding.checkpoint_keys]
        print(render_key_mapping(report.plan, keys, as_json=args.format == "json"))
    elif args.format == "table":
        from keyguard.cli._screen import screen
        from keyguard.report._next import next_steps

        out = screen(args)
        steps = next_steps(
            report,
            checkpoint=args.checkpoint,
            expected=args.expected,
            ignore=args.ignore,
            container=args.container,
            architecture=args.architecture,
            hints=dict(args.hint),
        )
        print(report.render("table", width=out.width, color=out.color, next_steps=steps))
    elif args.format == "junit":
        print(report.render("junit", fail_on=args.fail_on).rstrip("\n"))
    else:
        print(report.render(args.format))
    if args.plan_out:
        report.plan.save(args.plan_out)
        print(f"wrote the safe plan to {args.plan_out}", file=sys.stderr)
    return report.exit_code()
