"""``diagnose``: explain every difference between the keys a model expects and the keys a checkpoint holds.

Order of work: exact matches; rounds of rule inference on what is left (each round's accepted rules rename the
open checkpoint keys, so combinations such as a DDP prefix plus a legacy rename are found in two rounds); shape,
dtype and transpose checks on every mapped pair; fused/split tensors; and what remains becomes missing or
unexpected, with known-harmless cases explained.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Final

from keyguard._dtypes import dtype_label
from keyguard._patterns import HOLE, template
from keyguard._regex import compile_patterns
from keyguard.engine import _knowledge as knowledge
from keyguard.engine._infer import (
    SAMPLE,
    Candidate,
    RenameRule,
    evaluate,
    near_prefix_candidates,
    prefix_candidates,
    sample,
    segment_candidates,
    shift_candidates,
)
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import (
    AddPrefix,
    Applicability,
    Fuse,
    MapKeys,
    Rename,
    ReplacePrefix,
    Rule,
    ShiftIndex,
    Split,
    StripPrefix,
    Transpose,
)
from keyguard.report import _kinds as kinds
from keyguard.report._build import EXAMPLES, make_finding
from keyguard.report._model import Example, Finding, Fix, Report, SourceRef, Summary
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._resolve import Source, read_keys

MAX_ROUNDS: Final = 6
_FLOAT_DTYPES: Final = frozenset(
    {
        "F16",
        "BF16",
        "F32",
        "F64",
        "F8_E5M2",
        "F8_E4M3",
        "F8_E5M2FNUZ",
        "F8_E4M3FNUZ",
        "F8_E8M0",
        "F4",
        "F6_E2M3",
        "F6_E3M2",
    }
)
_SHAPE_OF: Final = operator.itemgetter(0)  # TensorInfo.shape
_DTYPE_OF: Final = operator.itemgetter(1)  # TensorInfo.dtype
_EMBEDDING: Final = re.compile(
    r"(?:^|\.)(?:embed_tokens|word_embeddings|wte|embed_in|embed_out|shared|lm_head|embeddings)(?:\.|$)"
)


def diagnose(
    checkpoint: Source,
    expected: Source,
    *,
    ignore: Iterable[str] = (),
    container: str | None = None,
    architecture: str | None = None,
) -> Report:
    """Compare the keys a checkpoint holds with the keys a model expects, and explain every difference.

    Args:
        checkpoint: any source ``keyguard.read_keys`` accepts: the weights to load.
        expected: any source: what the model expects (a module, a ``config.json`` folder, a manifest, a checkpoint
            known to load).
        ignore: regular expressions; keys matching any of them (on either side) are left out and counted.
        container: for pickle checkpoints holding several state dicts, the one to read.
        architecture: for ``config.json`` folders, the model class to build.

    Returns:
        A ``Report``: findings grouped with stable codes, a summary, and the safe fix plan.
    """
    patterns = compile_patterns(ignore, "ignore")  # PatternError, before reading anything
    ck = read_keys(checkpoint, container=container)
    ex = read_keys(expected, architecture=architecture)
    return _Engine(ck, ex, patterns).run()


@dataclass
class _Accepted:
    """A rule the engine kept, and the keys it explains."""

    kind: str
    rules: list[Rule]
    applicability: Applicability
    candidate: Candidate
    pairs: dict[str, str] = field(default_factory=dict)  # original checkpoint key -> expected key
    note: str | None = None
    touched: list[str] = field(default_factory=list)  # original keys this rule renamed
    helped: int = 0  # keys that reached an expected key through this rule (alone or with later ones)


@dataclass
class _Ambiguity:
    keys: dict[str, list[str]]  # original checkpoint key -> candidate expected keys
    rules: list[Rule]
    why: str


class _Engine:
    def __init__(self, ck: KeySet, ex: KeySet, ignore: Sequence[re.Pattern[str]]) -> None:
        self.ck_set, self.ex_set = ck, ex

        def kept(keys: KeySet) -> dict[str, TensorInfo]:
            if not ignore:
                return dict(keys.tensors)
            return {k: v for k, v in keys.tensors.items() if not any(p.search(k) for p in ignore)}

        self.C = kept(ck)
        self.E = kept(ex)
        self.ignored = len(ck) - len(self.C) + len(ex) - len(self.E)
        exact = self.C.keys() & self.E.keys()
        self.exact = exact
        self.resolved: dict[str, str] = {k: k for k in self.C if k in exact} if exact else {}
        open_c = [k for k in self.C if k not in exact] if exact else list(self.C)
        self.cur: dict[str, str] = dict(zip(open_c, open_c))  # open key -> current name
        self.by_cur: dict[str, str] = dict(self.cur)  # current name -> open key (identical at the start)
        self.open_e: set[str] = self.E.keys() - exact
        # whole-side facts that let the per-rule checks skip work on large inputs
        shapes = set(map(_SHAPE_OF, self.C.values())) | set(map(_SHAPE_OF, self.E.values()))
        dtypes = set(map(_DTYPE_OF, self.C.values())) | set(map(_DTYPE_OF, self.E.values()))
        self.shapes_all_known = None not in shapes
        self.dtypes_all_float = dtypes <= _FLOAT_DTYPES
        self.accepted: list[_Accepted] = []
        self.via: dict[str, int] = {}  # resolved original key -> index of the accepted rule that resolved it
        self.first_rule: dict[str, int] = {}  # original key -> first accepted rule that renamed it
        self.chain: dict[str, list[int]] = {}  # original key -> every rule that renamed it, when more than one
        self.ambiguities: list[_Ambiguity] = []
        self.frozen: list[str] = []  # current names of keys declared ambiguous: no later rule may touch them
        self.fused: list[tuple[Rule, list[str], list[str]]] = []  # rule, checkpoint keys, expected keys
        self.findings: list[Finding] = []

    # ------------------------------------------------------------------------------------------------ driver
    def run(self) -> Report:
        for _ in range(MAX_ROUNDS):
            if not self.cur or not self.open_e or not self._round():
                break
        self._finalize()
        self._fused_split()
        shape_bad = self._pair_findings()
        self._leftover_findings()
        self._ambiguity_findings()
        return self._report(shape_bad)

    # ---------------------------------------------------------------------------------------------- inference
    def _round(self) -> bool:
        names = list(self.by_cur)
        expected = list(self.E) if len(self.open_e) == len(self.E) else [k for k in self.E if k in self.open_e]
        open_names = set(names)
        candidates = [
            *prefix_candidates(names, open_names, expected, self.open_e),
            *segment_candidates(names, expected),
            *shift_candidates(names, expected),
        ]
        unique: dict[str, Candidate] = {}
        for cand in candidates:
            previous = unique.get(cand.identity)
            if previous is None or cand.known > previous.known:
                unique[cand.identity] = cand
        scored: list[tuple[int, Candidate]] = []
        contenders = list(unique.values())
        if len(names) > 4 * SAMPLE:
            contenders = self._screen(contenders, names)
        for cand in contenders:
            evaluate(cand, names, self.open_e)
        # most landings first; a candidate landing exactly like one already scored shares its support
        by_size = sorted(contenders, key=lambda c: -len(c.landing))
        for cand in by_size:
            if not cand.landing:
                break
            twin = next(
                (s for s, o in scored if len(o.landing) == len(cand.landing) and o.landing == cand.landing), None
            )
            support = twin if twin is not None else self._support(cand.landing)
            if support:
                scored.append((support, cand))
        if not scored:
            return self._lookahead(names, expected)
        scored.sort(key=lambda item: (-item[0], not item[1].known, not item[1].general, item[1].complexity))
        taken_c: set[str] = set()
        taken_e: set[str] = set()
        progress = False
        for support, cand in scored:
            pairs = (
                {n: e for n, e in cand.landing.items() if n not in taken_c and e not in taken_e}
                if taken_c or taken_e
                else cand.landing
            )
            if not pairs:
                continue
            rivals = [
                other
                for s, other in scored
                if other is not cand and s == support and other.landing != cand.landing and _conflicts(other, pairs)
            ]
            if rivals and not (cand.known and not any(r.known for r in rivals)):
                self._record_tie(cand, rivals, pairs, taken_c, taken_e, scored)
                progress = True
                continue
            if self._accept(cand, pairs):
                progress = True
                taken_c.update(pairs)
                taken_e.update(pairs.values())
                break  # names changed: re-generate candidates from what is left
        return progress

    def _lookahead(self, names: list[str], expected: list[str]) -> bool:
        """When no rule lands a key, take a prefix step after which a segment rule lands some (two edits at once)."""
        for step in near_prefix_candidates(names, expected, self.open_e):
            evaluate(step, names, self.open_e)
            renamed = _rename_all([step.rule], step.renamed)
            if not renamed or len(set(renamed.values())) != len(renamed):
                continue
            if not set(renamed.values()).isdisjoint(self.by_cur.keys() - renamed.keys()):
                continue
            if self._renames_resolved(step.rule):
                continue
            moved = [renamed.get(n, n) for n in names]
            followers = segment_candidates(moved, expected)
            for follower in followers:
                evaluate(follower, moved, self.open_e)
            if not any(f.landing for f in followers):
                continue
            index = len(self.accepted)
            accepted = _Accepted(step.kind, [step.rule], Applicability.safe, step)
            for name, new in renamed.items():
                original = self.by_cur.pop(name)
                accepted.touched.append(original)
                first = self.first_rule.setdefault(original, index)
                if first != index:
                    self.chain.setdefault(original, [first]).append(index)
                self.cur[original] = new
                self.by_cur[new] = original
            self.accepted.append(accepted)
            return True
        return False

    def _screen(self, contenders: list[Candidate], names: list[str]) -> list[Candidate]:
        """On many keys, try every candidate on a sample first: only those that land a fair share of it, and that
        land it differently from every better candidate (possible rivals), are evaluated on all keys."""
        probe = sample(names)
        for cand in contenders:
            evaluate(cand, probe, self.open_e)
        best = max((len(c.landing) for c in contenders), default=0)
        ordered = sorted(contenders, key=lambda c: (-len(c.landing), not c.known, not c.general, c.complexity))
        kept: list[Candidate] = []
        for cand in ordered:
            if not cand.landing or len(cand.landing) < best / 2:
                break
            if all(cand.landing != other.landing for other in kept):
                kept.append(cand)
        return kept

    def _support(self, landing: dict[str, str]) -> int:
        """How many landing pairs have compatible shapes (equal, or unknown on a side); C-level over columns."""
        ours = list(map(_SHAPE_OF, map(self.C.__getitem__, map(self.by_cur.__getitem__, landing))))
        theirs = list(map(_SHAPE_OF, map(self.E.__getitem__, landing.values())))
        equal: int = sum(map(operator.eq, ours, theirs))
        if None in ours or None in theirs:
            equal += sum(1 for a, b in zip(ours, theirs) if (a is None or b is None) and a != b)
        return equal

    def _record_tie(
        self,
        cand: Candidate,
        rivals: list[Candidate],
        pairs: dict[str, str],
        taken_c: set[str],
        taken_e: set[str],
        scored: list[tuple[int, Candidate]],
    ) -> None:
        """Declare the tied keys ambiguous, with every candidate target any rule offers for them.

        The affected set is closed over every scored candidate: a name is in it when one of its targets is, and a
        target when one of its names is, so no true target is left out of the candidates shown.
        """
        names = set(pairs) | {n for r in rivals for n in r.landing if n in pairs or r.landing[n] in pairs.values()}
        targets = set(pairs.values())
        everyone = [c for _, c in scored]
        for _ in range(8):
            grown = False
            for other in everyone:
                for name, target in other.landing.items():
                    if name in taken_c or target in taken_e:
                        continue
                    linked = name in names or target in targets
                    if linked and (name not in names or target not in targets):
                        names.add(name)
                        targets.add(target)
                        grown = True
            if not grown:
                break
        options: dict[str, list[str]] = {}
        for name in [n for n in self.by_cur if n in names]:  # in key order, so reports are reproducible
            offered = dict.fromkeys(other.landing[name] for other in everyone if other.landing.get(name) in targets)
            options[self.by_cur[name]] = list(offered)
        for original, choices in options.items():
            name = self.cur.pop(original)
            del self.by_cur[name]
            self.frozen.append(name)
            taken_c.add(name)
            for target in choices:
                self.open_e.discard(target)
                taken_e.add(target)
        for target in targets - taken_e:
            self.open_e.discard(target)
            taken_e.add(target)
        self.ambiguities.append(
            _Ambiguity(options, [cand.rule, *(r.rule for r in rivals)], "several rules explain these keys equally well")
        )

    def _accept(self, cand: Candidate, pairs: dict[str, str]) -> bool:
        if isinstance(cand.rule, ShiftIndex) and self._group_partly_resolved(cand.rule):
            # part of the numbered group already matches by name: an offset cannot be told from a coincidence
            self._ambiguous_pairs(cand, pairs, "some blocks of this numbered group already match as they stand")
            return True
        rules = self._narrow(cand, pairs)
        narrowed_rename = isinstance(cand.rule, Rename) and any(isinstance(r, MapKeys) for r in rules)
        # narrowed rules rename a subset of what the candidate renames
        if rules == [cand.rule] and len(cand.renamed) == len(cand.targets):
            renamed = dict(zip(cand.renamed, cand.targets))  # evaluate() already renamed every key
            if self.frozen:
                renamed = {n: t for n, t in renamed.items() if n in self.by_cur}
        else:
            renamed = _rename_all(rules, [n for n in cand.renamed if n in self.by_cur])
        # a rename onto a name another key keeps, or two renames onto one name, would lose a tensor
        new_names = set(renamed.values())
        if (
            len(new_names) != len(renamed)
            or not new_names.isdisjoint(self.by_cur.keys() - renamed.keys())
            or not new_names.isdisjoint(self.resolved.values())
        ):
            rules = [MapKeys(mapping=dict(pairs))]
            renamed = dict(pairs)
        if any(self._renames_resolved(rule) for rule in rules):
            rules = [MapKeys(mapping=dict(pairs))]
            renamed = dict(pairs)
        # judge the group with the rule as inferred, before narrowing: a scope must not hide the group's other blocks
        unscoped = {n: cand.rule.rename(n) or n for n in self.by_cur.keys() - pairs.keys()}
        suspicious = self._partial_groups(pairs, unscoped)
        if suspicious:
            # part of a numbered group lands while other blocks of the same group stay unmatched on both sides:
            # the block numbers may be offset, so the blocks that land could be the wrong ones
            doubtful = {n: e for n, e in pairs.items() if template(e)[0] in suspicious}
            self._ambiguous_group(cand, doubtful, suspicious, renamed)
            pairs = {n: e for n, e in pairs.items() if n not in doubtful}
            if not pairs:
                return True
            rules = [MapKeys(mapping=dict(pairs))]
            renamed = dict(pairs)
        index = len(self.accepted)
        accepted = _Accepted(cand.kind, rules, Applicability.safe, cand)
        # move the renamed keys in bulk (C-level maps): this runs once per rule over up to every key
        originals = list(map(self.by_cur.pop, renamed))
        accepted.touched = originals
        for original in self.first_rule.keys() & set(originals):  # renamed before: now a chain of rules
            self.chain.setdefault(original, [self.first_rule[original]]).append(index)
        self.first_rule.update(
            dict.fromkeys(originals, index)
            if not self.first_rule
            else {o: index for o in originals if o not in self.first_rule}
        )
        news = list(renamed.values())
        lands = list(map(self.open_e.__contains__, news))
        landed = dict(compress(zip(originals, news), lands))
        stays = dict(compress(zip(originals, news), map(operator.not_, lands)))
        for original in landed:
            del self.cur[original]
        self.open_e.difference_update(landed.values())
        self.resolved.update(landed)
        self.via.update(dict.fromkeys(landed, index))
        accepted.pairs = landed
        self.cur.update(stays)
        self.by_cur.update(zip(stays.values(), stays))
        if narrowed_rename:
            accepted.applicability = Applicability.unsafe
            accepted.note = "the rename also matches keys that are already right, so it is applied key by key"
        self.accepted.append(accepted)
        return True

    def _finalize(self) -> None:
        """Settle each rule's applicability on all the keys it helped map, then let no rule be more applicable
        than an earlier rule the same keys depend on (a plan applies them in order)."""
        helped: dict[int, dict[str, str]] = {index: acc.pairs for index, acc in enumerate(self.accepted)}
        for original, chain in self.chain.items():  # keys that reached their target through several rules
            if original in self.resolved:
                for index in chain[:-1]:
                    helped[index] = {**helped[index], original: self.resolved[original]}
        for index, acc in enumerate(self.accepted):
            acc.helped = len(helped[index])
        for index, acc in enumerate(self.accepted):
            level, note = self._applicability(acc.candidate, helped.get(index, {}))
            if level.rank < acc.applicability.rank:
                acc.applicability, acc.note = level, note
        used_by: dict[int, list[int]] = {}
        for original, chain in self.chain.items():
            if original in self.via:
                for i in chain[:-1]:
                    used_by.setdefault(i, []).append(self.via[original])
        for index, acc in enumerate(self.accepted):
            if not acc.pairs and index in used_by:  # a step that lands nothing itself
                best = max((self.accepted[j].applicability for j in used_by[index]), key=lambda a: a.rank)
                if best.rank < acc.applicability.rank:
                    acc.applicability, acc.note = best, f"only useful with later rules that are {best.value}"
        for original, chain in self.chain.items():
            if original in self.via:
                weakest = min((self.accepted[i] for i in chain), key=lambda a: a.applicability.rank)
                last = self.accepted[self.via[original]]
                if weakest.applicability.rank < last.applicability.rank:
                    last.applicability = weakest.applicability
                    last.note = f"depends on an earlier rule that is {weakest.applicability.value}"
        for acc in self.accepted:
            update = {"applicability": acc.applicability, "reason": _code(acc.candidate.kind)}
            acc.rules = [rule.model_copy(update=update) for rule in acc.rules]

    def _ambiguous_pairs(self, cand: Candidate, pairs: dict[str, str], why: str) -> None:
        options: dict[str, list[str]] = {}
        for name, target in pairs.items():
            original = self.by_cur.pop(name)
            del self.cur[original]
            self.frozen.append(name)
            self.open_e.discard(target)
            options[original] = [target]
        self.ambiguities.append(_Ambiguity(options, [cand.rule], why))

    def _ambiguous_group(
        self, cand: Candidate, doubtful: dict[str, str], templates: set[str], renamed: dict[str, str]
    ) -> None:
        """Declare a whole numbered group ambiguous: the blocks that land and those left on both sides."""
        options: dict[str, list[str]] = {}
        leftover_e = [e for e in self.open_e if e not in doubtful.values() and template(e)[0] in templates]
        for name in list(self.by_cur):
            new = renamed.get(name, name)
            if name in doubtful or template(new)[0] in templates:
                original = self.by_cur.pop(name)
                del self.cur[original]
                self.frozen.append(name)
                options[original] = [doubtful[name]] if name in doubtful else []
        for target in [*doubtful.values(), *leftover_e]:
            self.open_e.discard(target)
        for choices in options.values():
            choices.extend(e for e in leftover_e if e not in choices)
        self.ambiguities.append(
            _Ambiguity(options, [cand.rule], "other blocks of the same numbered group stay unmatched (offset?)")
        )

    def _partial_groups(self, pairs: dict[str, str], renamed: dict[str, str]) -> set[str]:
        if len(self.open_e) <= len(pairs):
            return set()  # every open expected key lands: nothing of any group is left over
        landed = {template(e)[0] for e in pairs.values()}
        numbered = {t for t in landed if HOLE in t}
        if not numbered:
            return set()
        targets = set(pairs.values())
        left_c = {template(renamed.get(n, n))[0] for n in renamed} & numbered
        open_first: dict[str, set[int]] = {}
        for e in self.open_e:
            if e not in targets:
                shape, numbers = template(e)
                if shape in numbered:
                    open_first.setdefault(shape, set()).add(numbers[0])
        landed_first: dict[str, set[int]] = {}
        for e in targets:
            shape, numbers = template(e)
            if shape in numbered:
                landed_first.setdefault(shape, set()).add(numbers[0])
        suspicious = set(open_first) & left_c
        # blocks missing *before* the ones that land also suggest an offset (trailing ones: a smaller model)
        suspicious |= {t for t, low in open_first.items() if min(low) < min(landed_first.get(t, {0}))}
        return suspicious

    def _group_partly_resolved(self, rule: ShiftIndex) -> bool:
        block = re.compile(re.escape(rule.prefix) + r"[0-9]+(?:\.|$)")
        return any(block.match(name) for name in self.resolved.values() if name.startswith(rule.prefix))

    def _renames_resolved(self, rule: Rule) -> bool:
        """True when ``rule`` would rename a key that is already right, or one declared ambiguous."""
        literal = _literal(rule)
        return any(
            literal in name and rule.rename(name) is not None for name in (*self.resolved.values(), *self.frozen)
        )

    def _narrow(self, cand: Candidate, pairs: dict[str, str]) -> list[Rule]:
        """The candidate's rule, narrowed until it renames no key that is already right."""
        rule = cand.rule
        if isinstance(rule, AddPrefix):
            scope = sorted({name.split(".", 1)[0] for name in pairs})
            rule = AddPrefix(prefix=rule.prefix, only=scope)
        if not self._renames_resolved(rule):
            return [rule]
        if isinstance(rule, (StripPrefix, ReplacePrefix)):
            old = rule.prefix if isinstance(rule, StripPrefix) else rule.old
            new = "" if isinstance(rule, StripPrefix) else rule.new
            narrowed: list[Rule] = []
            leftovers: dict[str, str] = {}
            by_next: dict[str, dict[str, str]] = {}
            for name, target in pairs.items():
                head = name[len(old) :].split(".", 1)[0]
                by_next.setdefault(head, {})[name] = target
            for head, group in by_next.items():
                option = ReplacePrefix(old=f"{old}{head}.", new=f"{new}{head}.")
                if self._renames_resolved(option) or not all(n.startswith(option.old) for n in group):
                    leftovers.update(group)
                else:
                    narrowed.append(option)
            if leftovers:
                narrowed.append(MapKeys(mapping=leftovers))
            return narrowed
        return [MapKeys(mapping=dict(pairs))]

    def _applicability(self, cand: Candidate, pairs: dict[str, str]) -> tuple[Applicability, str | None]:
        unknown = mixed = 0
        if not (self.shapes_all_known and self.dtypes_all_float):
            ours = list(map(self.C.__getitem__, pairs))
            theirs = list(map(self.E.__getitem__, pairs.values()))
            unknown = [*map(_SHAPE_OF, ours), *map(_SHAPE_OF, theirs)].count(None)
            dtype_pairs = set(zip(map(_DTYPE_OF, ours), map(_DTYPE_OF, theirs)))
            mixed = sum(1 for a, b in dtype_pairs if a and b and (a in _FLOAT_DTYPES) != (b in _FLOAT_DTYPES))
        if mixed:
            return Applicability.unsafe, "some pairs match a float tensor with an integer one"
        if unknown:
            return Applicability.unsafe, "shapes are unknown on one side, so the mapping cannot be proven"
        rule = cand.rule
        known_prefix = (
            isinstance(rule, (StripPrefix, AddPrefix))
            or (isinstance(rule, ReplacePrefix) and cand.kind in ("extra_prefix", "missing_prefix"))
        ) and _prefix_of(rule) in knowledge.KNOWN_PREFIXES
        if len(pairs) < 2 and not cand.known and not known_prefix:
            return Applicability.display_only, "inferred from a single key: a candidate, never applied"
        return Applicability.safe, None

    # -------------------------------------------------------------------------------------------- fused/split
    def _fused_split(self) -> None:
        for name in list(self.by_cur):
            if name not in self.by_cur:
                continue
            parts = name.split(".")
            for i, segment in enumerate(parts):
                pieces = knowledge.FUSIONS.get(segment)
                if not pieces:
                    continue
                targets = [".".join([*parts[:i], p, *parts[i + 1 :]]) for p in pieces]
                if all(t in self.open_e for t in targets) and self._concat_fits(
                    [self.C[self.by_cur[name]]], [self.E[t] for t in targets]
                ):
                    sizes = [_dims(self.E[t])[0] for t in targets]
                    original = self.by_cur[name]
                    self._take_fused(Split(source=name, targets=targets, sizes=sizes), [original], targets)
                    break
        for target in [k for k in self.E if k in self.open_e]:
            parts = target.split(".")
            for i, segment in enumerate(parts):
                pieces = knowledge.FUSIONS.get(segment)
                if pieces:
                    sources = [".".join([*parts[:i], p, *parts[i + 1 :]]) for p in pieces]
                    if all(s in self.by_cur for s in sources) and self._concat_fits(
                        [self.E[target]], [self.C[self.by_cur[s]] for s in sources]
                    ):
                        self._take_fused(
                            Fuse(sources=sources, target=target), [self.by_cur[s] for s in sources], [target]
                        )
                        break
            if (
                target in self.open_e
                and len(parts) >= 2
                and parts[-2] == "experts"
                and parts[-1] in knowledge.STACKED_EXPERTS
            ):
                self._stacked_experts(target, parts)

    def _stacked_experts(self, target: str, parts: list[str]) -> None:
        info = self.E[target]
        if info.shape is None or len(info.shape) != 3:
            return
        count = info.shape[0]
        base = ".".join(parts[:-1])
        for family in knowledge.STACKED_EXPERTS[parts[-1]]:
            sources = [f"{base}.{n}.{piece}.weight" for n in range(count) for piece in family]
            if not all(s in self.by_cur for s in sources):
                continue
            shapes = [_dims(self.C[self.by_cur[s]]) for s in sources]
            if any(len(s) != 2 for s in shapes):
                continue
            fused_rows = sum(s[0] for s in shapes[: len(family)])
            if (count, fused_rows, shapes[0][1]) != info.shape:
                continue
            rule = Fuse(sources=sources, target=target, stack=True, parts=len(family))
            self._take_fused(rule, [self.by_cur[s] for s in sources], [target])
            return

    def _concat_fits(self, whole: list[TensorInfo], parts: list[TensorInfo]) -> bool:
        shape = _dims(whole[0])
        dims = [_dims(p) for p in parts]
        if not shape or any(len(d) != len(shape) for d in dims):
            return False
        return all(d[1:] == shape[1:] for d in dims) and sum(d[0] for d in dims) == shape[0]

    def _take_fused(self, rule: Rule, originals: list[str], targets: list[str]) -> None:
        for original in originals:
            name = self.cur.pop(original)
            del self.by_cur[name]
        for target in targets:
            self.open_e.discard(target)
        self.fused.append((rule.model_copy(update={"reason": kinds.FUSED_SPLIT.code}), originals, targets))

    # ------------------------------------------------------------------------------------------------ findings
    def _pair_findings(self) -> set[str]:
        """Rule findings, then shape / transpose / dtype findings over every mapped pair."""
        shape_bad: dict[str, str] = {}
        transposed: list[str] = []
        dtype_diff: list[str] = []
        casts: Counter[int] = Counter()
        originals = list(self.resolved)
        targets = list(self.resolved.values())
        ours = list(map(self.C.__getitem__, originals))
        theirs = list(map(self.E.__getitem__, targets))
        # compare whole columns in C; only the (usually few) differing pairs are looked at one by one
        differ = list(map(operator.ne, map(_SHAPE_OF, ours), map(_SHAPE_OF, theirs)))
        differ_dtype = list(map(operator.ne, map(_DTYPE_OF, ours), map(_DTYPE_OF, theirs)))
        for i in compress(range(len(originals)), map(operator.or_, differ, differ_dtype)):
            original, target, a, b = originals[i], targets[i], ours[i], theirs[i]
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
        problem = set(shape_bad) | set(transposed)
        merged: dict[object, list[int]] = {}
        for index, acc in enumerate(self.accepted):
            rule = acc.candidate.rule
            signature: object = ("rename", rule.old, rule.new, acc.applicability) if isinstance(rule, Rename) else index
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
                    self._rule_finding(self.accepted[indices[0]], keys, sum(casts[i] for i in indices), rules)
                )
        if shape_bad:
            self.findings.append(self._shape_finding(shape_bad))
        if transposed:
            transpose = Transpose(keys=[self.resolved[k] for k in transposed], reason=kinds.TRANSPOSED.code)
            self.findings.append(
                self._finding(
                    kinds.TRANSPOSED,
                    f"{len(transposed)} 2-D tensor(s) are stored transposed (e.g. GPT-2 Conv1D weights into nn.Linear)",
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
                    ctx={"count": len(transposed)},
                )
            )
        groups: dict[tuple[str, str], list[tuple[Rule, list[str], list[str]]]] = {}
        for fused, originals, targets in self.fused:
            anchor = fused.source if isinstance(fused, Split) else getattr(fused, "target", "")
            groups.setdefault((fused.op, template(anchor)[0]), []).append((fused, originals, targets))
        for members in groups.values():
            self.findings.append(self._fused_finding(members))
        if dtype_diff:
            self.findings.append(self._dtype_finding(dtype_diff))
        return problem

    def _rule_finding(self, acc: _Accepted, keys: list[str], casts: int, rules: list[Rule]) -> Finding:
        cand = acc.candidate
        rule = cand.rule
        targets = list(map(self.resolved.__getitem__, keys))
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
            origin = knowledge.prefix_origin(prefix)
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
            " these keys out with --ignore",
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
            fix=Fix(applicability=Applicability.unsafe, rules=rules, note="splitting or fusing changes the data"),
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

    def _leftover_findings(self) -> None:
        missing = [k for k in self.E if k in self.open_e]
        unexpected = [k for k in self.C if k in self.cur]
        tied = self.ex_set.tied_to()
        tied_groups = {k: g for g in self.ex_set.tied for k in g}
        present = set(self.resolved.values())
        categories: dict[str, list[str]] = {}
        for key in missing:
            group = tied_groups.get(key, ())
            if any(other in present for other in group if other != key):
                why = "tied"
            elif self._is_task_head(key):
                why = "head"
            elif key.endswith("num_batches_tracked"):
                why = "legacy"
            else:
                why = ""
            categories.setdefault(why, []).append(key)
        del tied
        for why, keys in categories.items():
            self.findings.append(self._missing_finding(why, keys, unexpected))
        categories = {}
        non_persistent = self.ex_set.non_persistent
        for key in unexpected:
            name = self.cur[key]
            if name in non_persistent:
                why = "non-persistent"
            elif knowledge.is_legacy_buffer(name):
                why = "legacy"
            else:
                why = ""
            categories.setdefault(why, []).append(key)
        for why, keys in categories.items():
            self.findings.append(self._unexpected_finding(why, keys, missing))

    def _is_task_head(self, key: str) -> bool:
        if not self.resolved or not knowledge.is_task_head(key):
            return False  # with nothing else loaded, a missing head is not the explanation
        head = key.split(".", 1)[0]
        # a head is "absent on purpose" only when the checkpoint holds none of it
        return not any(k.split(".", 1)[0] == head for k in self.resolved.values())

    def _missing_finding(self, why: str, keys: list[str], unexpected: list[str]) -> Finding:
        benign = {
            "tied": "tied to a weight the checkpoint holds (transformers re-ties it; checkpoints leave it out on"
            " purpose). load_state_dict(strict=True) still reports it: --ignore it",
            "head": "a task head absent from a base-model checkpoint: it starts from its initialisation, as expected"
            " when fine-tuning. --ignore it to load the rest strictly",
            "legacy": "older BatchNorm checkpoints lack num_batches_tracked; PyTorch fills it in",
        }.get(why)
        if benign is not None:
            benign = benign.replace("--ignore it", f"--ignore {_ignore_hint(keys)}")
        label = {"tied": " (tied weights)", "head": " (a task head)", "legacy": " (legacy)"}.get(why, "")
        hint = None if why else self._closest(keys, [self.cur[k] for k in unexpected])
        return self._finding(
            kinds.MISSING,
            f"{len(keys):,} expected key(s) are missing from the checkpoint{label}",
            [],
            keys,
            examples=[Example(expected=k) for k in keys[:EXAMPLES]],
            benign=benign,
            hint=hint,
            ctx={"count": len(keys), "category": why or None},
            pattern_keys=keys,
        )

    def _unexpected_finding(self, why: str, keys: list[str], missing: list[str]) -> Finding:
        benign = {
            "legacy": "legacy buffers older code saved and current models recompute at init; safe to drop:"
            " --drop-unexpected when fixing, or --ignore",
            "non-persistent": "non-persistent buffers of the model, never part of its state dict; safe to drop:"
            " --drop-unexpected when fixing, or --ignore",
        }.get(why)
        label = {"legacy": " (legacy buffers)", "non-persistent": " (non-persistent buffers)"}.get(why, "")
        names = [self.cur[k] for k in keys]
        renamed = sum(1 for k in keys if self.cur[k] != k)
        message = f"{len(keys):,} checkpoint key(s) are not expected by the model{label}"
        if renamed:
            message += f"; the plan renames {renamed:,} of them without finding a match"
        return self._finding(
            kinds.UNEXPECTED,
            message,
            keys,
            [],
            examples=[
                Example(checkpoint=k, detail=None if self.cur[k] == k else f"renamed to {self.cur[k]}")
                for k in keys[:EXAMPLES]
            ],
            benign=benign,
            hint=None if why else self._closest(names, missing),
            ctx={"count": len(keys), "category": why or None},
        )

    def _closest(self, keys: list[str], pool: list[str]) -> str | None:
        if not pool or not keys:
            return None
        pool_sample = pool[:2000]
        hints = []
        for key in keys[:3]:
            match = difflib.get_close_matches(key, pool_sample, n=1, cutoff=0.6)
            if match:
                hints.append(f"{key} ~ {match[0]}")
        return "closest candidates: " + "; ".join(hints) if hints else None

    def _ambiguity_findings(self) -> None:
        for amb in self.ambiguities:
            keys = list(amb.keys)
            targets = list(dict.fromkeys(t for ts in amb.keys.values() for t in ts))
            self.findings.append(
                self._finding(
                    kinds.AMBIGUOUS,
                    f"{len(keys):,} checkpoint key(s) could map to several expected keys ({amb.why})",
                    keys,
                    targets,
                    examples=[
                        Example(checkpoint=k, expected=" | ".join(amb.keys[k]), detail="candidates")
                        for k in keys[:EXAMPLES]
                    ],
                    fix=Fix(
                        applicability=Applicability.display_only,
                        rules=[_display_only(r) for r in amb.rules],
                        note="never applied: write the mapping you mean in a plan (--plan)",
                    ),
                    ctx={"count": len(keys), "candidates": dict(list(amb.keys.items())[:20])},
                )
            )

    def _finding(
        self,
        kind: kinds.FindingKind,
        message: str,
        checkpoint_keys: list[str],
        expected_keys: list[str],
        *,
        examples: list[Example],
        fix: Fix | None = None,
        benign: str | None = None,
        hint: str | None = None,
        ctx: dict[str, Any] | None = None,
        pattern_keys: list[str] | None = None,
    ) -> Finding:
        return make_finding(
            kind,
            message,
            checkpoint_keys=checkpoint_keys,
            expected_keys=expected_keys,
            examples=examples,
            fix=fix,
            benign=benign,
            hint=hint,
            ctx=ctx,
            pattern_keys=pattern_keys,
            count=len(checkpoint_keys) or len(expected_keys),
        )

    # -------------------------------------------------------------------------------------------------- report
    def _report(self, problem: set[str]) -> Report:
        matched = len(self.exact) - len(problem & self.exact)
        safe = [acc.applicability is Applicability.safe for acc in self.accepted]
        fixable = sum(map(safe.__getitem__, self.via.values())) - sum(
            1 for k in problem if k in self.via and safe[self.via[k]]
        )
        if not self.exact and self.C and self.E:
            self.findings.insert(0, self._no_overlap(fixable))
        safe_rules: list[Rule] = []
        all_rules: list[Rule] = []
        for acc in self.accepted:
            if (acc.pairs or acc.helped) and acc.applicability.at_least(Applicability.unsafe):
                all_rules.extend(acc.rules)
                if acc.applicability is Applicability.safe:
                    safe_rules.extend(acc.rules)
        for finding in self.findings:
            if finding.kind in ("transposed", "fused_split") and finding.fix is not None:
                all_rules.extend(finding.fix.rules)
        missing = sum(f.count for f in self.findings if f.kind == "missing")
        unexpected = sum(f.count for f in self.findings if f.kind == "unexpected")
        shape = sum(f.count for f in self.findings if f.kind in ("shape_mismatch", "transposed"))
        ambiguous = sum(f.count for f in self.findings if f.kind == "ambiguous")
        summary = Summary.of(
            expected=len(self.E),
            checkpoint=len(self.C),
            matched=matched,
            fixable=fixable,
            missing=missing,
            unexpected=unexpected,
            shape_mismatches=shape,
            ambiguous=ambiguous,
            ignored=self.ignored,
        )
        order = {"fatal": 0, "error": 1, "warning": 2, "info": 3}
        findings = sorted(self.findings, key=lambda f: (order[f.severity.value], f.code))
        return Report(
            ok=not any(f.severity.at_least(kinds.Severity.error) for f in findings),
            checkpoint=SourceRef(location=self.ck_set.location, format=self.ck_set.format, tensors=len(self.ck_set)),
            expected=SourceRef(location=self.ex_set.location, format=self.ex_set.format, tensors=len(self.ex_set)),
            summary=summary,
            findings=findings,
            plan=Plan(rules=safe_rules),
            unsafe_plan=Plan(rules=all_rules),
        )

    def _no_overlap(self, fixable: int) -> Finding:
        if fixable:
            after = f"; the safe plan maps {fixable:,} of {len(self.E):,} expected keys"
        else:
            after = "; no safe plan could map them"
        return self._finding(
            kinds.NO_OVERLAP,
            "no checkpoint key matches the model as the keys stand: load_state_dict(strict=False) would load"
            f" nothing and leave the model unchanged{after}",
            [],
            [],
            examples=[],
            ctx={"checkpoint": len(self.C), "expected": len(self.E), "fixable": fixable},
        )


