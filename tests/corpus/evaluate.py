"""Scoring a keyguard report against a case's truth.

Per case: the keys that need a rename (or a data change); how many of them the safe plan and the unsafe plan map
right; how many either plan maps WRONG (onto an expected key other than the key's truth: the one failure keyguard
must never have); how many exact matches it keeps silently although the truth says they are other tensors; how many
the report explains (the right target offered somewhere: a plan, a finding's rule, an ambiguity's candidates, a hint,
an example); the hints shown and how many are right. The plans are also applied to the real tensors
(``simulate``), and the result checked by value against the expected tensors: ``silent`` counts tensors that would
load without an error (same name, same shape) but hold other data.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import keyguard
from corpus._case import FUSE, SPLIT, STACK, TRANSPOSE, Case, Link
from keyguard.fixes import Drop, Fuse, MapKeys, Plan, Rule, Split, Transpose
from keyguard.report import Report

_HINT_PAIR = re.compile(r"\s*(.+?) ~ (.+?)\s*$")


@dataclass
class Wrong:
    """A key that went under another expected key than its truth."""

    plan: str  # "safe", "unsafe" or "kept" (an exact match left in place, mentioned by no finding)
    checkpoint: str
    got: str
    truth: str | None


@dataclass
class CaseScore:
    """The figures of one case (see the module docstring)."""

    name: str
    checkpoint_keys: int
    expected_keys: int
    need: int
    safe_right: int = 0
    unsafe_right: int = 0
    safe_wrong: int = 0
    unsafe_wrong: int = 0
    kept_wrong: int = 0
    explained: int = 0
    hints: int = 0
    hints_right: int = 0
    value_right: int = 0  # expected tensors equal by value after the unsafe plan (of those the plan fills)
    value_filled: int = 0  # expected tensors the unsafe plan fills from renamed or transformed keys
    silent: int = 0  # expected tensors the unsafe plan leaves with the right shape and other data (loads quietly)
    data_rules: int = 0  # transpose / split / fuse rules in the unsafe plan
    written: str = ""  # "ok", "differs: ...", "error: ..." when the unsafe plan was written with write_fixed
    error: str = ""  # a PlanError or other failure while applying a plan
    seconds: float = 0.0
    wrong: list[Wrong] = field(default_factory=list)

    @property
    def invariant_broken(self) -> bool:
        """True when a plan put a key under a wrong expected key, or an exact match was silently kept wrong."""
        return bool(self.safe_wrong or self.unsafe_wrong or self.kept_wrong or self.error)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Output:
    """A tensor a plan produces, and where it came from."""

    tensor: Any
    sources: tuple[str, ...]  # original checkpoint keys, in the order the rule took them
    part: int = 0  # for a split: which part of the source
    transposed: bool = False

    @property
    def changed(self) -> bool:
        """True when a rule renamed or transformed the data (not a key left as it was)."""
        return self.transposed or len(self.sources) != 1 or self.part != 0


def simulate(plan: Plan, tensors: Mapping[str, Any]) -> dict[str, _Output]:
    """Apply ``plan`` to real tensors the way ``keyguard fix`` does: renames, then splits and fuses (which name
    keys as renamed), transposes; keys no rule consumes keep their (new) name. Dropped keys (by their checkpoint
    name) are left out first."""
    import torch

    dropped = {k for rule in plan.rules if isinstance(rule, Drop) for k in rule.keys}
    if dropped:
        tensors = {k: v for k, v in tensors.items() if k not in dropped}
    mapping = plan.mapping(tensors)  # raises PlanError on a collision
    by_new = {new: old for old, new in mapping.items()}
    out: dict[str, _Output] = {}
    consumed: set[str] = set()
    for rule in plan.rules:
        if isinstance(rule, Split) and rule.source in by_new:
            old = by_new[rule.source]
            for part, (target, piece) in enumerate(
                zip(rule.targets, torch.split(tensors[old], rule.sizes, dim=rule.dim))
            ):
                out[target] = _Output(piece, (old,), part)
            consumed.add(old)
        elif isinstance(rule, Fuse) and all(s in by_new for s in rule.sources):
            olds = tuple(by_new[s] for s in rule.sources)
            parts = [tensors[o] for o in olds]
            if rule.stack:
                runs = [torch.cat(parts[i : i + rule.parts], dim=rule.dim) for i in range(0, len(parts), rule.parts)]
                fused = torch.stack(runs)
            else:
                fused = torch.cat(parts, dim=rule.dim)
            out[rule.target] = _Output(fused, olds)
            consumed.update(olds)
    transposed = {k for rule in plan.rules if isinstance(rule, Transpose) for k in rule.keys}
    for old, tensor in tensors.items():
        if old in consumed:
            continue
        new = mapping[old]
        flip = new in transposed
        out[new] = _Output(tensor.t() if flip else tensor, (old,), transposed=flip)
    return out


def _landed(link: Link | None, name: str, output: _Output, key: str) -> bool | None:
    """True when ``key``'s tensor under ``name`` is where its truth puts it, False when it is under another
    expected key, ``None`` when ``name`` is not an expected key (nothing was loaded there)."""
    if link is None:
        return False
    if link.op == SPLIT:
        return name == link.new[output.part] if len(output.sources) == 1 else False
    if link.op in (FUSE, STACK):
        return name == link.new[0] and output.sources == link.old
    if link.op == TRANSPOSE and not output.transposed:
        return None if name == link.new[0] else False  # under the right name, but the data is not transposed
    return name == link.new[0] and len(output.sources) == 1 and output.transposed == (link.op == TRANSPOSE)


def _score_plan(case: Case, outputs: Mapping[str, _Output]) -> tuple[set[str], list[tuple[str, str]]]:
    """Checkpoint keys the plan puts right (every part where the truth says), and (key, wrong name) pairs."""
    truth = case.truth
    placed: dict[str, list[bool]] = {}
    wrong: list[tuple[str, str]] = []
    for name, output in outputs.items():
        if name not in case.expected:
            continue
        for key in output.sources:
            link = truth[key]
            if link is not None and not link.moves and name == key:
                continue  # an exact match the truth agrees with
            ok = _landed(link, name, output, key)
            placed.setdefault(key, []).append(bool(ok))
            if ok is False and not (name == key and not output.changed):
                wrong.append((key, name))
    right = set()
    for key, results in placed.items():
        link = truth[key]
        if link is not None and all(results) and len(results) == (len(link.new) if link.op == SPLIT else 1):
            right.add(key)
    return right, wrong


def _mentioned(report: Report) -> set[str]:
    return {k for f in report.findings for k in f.checkpoint_keys}


def _offers(report: Report, case: Case) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Every (checkpoint key -> expected keys) the report offers, whatever its applicability; and the names each
    checkpoint key may go by in the report (its own, and those the report's rules give it)."""
    keys = list(case.checkpoint)
    offered: dict[str, set[str]] = {k: set() for k in keys}
    aliases: dict[str, set[str]] = {k: {k} for k in keys}  # names a key may go by in the report's messages

    def add(key: str, target: str) -> None:
        if key in offered:
            offered[key].add(target)

    plans = [report.plan, report.unsafe_plan]
    for finding in report.findings:
        if finding.fix is not None:
            # the finding's rules after every plan rule it does not hold itself (rules are equal by value)
            mine = finding.fix.rules
            plans.append(Plan(rules=[*(r for r in report.unsafe_plan.rules if r not in mine), *mine]))
    for plan in plans:
        for key, output in _outputs(plan, case).items():
            for target in output:
                add(key, target)
                aliases[key].add(target)
    for finding in report.findings:
        for key, candidates in (finding.ctx.get("candidates") or {}).items():
            for target in candidates:
                add(key, target)
        for example in finding.examples:
            if example.checkpoint and example.expected:
                for target in example.expected.split(" | "):
                    add(example.checkpoint, target)
    for ck_name, ex_name in _hint_pairs(report, case):
        for key in keys:
            if ck_name in aliases[key]:
                add(key, ex_name)
    return offered, aliases


