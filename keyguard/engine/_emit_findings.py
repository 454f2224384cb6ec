"""Findings and the report: rule findings, shapes, transposes, dtypes, leftovers, ambiguities, summary."""

from __future__ import annotations

import operator
from collections import Counter
from itertools import compress
from typing import Any

from keyguard._dtypes import dtype_label
from keyguard._patterns import template
from keyguard.engine import _knowledge as knowledge
from keyguard.engine._leftovers import _Leftovers
from keyguard.engine._state import (
    _DTYPE_OF,
    _EMBEDDING,
    _FLOAT_DTYPES,
    _SHAPE_OF,
    _Accepted,
    _shape,
)
from keyguard.fixes._rules import (
    AddPrefix,
    Applicability,
    Fuse,
    RemoveSegment,
    Rename,
    ReplacePrefix,
    Rule,
    ShiftIndex,
    Split,
    StripPrefix,
    Transpose,
)
from keyguard.report import _kinds as kinds
from keyguard.report._build import EXAMPLES
from keyguard.report._model import Example, Finding, Fix
from keyguard.sources._keyset import TensorInfo


class _Findings(_Leftovers):
    def _pair_findings(self) -> set[str]:
        """Rule findings, then shape / transpose / dtype findings over every mapped pair."""
        shape_bad: dict[str, str] = {}
        transposed: list[str] = []
        dtype_diff: list[str] = []
        casts: Counter[int] = Counter()
        for original in self._differing():
            target = self.resolved[original]
            a, b = self.C[original], self.E[target]
            if a.shape is not None and b.shape is not None and a.shape != b.shape:
                if len(a.shape) == 2 and a.shape == b.shape[::-1]:
                    transposed.append(original)
                else:
                    shape_bad[original] = target
            elif a.dtype and b.dtype and a.dtype != b.dtype:
                if original in self.exact:
                    dtype_diff.append(original)
                elif original in self.via:
                    casts[self.via[original]] += 1
        squares = self._square_siblings(transposed) if transposed else []
        transposed += squares
        problem = set(shape_bad) | set(transposed)
        merged: dict[object, list[int]] = {}
        for index, acc in enumerate(self.accepted):
            rule = acc.candidate.rule
            signature: object = ("rename", rule.old, rule.new, acc.applicability) if isinstance(rule, Rename) else index
            if acc.settled:
                signature = ("aligned", acc.kind, acc.applicability)
            merged.setdefault(signature, []).append(index)
        steps_shown: set[int] = set()
        for indices in merged.values():
            if len(merged) == 1 and not problem:
                keys = list(self.via)
            else:
                keys = [k for k, i in self.via.items() if i in indices and k not in problem]
            if keys:
                # a step that lands nothing itself (a prefix stripped before a rename) travels with the first
                # finding whose keys need it, so every rule of the plan belongs to exactly one finding
                chained = self.chain.keys() & set(keys) if self.chain else set()
                steps = [
                    i
                    for k in chained
                    for i in self.chain[k][:-1]
                    if not self.accepted[i].pairs and i not in steps_shown
                ]
                steps = sorted(set(steps))
                steps_shown.update(steps)
                rules = [r for i in [*steps, *indices] for r in self.accepted[i].rules]
                self.findings.append(
                    self._aligned_finding(
                        [self.accepted[i] for i in indices], keys, sum(casts[i] for i in indices), rules
                    )
                    if self.accepted[indices[0]].settled
                    else self._rule_finding(self.accepted[indices[0]], keys, sum(casts[i] for i in indices), rules)
                )
        if shape_bad:
            self.findings.append(self._shape_finding(shape_bad))
        if transposed:
            transpose = Transpose(keys=[self.resolved[k] for k in transposed], reason=kinds.TRANSPOSED.code)
            self.findings.append(
                self._finding(
                    kinds.TRANSPOSED,
                    f"{len(transposed)} 2-D tensor(s) are stored transposed (e.g. GPT-2 Conv1D weights into nn.Linear)"
                    + (
                        f"; {len(squares)} of them square, which shapes cannot tell: their sibling modules are"
                        if squares
                        else ""
                    ),
                    transposed,
                    [self.resolved[k] for k in transposed],
                    examples=[
                        Example(
                            checkpoint=k,
                            expected=self.resolved[k],
                            detail=f"{_shape(self.C[k])} vs {_shape(self.E[self.resolved[k]])}",
                        )
                        for k in transposed[:EXAMPLES]
                    ],
                    fix=Fix(applicability=Applicability.unsafe, rules=[transpose], note="transposing changes the data"),
                    ctx={"count": len(transposed), "square": squares},
                )
            )
        groups: dict[tuple[str, str, Applicability], list[tuple[Rule, list[str], list[str]]]] = {}
        for fused, originals, targets in self.fused:
            anchor = fused.source if isinstance(fused, Split) else getattr(fused, "target", "")
            groups.setdefault((fused.op, template(anchor)[0], fused.applicability), []).append(
                (fused, originals, targets)
            )
        for members in groups.values():
            self.findings.append(self._fused_finding(members))
        if dtype_diff:
            self.findings.append(self._dtype_finding(dtype_diff))
        return problem

    def _differing(self) -> list[str]:
        """The resolved keys whose pair differs in shape or dtype, in the order of ``resolved``. Pairs a rule of the
        rounds landed were compared when the round weighed the rule (``_Accepted.differ``); only the others are
        looked up here."""
        resolved, via = self.resolved, self.via
        compared = {i: (acc, acc.differ) for i, acc in enumerate(self.accepted) if acc.differ is not None}
        known: list[str] = []
        for acc, differ in compared.values():
            # a released key leaves acc.pairs (and via): what is left of the rule's keys is acc.pairs
            known += [k for k in differ if k in acc.pairs]
        # the keys a compared rule landed are acc.pairs (via[k] == i exactly for them, and each is resolved to the
        # pair compared): when they are every resolved key, nothing is left to look up
        covered = sum(len(acc.pairs) for acc, _ in compared.values())
        rest: list[str] = []
        targets: list[str] = []
        if not compared:
            rest, targets = list(resolved), list(resolved.values())
        elif covered < len(resolved):
            rest = [k for k in resolved if via.get(k, -1) not in compared]
            targets = list(map(resolved.__getitem__, rest))
        ours = list(map(self.C.__getitem__, rest))
        theirs = list(map(self.E.__getitem__, targets))
        # compare whole columns in C; only the (usually few) differing pairs are looked at one by one
        unequal = map(  # one lazy pass over both columns, nothing allocated per pair
            operator.or_,
            map(operator.ne, map(_SHAPE_OF, ours), map(_SHAPE_OF, theirs)),
            map(operator.ne, map(_DTYPE_OF, ours), map(_DTYPE_OF, theirs)),
        )
        found = list(compress(rest, unequal))
        if known:
            wanted = set(known).union(found)
            found = list(compress(resolved, map(wanted.__contains__, resolved)))
        return found

    def _rule_finding(self, acc: _Accepted, keys: list[str], casts: int, rules: list[Rule]) -> Finding:
        cand = acc.candidate
        rule = cand.rule
        resolved = self.resolved
        # keys are often every resolved key in its order (one rule landed them all): then the targets are the
        # values as they stand, not a lookup per key (checked, not assumed: a comparison of two lists is C-level)
        whole = len(keys) == len(resolved) and keys == list(resolved)
        targets = list(resolved.values()) if whole else list(map(resolved.__getitem__, keys))
        ctx: dict[str, Any] = {"count": len(keys), "rule": rule.describe()}
        if casts:
            ctx["dtype_casts"] = casts
        chained = [k for k in keys if k in self.chain] if self.chain else []
        if isinstance(rule, StripPrefix) or (isinstance(rule, ReplacePrefix) and cand.kind == "extra_prefix"):
            prefix = rule.prefix if isinstance(rule, StripPrefix) else rule.old[: len(rule.old) - len(rule.new)]
            origin = knowledge.prefix_origin(rule.old) if isinstance(rule, ReplacePrefix) else None
            origin = origin or knowledge.prefix_origin(prefix)
            ctx.update(prefix=prefix, origin=origin)
            message = (
                f"{len(keys):,} checkpoint key(s) carry the extra prefix '{prefix}'"
                + (f" (left by {origin})" if origin else "")
                + ": strip it and they match"
            )
            kind = kinds.EXTRA_PREFIX
        elif isinstance(rule, AddPrefix) or (isinstance(rule, ReplacePrefix) and cand.kind == "missing_prefix"):
            prefix = rule.prefix if isinstance(rule, AddPrefix) else rule.new[: len(rule.new) - len(rule.old)]
            origin = knowledge.missing_prefix_origin(prefix)
            ctx.update(prefix=prefix, origin=origin)
            message = (
                f"{len(keys):,} checkpoint key(s) lack the prefix '{prefix}' the model expects"
                + (f" ({origin})" if origin else "")
                + ": add it and they match"
            )
            kind = kinds.MISSING_PREFIX
        elif isinstance(rule, ReplacePrefix):
            ctx.update(old=rule.old, new=rule.new)
            message = f"{len(keys):,} checkpoint key(s) start with '{rule.old}' where the model expects '{rule.new}'"
            kind = kinds.REPLACED_PREFIX
        elif isinstance(rule, ShiftIndex):
            ctx.update(prefix=rule.prefix, offset=rule.offset)
            message = (
                f"{len(keys):,} key(s) in numbered blocks after '{rule.prefix}' are offset by {-rule.offset:+d}"
                f" (checkpoint index = model index {-rule.offset:+d})"
            )
            kind = kinds.INDEX_SHIFT
        elif isinstance(rule, RemoveSegment):
            origin = knowledge.INFIX_WRAPPERS.get(rule.segment)
            ctx.update(old=rule.segment, new="", origin=origin)
            message = (
                f"{len(keys):,} key(s) carry the wrapper segment '{rule.segment}' inside them"
                + (f" (left by {origin})" if origin else "")
                + ": remove it wherever it stands and they match"
            )
            kind = kinds.RENAMED
        else:
            assert isinstance(rule, Rename)
            ctx.update(old=rule.old, new=rule.new)
            if rule.old and rule.new:
                message = f"{len(keys):,} key(s) name a segment '{rule.old}' where the model says '{rule.new}'"
            elif rule.new:
                message = f"{len(keys):,} key(s) lack the segment '{rule.new}' the model's keys have"
            else:
                message = f"{len(keys):,} key(s) carry a segment '{rule.old}' the model's keys do not have"
            if rule.new == "default" or rule.old == "default":
                message += " (PEFT's adapter name)"
            kind = kinds.RENAMED
        if chained:
            earlier = dict.fromkeys(
                self.accepted[i].candidate.rule.describe() for k in chained for i in self.chain[k][:-1]
            )
            message += f"; {len(chained):,} of them after the plan's earlier rule ({'; '.join(earlier)})"
        if casts:
            message += f"; {casts:,} differ in dtype and are cast on load"
        fix = Fix(applicability=acc.applicability, rules=rules, note=acc.note)
        return self._finding(
            kind,
            message,
            keys,
            targets,
            examples=[Example(checkpoint=k, expected=self.resolved[k]) for k in keys[:EXAMPLES]],
            fix=fix,
            ctx=ctx,
        )

    def _square_siblings(self, transposed: list[str]) -> list[str]:
        """Square 2-D weights loaded as they are where every non-square 2-D weight of the same kind of module
        (same parent template: ``h.{N}.attn``) is stored transposed: a GPT-2 ``Conv1D`` ``attn.c_proj`` loads
        without error and holds its data the wrong way round."""
        kinds_of = {_parent_template(self.resolved[k]) for k in transposed}
        flipped = set(transposed)
        square: list[str] = []
        for original, target in self.resolved.items():
            if original in flipped or not target.endswith("weight"):
                continue
            parent = _parent_template(target)
            if parent not in kinds_of:
                continue
            a, b = self.C[original].shape, self.E[target].shape
            if a is None or b is None or len(a) != 2 or len(b) != 2:
                continue
            if a[0] != a[1] or a != b:
                kinds_of.discard(parent)  # a non-square weight of this kind loads as it is: no pattern
                continue
            square.append(original)
        return [k for k in square if _parent_template(self.resolved[k]) in kinds_of]

    def _aligned_finding(self, group: list[_Accepted], keys: list[str], casts: int, rules: list[Rule]) -> Finding:
        """One finding for the modules template alignment matched at one applicability: what changed in each, in
        how many keys, and the evidence that decided."""
        first = group[0]
        kind = kinds.RENUMBERED if first.kind == "renumbered" else kinds.RESTRUCTURED
        wanted = set(keys)
        changes: list[dict[str, Any]] = []
        by_change: dict[tuple[str, str], dict[str, Any]] = {}
        for acc in group:
            count = sum(1 for k in acc.pairs if k in wanted)
            if not count:
                continue
            old, new, text = acc.change or ("?", "?", "renamed")
            entry = by_change.get((old, new))
            if entry is None:
                entry = {"old": old, "new": new, "text": text, "keys": 0, "evidence": []}
                by_change[old, new] = entry
                changes.append(entry)
            entry["keys"] += count
            for evidence in acc.evidence:
                if evidence not in entry["evidence"]:
                    entry["evidence"].append(evidence)
        shown = "; ".join(c["text"] for c in changes[:4])
        if len(changes) > 4:
            shown += f"; and {len(changes) - 4} more"
        what = "renumbered" if kind is kinds.RENUMBERED else "named differently in several places"
        message = f"{len(keys):,} checkpoint key(s) in {len(changes):,} module(s) are {what}: {shown}"
        if casts:
            message += f"; {casts:,} differ in dtype and are cast on load"
        notes = [acc.note for acc in group if acc.note]
        fix = Fix(applicability=first.applicability, rules=rules, note=notes[0] if notes else None)
        ctx: dict[str, Any] = {"count": len(keys), "changes": changes}
        if casts:
            ctx["dtype_casts"] = casts
        return self._finding(
            kind,
            message,
            keys,
            [self.resolved[k] for k in keys],
            examples=[Example(checkpoint=k, expected=self.resolved[k]) for k in keys[:EXAMPLES]],
            fix=fix,
            ctx=ctx,
        )

    def _shape_finding(self, bad: dict[str, str]) -> Finding:
        reasons: Counter[str] = Counter()
        examples: list[Example] = []
        for original, target in bad.items():
            a, b = self.C[original], self.E[target]
            why = _shape_reason(target, a, b)
            reasons[why] += 1
            if len(examples) < EXAMPLES:
                examples.append(
                    Example(
                        checkpoint=original,
                        expected=target,
                        detail=f"checkpoint {_shape(a)}, model {_shape(b)}" + (f": {why}" if why else ""),
                    )
                )
        named = [r for r in reasons if r]
        message = f"{len(bad):,} tensor(s) have another shape than the model's" + (
            f" ({'; '.join(named)})" if named else ""
        )
        return self._finding(
            kinds.SHAPE_MISMATCH,
            message,
            list(bad),
            list(bad.values()),
            examples=examples,
            hint="build the model with the checkpoint's sizes (e.g. resize_token_embeddings, num_labels), or leave"
            " these keys out with --ignore"
            + (
                "; to train a new head of another size, transformers' from_pretrained(...,"
                " ignore_mismatched_sizes=True) starts it from its initialisation"
                if any(r.startswith("number of labels") for r in reasons)
                else ""
            ),
            ctx={"count": len(bad), "reasons": dict(reasons)},
        )

    def _fused_finding(self, members: list[tuple[Rule, list[str], list[str]]]) -> Finding:
        rules = [rule for rule, _, _ in members]
        originals = [k for _, keys, _ in members for k in keys]
        targets = [k for _, _, keys in members for k in keys]
        first = rules[0]
        if isinstance(first, Split):
            message = (
                f"{len(rules):,} checkpoint tensor(s) are fused ('{first.source.split('.')[-2]}');"
                f" the model expects each split in {len(first.targets)} parts"
            )
        else:
            assert isinstance(first, Fuse)
            what = "stacked-expert tensor(s)" if first.stack else "fused tensor(s)"
            message = (
                f"{len(originals):,} separate checkpoint tensor(s) make up {len(rules):,} {what} the model expects"
            )
        return self._finding(
            kinds.FUSED_SPLIT,
            message,
            originals,
            targets,
            examples=[Example(checkpoint=members[0][1][0], expected=members[0][2][0], detail=first.describe())],
            fix=Fix(
                applicability=min((r.applicability for r in rules), key=lambda a: a.rank),
                rules=rules,
                note="splitting or fusing changes the data"
                + (
                    "; the order of the parts is a guess: never applied"
                    if any(r.applicability is Applicability.display_only for r in rules)
                    else ""
                ),
            ),
            ctx={"count": len(originals), "tensors": len(rules)},
        )

    def _dtype_finding(self, keys: list[str]) -> Finding:
        pairs = Counter((self.C[k].dtype, self.E[k].dtype) for k in keys)
        text = ", ".join(f"{dtype_label(a)} -> {dtype_label(b)} x{n:,}" for (a, b), n in pairs.most_common(4))
        mixed = sum(n for (a, b), n in pairs.items() if a and b and (a in _FLOAT_DTYPES) != (b in _FLOAT_DTYPES))
        message = f"{len(keys):,} tensor(s) differ in dtype (checkpoint -> model: {text}); load_state_dict casts them"
        if mixed:
            message += f"; {mixed:,} pair a float with an integer tensor, which usually means a wrong match"
        return self._finding(
            kinds.DTYPE_MISMATCH,
            message,
            keys,
            keys,
            examples=[
                Example(
                    checkpoint=k, expected=k, detail=f"{dtype_label(self.C[k].dtype)} vs {dtype_label(self.E[k].dtype)}"
                )
                for k in keys[:EXAMPLES]
            ],
            ctx={"count": len(keys), "pairs": {f"{a}->{b}": n for (a, b), n in pairs.items()}},
        )


def _parent_template(key: str) -> str:
    """The template of the parent of a key's module (``h.3.attn.c_proj.weight`` -> ``h.{N}.attn``)."""
    parts = template(key)[0].split(".")
    return ".".join(parts[:-2])


def _shape_reason(key: str, a: TensorInfo, b: TensorInfo) -> str:
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape) or not a.shape:
        return ""
    if a.shape[1:] == b.shape[1:] and a.shape[0] != b.shape[0]:
        delta = b.shape[0] - a.shape[0]
        if _EMBEDDING.search(key):
            return f"vocabulary resized by {delta:+d} rows"
        if knowledge.is_task_head(key) or key.split(".")[-2:-1] in (["classifier"], ["score"]):
            return f"number of labels changed ({a.shape[0]} -> {b.shape[0]})"
    return ""