def _rename_all(rules: list[Rule], names: list[str]) -> dict[str, str]:
    """New names of ``names`` under ``rules`` (only those that change); prefix rules by slicing, in bulk."""
    if len(rules) == 1 and isinstance(rules[0], (StripPrefix, ReplacePrefix)):
        rule = rules[0]
        old = rule.prefix if isinstance(rule, StripPrefix) else rule.old
        new = "" if isinstance(rule, StripPrefix) else rule.new
        cut = len(old)
        return {n: new + n[cut:] for n in names if n.startswith(old)}
    plan = Plan(rules=rules)
    out: dict[str, str] = {}
    for name in names:
        renamed = plan.rename_key(name)
        if renamed != name:
            out[name] = renamed
    return out


def _ignore_hint(keys: list[str]) -> str:
    """The ``--ignore`` argument that covers exactly ``keys`` (one alternation for a few, the pattern for many)."""
    if len(keys) <= 3:
        body = "|".join(re.escape(k) for k in keys)
        return f"'^(?:{body})$'" if len(keys) > 1 else f"'^{body}$'"
    return f"'{re.escape(keys[0].split('.', 1)[0])}\\.'"


def _conflicts(other: Candidate, pairs: dict[str, str]) -> bool:
    inverse = {target: name for name, target in other.landing.items()}
    for name, target in pairs.items():
        mine = other.landing.get(name)
        if mine is not None and mine != target:
            return True
        theirs = inverse.get(target)
        if theirs is not None and theirs != name:
            return True
    return False