def _names(plan: Plan, keys: list[str]) -> dict[str, str]:
    """Each key's name after the plan's renames (key by key when the plan would collide keys)."""
    try:
        return plan.mapping(keys)
    except keyguard.PlanError:
        return {k: plan.rename_key(k) for k in keys}


def _outputs(plan: Plan, case: Case) -> dict[str, list[str]]:
    """checkpoint key -> the names its data ends up under (after splits and fuses); collisions tolerated."""
    names = _names(plan, list(case.checkpoint))
    by_new: dict[str, str] = {}
    for old, new in names.items():
        by_new.setdefault(new, old)
    result: dict[str, list[str]] = {k: [v] for k, v in names.items()}
    for rule in plan.rules:
        if isinstance(rule, Split) and rule.source in by_new:
            result[by_new[rule.source]] = list(rule.targets)
        elif isinstance(rule, Fuse):
            for source in rule.sources:
                if source in by_new:
                    result[by_new[source]] = [rule.target]
    return result


def _hint_pairs(report: Report, case: Case) -> list[tuple[str, str]]:
    """(checkpoint-side name, expected key) for every "closest candidates" pair in the report's hints."""
    pairs = []
    for finding in report.findings:
        if not finding.hint or not finding.hint.startswith("closest candidates:"):
            continue
        for chunk in finding.hint.removeprefix("closest candidates:").split(";"):
            match = _HINT_PAIR.match(chunk)
            if match is None:
                continue
            a, b = match.group(1), match.group(2)
            # a "missing" finding lists expected keys first; an "unexpected" one, checkpoint keys first
            expected_first = finding.kind == "missing" or (
                finding.kind != "unexpected" and a in case.expected and b not in case.expected
            )
            pairs.append((b, a) if expected_first else (a, b))
    return pairs


def evaluate(case: Case, report: Report, *, write: bool = False) -> CaseScore:
    """Score ``report`` (``keyguard.diagnose(case.checkpoint, case.expected)``) against ``case``'s truth.

    With ``write``, a plan holding data rules is also written with ``keyguard.write_fixed`` to a real safetensors
    file, read back, and compared with ``simulate``'s result.
    """
    import torch

    need = case.needs()
    score = CaseScore(case.name, len(case.checkpoint), len(case.expected), len(need))
    truth = case.truth
    mentioned = _mentioned(report)
    outcomes: dict[str, dict[str, _Output]] = {}
    mapped_right: set[str] = set()
    for label, plan in (("safe", report.plan), ("unsafe", report.unsafe_plan)):
        try:
            outputs = simulate(plan, case.checkpoint)
        except keyguard.PlanError as exc:
            score.error = f"{label} plan: {exc}"
            continue
        outcomes[label] = outputs
        right, wrong = _score_plan(case, outputs)
        mapped_right |= right
        setattr(score, f"{label}_right", len([k for k in need if k in right]))
        setattr(score, f"{label}_wrong", len({k for k, _ in wrong}))
        for key, name in wrong:
            link = truth[key]
            score.wrong.append(Wrong(label, key, name, None if link is None else " | ".join(link.new)))
    for key, link in truth.items():
        stays = key in case.expected and (link is None or link.new != (key,))
        if stays and key not in mentioned and _kept(outcomes, key):
            score.kept_wrong += 1
            score.wrong.append(Wrong("kept", key, key, None if link is None else " | ".join(link.new)))
    offered, aliases = _offers(report, case)
    for key in need:
        link = truth[key]
        assert link is not None
        # a key whose only change is its data is explained when a plan changes it right or a finding speaks of it
        if key in mapped_right or (offered[key] & set(link.new) and (link.new != (key,) or key in mentioned)):
            score.explained += 1
    hint_pairs = _hint_pairs(report, case)
    score.hints = len(hint_pairs)
    for ck_name, ex_name in hint_pairs:
        owners = [k for k in case.checkpoint if ck_name in aliases[k]]
        if any(truth[k] is not None and ex_name in truth[k].new for k in owners):  # type: ignore[union-attr]
            score.hints_right += 1
    unsafe = outcomes.get("unsafe")
    if unsafe is not None:
        for name, output in unsafe.items():
            want = case.expected.get(name)
            if want is None:
                continue
            changed = output.sources != (name,) or output.changed
            same = tuple(output.tensor.shape) == tuple(want.shape) and torch.equal(output.tensor, want)
            score.value_filled += changed
            score.value_right += changed and same
            score.silent += tuple(output.tensor.shape) == tuple(want.shape) and not same
    score.data_rules = sum(1 for r in report.unsafe_plan.rules if isinstance(r, (Split, Fuse, Transpose)))
    if write and unsafe is not None and score.data_rules:
        score.written = _written(case, report.unsafe_plan, unsafe)
    return score