def _display_only(rule: RenameRule | Rule) -> Rule:
    return rule.model_copy(update={"applicability": Applicability.display_only})


def _code(kind: str) -> str:
    return next(k.code for k in kinds.KINDS.values() if k.kind == kind)


def _literal(rule: Rule) -> str:
    if isinstance(rule, StripPrefix):
        return rule.prefix
    if isinstance(rule, ReplacePrefix):
        return rule.old
    if isinstance(rule, ShiftIndex):
        return rule.prefix
    if isinstance(rule, Rename):
        return rule.old.split(".")[0] if rule.old else ""
    return ""


def _prefix_of(rule: StripPrefix | ReplacePrefix | AddPrefix) -> str:
    if isinstance(rule, StripPrefix):
        return rule.prefix
    if isinstance(rule, AddPrefix):
        return rule.prefix
    if rule.old.endswith(rule.new):
        return rule.old[: len(rule.old) - len(rule.new)]
    if rule.new.endswith(rule.old):
        return rule.new[: len(rule.new) - len(rule.old)]
    return rule.old


def _dims(info: TensorInfo) -> tuple[int, ...]:
    """The shape, or ``()`` when unknown (callers treat both as "cannot tell")."""
    return info.shape if info.shape is not None else ()


def _shape(info: TensorInfo) -> str:
    return "?" if info.shape is None else "[" + ", ".join(map(str, info.shape)) + "]"


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