def _kept(outcomes: Mapping[str, Mapping[str, _Output]], key: str) -> bool:
    """True when some plan leaves ``key`` under its own name."""
    return any(key in out and out[key].sources == (key,) for out in outcomes.values())


def _written(case: Case, plan: Plan, simulated: Mapping[str, _Output]) -> str:
    """Write the checkpoint with ``plan`` through ``keyguard.write_fixed`` and compare with ``simulate``."""
    import torch
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "checkpoint.safetensors")
        target = os.path.join(folder, "fixed.safetensors")
        save_file({k: v.contiguous() for k, v in case.checkpoint.items()}, source)
        try:
            keyguard.write_fixed(keyguard.read_keys(source), plan, target)
        except keyguard.KeyguardError as exc:
            return f"error: {exc}"
        written = load_file(target)
    if written.keys() != simulated.keys():
        return f"differs: keys {sorted(written.keys() ^ simulated.keys())[:3]}"
    bad = [k for k, out in simulated.items() if not torch.equal(written[k], out.tensor.contiguous())]
    return f"differs: data of {bad[:3]}" if bad else "ok"


def truth_plan(case: Case) -> Plan:
    """The case's truth written as a keyguard plan: what a perfect diagnosis would propose (data changes keyguard
    has no rule for, the rotary permutation and reshapes, are left out: those keys are only renamed)."""
    mapping: dict[str, str] = {}
    data: list[Rule] = []
    for link in case.links:
        if link.op == SPLIT:
            sizes = [int(case.expected[k].shape[link.dim]) for k in link.new]
            data.append(Split(source=link.old[0], targets=list(link.new), sizes=sizes, dim=link.dim))
        elif link.op in (FUSE, STACK):
            data.append(
                Fuse(
                    sources=list(link.old),
                    target=link.new[0],
                    dim=0 if link.op == STACK else link.dim,
                    stack=link.op == STACK,
                    parts=link.parts,
                )
            )
        else:
            if link.old != link.new:
                mapping[link.old[0]] = link.new[0]
            if link.op == TRANSPOSE:
                data.append(Transpose(keys=[link.new[0]]))
    if case.orphans:
        data.append(Drop(keys=list(case.orphans)))
    return Plan(rules=[MapKeys(mapping=mapping), *data] if mapping else data)


def run(case: Case, *, write: bool = False) -> tuple[Report, CaseScore]:
    """Diagnose ``case`` with keyguard and score the report."""
    start = time.perf_counter()
    report = keyguard.diagnose(case.checkpoint, case.expected)
    seconds = time.perf_counter() - start
    score = evaluate(case, report, write=write)
    score.seconds = seconds
    return report, score


def totals(scores: Iterable[CaseScore]) -> dict[str, float]:
    """Sums over cases, and the ratios the issue's targets are stated in."""
    fields = (
        "checkpoint_keys",
        "need",
        "safe_right",
        "unsafe_right",
        "safe_wrong",
        "unsafe_wrong",
        "kept_wrong",
        "explained",
        "hints",
        "hints_right",
        "value_filled",
        "value_right",
        "silent",
    )
    listed = list(scores)
    out: dict[str, float] = {f: sum(getattr(s, f) for s in listed) for f in fields}
    need = out["need"] or 1
    out["cases"] = len(listed)
    out["cases_broken"] = sum(1 for s in listed if s.invariant_broken)
    out["mapped_ratio"] = round(out["unsafe_right"] / need, 4)
    out["safe_ratio"] = round(out["safe_right"] / need, 4)
    out["explained_ratio"] = round(out["explained"] / need, 4)
    out["hints_ratio"] = round(out["hints_right"] / out["hints"], 4) if out["hints"] else 1.0
    return out
