"""Template alignment: which group of checkpoint keys is which group of expected keys, and how sure that is.

What prefix and segment rules cannot explain (several segments renamed at once, an index moved to another segment,
blocks regrouped into stages, separators changed) is aligned group by group (``_groups``): two groups can be the same
tensors only when their leaf kind, their size and their shapes agree index by index. Three stages, kept apart as in
git's rename detection:

1. *candidates*: every pair of groups with equal signatures, at the coarsest grouping first, then splitting groups
   that match nothing at one index position (``in_layers.0`` / ``in_layers.2``, ``w1`` / ``w2`` / ``w3``);
2. *evidence*: a pair that is the only candidate of both its groups is forced by the shapes; ties are weighed by
   names (``_names``) and user hints. Registration order is not evidence: a converted checkpoint keeps its
   producer's order, not the consumer's;
3. *choice*: forced pairs are ``safe`` when nothing contradicts them and something corroborates them (their names
   agree, or other forced pairs move their sibling modules the same way, or they stay inside a parent that matches
   as it stands) over at least two keys; pairs chosen by names are ``unsafe``; everything else stays a candidate
   (``display_only``) so that the report offers the right target without applying a guess.

One hard rule holds throughout: a checkpoint key that sits inside a subtree whose keys match the model as they
stand can only go to a key of that same subtree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from keyguard.engine._groups import (
    HOLE,
    Group,
    Member,
    ancestors,
    build_groups,
    compatible,
    digit_template,
    own_name,
    signature_index,
    split_leaf,
    split_positions,
    structural_splits,
    transposed,
)
from keyguard.engine._names import path_similarity, same_name, same_path, segment_similarity
from keyguard.fixes._rules import Applicability
from keyguard.sources._keyset import TensorInfo

LEVELS: Final = 3  # coarse groups, then up to two splits
MAX_COMPONENT: Final = 400  # groups per side in one tie weighed by names; larger ties stay candidates
STRONG_NAME: Final = 1.0  # the module's own name agrees (equal up to spelling, or a published equivalent)
WEAK_NAME: Final = 0.25  # the module's own name shares a token: enough to offer a candidate, not to choose one
MARGIN: Final = 0.25  # how much better the chosen candidate must be than the next
PLACEMENT: Final = 0.75  # weight of agreeing (or not) with where decided sibling modules put the parent


@dataclass(frozen=True)
class Evidence:
    """One reason for (or against) a correspondence, kept as data so reports and docs can show why."""

    kind: str  # shape_unique | module | names | siblings | anchored | tie | hint
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@dataclass
class Match:
    """Two groups that hold the same tensors, pairing their members in index order."""

    checkpoint: Group
    expected: Group
    applicability: Applicability
    evidence: list[Evidence] = field(default_factory=list)
    forced: bool = False
    transposed: bool = False
    note: str | None = None
    order: list[Member] | None = None  # the expected members in pairing order, when the holes are permuted

    @property
    def pairs(self) -> list[tuple[Member, Member]]:
        return list(zip(self.checkpoint.members, self.order or self.expected.members))


@dataclass
class Tie:
    """Checkpoint keys that could be any of several expected keys: candidates, never applied."""

    options: dict[str, list[str]]  # original checkpoint key -> expected keys, best first
    why: str
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class Alignment:
    matches: list[Match] = field(default_factory=list)
    ties: list[Tie] = field(default_factory=list)


Entry = tuple[str, str, TensorInfo, int]  # name as it stands, original key, info, position in the source


def align(
    checkpoint: Sequence[Entry],
    expected: Sequence[Entry],
    *,
    anchored: Iterable[str] = (),
    contested: Iterable[str] = (),
    hints: Mapping[str, str] | None = None,
    resolved: Mapping[str, str] | None = None,
    shape_counts: tuple[Mapping[object, int], Mapping[object, int]] | None = None,
) -> Alignment:
    """Align the open keys of both sides.

    Args:
        checkpoint: open checkpoint keys (current name, original key, info, order).
        expected: open expected keys (key, key, info, order).
        anchored: expected keys already matched: their subtrees are fixed points.
        contested: keys (either side) already declared ambiguous: groups of their templates are left alone, since
            aligning the rest of a contested numbered group on its own would read it piecemeal.
        hints: the user's choices, checkpoint key (original or current name) -> expected key.
        resolved: checkpoint keys already mapped (original key -> expected key): their modules tell where the
            rest of each module goes (a bias follows its weight).
        shape_counts: how often each shape occurs among all checkpoint and all expected keys: a lone match of a
            shape found once on each side is offered as a candidate even when nothing confirms it.
    """
    aligner = _Aligner(checkpoint, expected, anchored, contested, dict(hints or {}))
    for key, target in (resolved or {}).items():
        _learn(aligner.module_map, split_leaf(key)[0], split_leaf(target)[0])
        _learn(aligner.module_image, split_leaf(target)[0], split_leaf(key)[0])
    aligner.shape_counts = shape_counts
    return aligner.run()


class _Aligner:
    def __init__(
        self,
        checkpoint: Sequence[Entry],
        expected: Sequence[Entry],
        anchored: Iterable[str],
        contested: Iterable[str],
        hints: dict[str, str],
    ) -> None:
        left_alone = {digit_template(key)[0] for key in contested}
        self.c_groups = structural_splits(
            [g for g in build_groups("checkpoint", checkpoint) if g.template not in left_alone]
        )
        self.e_groups = structural_splits(
            [g for g in build_groups("expected", expected) if g.template not in left_alone]
        )
        self.anchored: set[str] = set()
        anchored_keys = list(anchored)
        for key in anchored_keys:
            self.anchored.update(ancestors(key))
        # the same subtrees with their indices as holes: a block may move to another block of its list
        self.anchored_shapes = {digit_template(a)[0] for a in self.anchored}
        # templates of keys that match as they stand: a group of one of these, paired with the same template's open
        # blocks, would renumber a family that partly matches by name (an offset): that is a contested reading
        self.matched_templates = {digit_template(k)[0] for k in anchored_keys}
        self.matched_counts: dict[str, int] = {}
        for key in anchored_keys:
            template = digit_template(key)[0]
            self.matched_counts[template] = self.matched_counts.get(template, 0) + 1
        self.hints = hints
        self.hint_reduced: set[Group] = set()
        # what decided matches say of the pairs still open: checkpoint module -> model module (and back), checkpoint
        # parent -> model parent; None where matches disagree
        self.module_map: dict[str, str | None] = {}
        self.module_image: dict[str, str | None] = {}
        self.parent_map: dict[str, str | None] = {}
        self.shape_counts: tuple[Mapping[object, int], Mapping[object, int]] | None = None
        self.pending: list[tuple[list[tuple[Group, list[Group]]], str, list[Evidence]]] = []
        self.result = Alignment()

    # ------------------------------------------------------------------------------------------------ driver
    def run(self) -> Alignment:
        if not self.c_groups or not self.e_groups:
            return self.result
        pool_c, pool_e = self.c_groups, self.e_groups
        for level in range(LEVELS):
            edges = self._candidates(pool_c, pool_e)
            used_c, used_e = self._decide(pool_c, pool_e, edges)
            rest_c = [g for g in pool_c if g not in used_c]
            rest_e = [g for g in pool_e if g not in used_e]
            if level == LEVELS - 1 or not rest_c or not rest_e:
                break
            pool_c, pool_e = self._refine(rest_c, rest_e)
            if not pool_c or not pool_e:
                break
        self._settle()
        return self.result

    # -------------------------------------------------------------------------------------------- candidates
    def _candidates(self, pool_c: list[Group], pool_e: list[Group]) -> dict[Group, list[Group]]:
        """Compatible expected groups of every checkpoint group, consistent with the anchored subtrees."""
        index = signature_index(pool_e)
        loose = [g for g in pool_e if not g.shapes_known or "?" in g.signature[3]]  # type: ignore[operator]
        edges: dict[Group, list[Group]] = {}
        for group in pool_c:
            exact = index.get(group.signature, []) if group.shapes_known else []
            others = loose if group.shapes_known else pool_e
            found = [*exact, *(g for g in others if g not in exact and compatible(group, g))]
            found = [
                g for g in found if _same_holes(group, g) and self._consistent(group, g) and not self._offset(group, g)
            ]
            if self.hints:
                found = self._apply_hints(group, found, pool_e)
            if found:
                edges[group] = found
        return edges

    def _offset(self, c: Group, e: Group) -> bool:
        """The same names, other blocks, in a family whose other blocks match as they stand: renumbering these
        would read the family one way and keep the matched blocks another (a 1-based list, an inner offset)."""
        if not c.holes or digit_template(c.members[0].name)[0] != digit_template(e.members[0].name)[0]:
            return False
        if digit_template(c.members[0].name)[0] not in self.matched_templates:
            return False
        return any(cm.index != em.index for cm, em in zip(c.members, e.members))

    def _consistent(self, c: Group, e: Group) -> bool:
        """No checkpoint key leaves a subtree that matches as it stands, though it may move to another block of
        the same numbered list (checked on the first and last pair)."""
        if not self.anchored:
            return True
        for cm, em in {0: (c.members[0], e.members[0]), 1: (c.members[-1], e.members[-1])}.values():
            e_shape = digit_template(em.name)[0]
            for parent in ancestors(cm.name):
                shape = digit_template(parent)[0]
                if shape in self.anchored_shapes and not e_shape.startswith(shape + "."):
                    return False
        return True

    def _apply_hints(self, group: Group, found: list[Group], pool_e: list[Group]) -> list[Group]:
        for member in group.members:
            target = self.hints.get(member.key) or self.hints.get(member.name)
            if target is None:
                continue
            chosen = [g for g in pool_e if any(m.name == target for m in g.members)]
            chosen = [g for g in chosen if compatible(group, g) or transposed(group, g)]
            return chosen[:1]
        hinted_targets = set(self.hints.values())
        kept = [g for g in found if not any(m.name in hinted_targets for m in g.members)]
        if len(kept) < len(found):
            self.hint_reduced.add(group)  # what is left of its tie follows from the user's choice
        return kept

    # --------------------------------------------------------------------------------------------- decisions
    def _decide(
        self, pool_c: list[Group], pool_e: list[Group], edges: dict[Group, list[Group]]
    ) -> tuple[set[Group], set[Group]]:
        """Settle the candidate graph: pairs forced by the shapes first, then pairs forced once every module's
        leaves must go to one module (weight and bias together), repeated while that forces more; the ties left
        are weighed by names."""
        used_c: set[Group] = set()
        used_e: set[Group] = set()
        while True:
            edges, narrowed = self._constrain(edges, used_c, used_e)
            reverse = _reverse(edges)
            forced = False
            seen: set[Group] = set()
            for start in pool_c:
                if start not in edges or start in seen:
                    continue
                comp_c, comp_e = self._component(start, edges, reverse)
                seen.update(comp_c)
                if len(comp_c) != 1 or len(comp_e) != 1:
                    continue
                c, e = comp_c[0], comp_e[0]
                if self._hinted(c):
                    evidence = [Evidence("hint", "chosen by --hint")]
                elif c in self.hint_reduced:
                    evidence = [Evidence("hint", "the only candidate left once the hinted keys are taken")]
                elif c in narrowed:
                    evidence = [Evidence("module", "the only candidate in the module its other leaves went to")]
                else:
                    evidence = [Evidence("shape_unique", "the only group of its shapes on both sides")]
                self._record(Match(c, e, Applicability.safe, evidence, forced=True))
                used_c.add(c)
                used_e.add(e)
                forced = True
            if not forced:
                break
        reverse = _reverse(edges)
        seen = set()
        for start in pool_c:
            if start not in edges or start in seen:
                continue
            comp_c, comp_e = self._component(start, edges, reverse)
            seen.update(comp_c)
            used_c.update(comp_c)
            used_e.update(comp_e)
            self._weigh(comp_c, comp_e, edges)
        return used_c, used_e

    def _record(self, match: Match) -> None:
        """Keep a match, and what it says of its modules and their parents for the pairs still open."""
        match.order = _permuted(match.checkpoint, match.expected)
        self.result.matches.append(match)
        for cm, em in match.pairs:
            c_module, e_module = split_leaf(cm.key)[0], split_leaf(em.name)[0]
            _learn(self.module_map, c_module, e_module)
            _learn(self.module_image, e_module, c_module)
            c_up, e_up = _parents(cm.name), _parents(em.name)
            if c_up and e_up:
                _learn(self.parent_map, c_up[0], e_up[0])

    def _constrain(
        self, edges: dict[Group, list[Group]], used_c: set[Group], used_e: set[Group]
    ) -> tuple[dict[Group, list[Group]], set[Group]]:
        """Drop taken groups, and candidates that would split a module: a module whose leaves already went to one
        module sends the rest there, and no other module goes there."""
        out: dict[Group, list[Group]] = {}
        narrowed: set[Group] = set()
        for c, es in edges.items():
            if c in used_c:
                continue
            kept = [e for e in es if e not in used_e and self._module_fits(c, e)]
            if len(kept) < len([e for e in es if e not in used_e]):
                narrowed.add(c)
            if kept:
                out[c] = kept
        return out, narrowed

    def _module_fits(self, c: Group, e: Group) -> bool:
        if not self.module_map:
            return True
        for cm, em in zip(c.members, e.members):
            c_module, e_module = split_leaf(cm.key)[0], split_leaf(em.name)[0]
            image = self.module_map.get(c_module, "")
            if image and image != e_module:
                return False
            source = self.module_image.get(e_module, "")
            if source and source != c_module:
                return False
        return True

    def _hinted(self, group: Group) -> bool:
        return bool(self.hints) and any(m.key in self.hints or m.name in self.hints for m in group.members)

    @staticmethod
    def _component(
        start: Group, edges: dict[Group, list[Group]], reverse: dict[Group, list[Group]]
    ) -> tuple[list[Group], list[Group]]:
        comp_c: list[Group] = []
        comp_e: list[Group] = []
        seen_c: set[Group] = {start}
        seen_e: set[Group] = set()
        stack = [start]
        while stack:
            c = stack.pop()
            comp_c.append(c)
            for e in edges.get(c, ()):
                if e in seen_e:
                    continue
                seen_e.add(e)
                comp_e.append(e)
                for other in reverse.get(e, ()):
                    if other not in seen_c:
                        seen_c.add(other)
                        stack.append(other)
        return comp_c, comp_e

    def _weigh(self, comp_c: list[Group], comp_e: list[Group], edges: dict[Group, list[Group]]) -> None:
        """A tie among groups of equal shapes: names choose where they agree clearly; the rest are
        candidates. A pair is chosen when each is the other's clear favourite (by ``MARGIN``) and the module's
        own name agrees; choosing removes both, which may make others clear, so passes repeat."""
        open_c = set(comp_c)
        open_e = set(comp_e)
        scores: dict[tuple[Group, Group], float] = {}
        if len(comp_c) <= MAX_COMPONENT and len(comp_e) <= MAX_COMPONENT:
            for c in comp_c:
                for e in edges[c]:
                    scores[c, e] = path_similarity(c.path, e.path) + self._placement(c, e)
                    if same_path(c.path, e.path):
                        scores[c, e] += STRONG_NAME
        by_c: dict[Group, list[tuple[float, Group]]] = {}
        by_e: dict[Group, list[tuple[float, Group]]] = {}
        for (c, e), score in scores.items():
            by_c.setdefault(c, []).append((score, e))
            by_e.setdefault(e, []).append((score, c))
        decided = True
        while decided and scores:
            decided = False
            for c in [g for g in comp_c if g in open_c]:
                best, target, runner = _best(by_c.get(c, []), open_e)
                if target is None or best - runner < MARGIN or not _own_name_agrees(c, target):
                    continue
                best_back, source, runner_back = _best(by_e.get(target, []), open_c)
                if source is not c or best_back - runner_back < MARGIN:
                    continue
                evidence = [Evidence("names", f"{'.'.join(c.path) or c.template} ~ {'.'.join(target.path)}")]
                candidates = sum(1 for _, e in by_c.get(c, []) if e in open_e)
                if candidates > 1:
                    evidence.append(Evidence("tie", f"{candidates} groups of equal shapes were candidates"))
                if self._placement(c, target) > 0:
                    evidence.append(Evidence("siblings", "its sibling modules went to the same parent"))
                self._record(Match(c, target, Applicability.unsafe, evidence))
                open_c.discard(c)
                open_e.discard(target)
                decided = True
        if open_c:
            self._tie(
                [g for g in comp_c if g in open_c],
                [g for g in comp_e if g in open_e],
                edges,
                scores,
                "several groups of equal shapes fit and the names do not decide",
            )

    def _placement(self, c: Group, e: Group) -> float:
        """Where decided siblings put this module's parent: agreeing with every pair counts for the candidate,
        contradicting one counts against it (a parent whose children went to several places says nothing)."""
        agree = False
        for cm, em in zip(c.members, e.members):
            c_up, e_up = _parents(cm.name), _parents(em.name)
            image = self.parent_map.get(c_up[0]) if c_up else None
            if image is None:
                continue
            if not e_up or image != e_up[0]:
                return -PLACEMENT
            agree = True
        return PLACEMENT if agree else 0.0

    def _tie(
        self,
        comp_c: list[Group],
        comp_e: list[Group],
        edges: dict[Group, list[Group]],
        scores: dict[tuple[Group, Group], float],
        why: str,
        evidence: Sequence[Evidence] = (),
    ) -> None:
        """Candidates to show, settled once every match is known (``_settle`` keeps only supported ones)."""
        pairs: list[tuple[Group, list[Group]]] = []
        for c in comp_c:
            targets = [e for e in edges.get(c, []) if e in comp_e]
            targets.sort(key=lambda e: -scores.get((c, e), 0.0))
            pairs.append((c, targets))
        self.pending.append((pairs, why, list(evidence)))

    # ------------------------------------------------------------------------------------------------ splits
    def _refine(self, rest_c: list[Group], rest_e: list[Group]) -> tuple[list[Group], list[Group]]:
        """Split the groups that found no candidate at the index position whose parts find the most."""
        c_options = {g: [(p, g.split(p)) for p in split_positions(g)] for g in rest_c}
        e_options = {g: [(p, g.split(p)) for p in split_positions(g)] for g in rest_e}
        e_signatures = {s.signature[:3] for g in rest_e for s in [g, *_flat(e_options[g])]}
        c_signatures = {s.signature[:3] for g in rest_c for s in [g, *_flat(c_options[g])]}
        return _choose(rest_c, c_options, e_signatures), _choose(rest_e, e_options, c_signatures)

    # ----------------------------------------------------------------------------------------- applicability
    def _settle(self) -> None:
        """Safe only with corroboration and two keys; a module's leaves must all go to one module; ties."""
        matches = self.result.matches
        by_module: dict[str, list[Match]] = {}
        for match in matches:
            by_module.setdefault(match.checkpoint.module, []).append(match)
        inconsistent: set[int] = set()
        for group in by_module.values():
            targets = {m.expected.module for m in group}
            if len(targets) > 1:
                inconsistent.update(id(m) for m in group)
        siblings = self._sibling_support(matches)
        self.landing: dict[str, dict[str, tuple[int, ...]]] = {}  # model parent -> checkpoint module -> its index
        # checkpoint list -> checkpoint module -> (the list elements it takes, the model list it goes to)
        self.lists: dict[str, dict[str, tuple[set[int], str]]] = {}
        for match in matches:
            if match.forced and HOLE in match.checkpoint.template:
                self.lists.setdefault(match.checkpoint.template.split(HOLE)[0], {})[match.checkpoint.module] = (
                    {m.index[0] for m in match.checkpoint.members},
                    match.expected.template.split(HOLE)[0],
                )
        for match in matches:
            if match.forced or match.applicability is Applicability.unsafe:
                for cm, em in match.pairs:
                    e_up = _parents(em.name)
                    if e_up:
                        self.landing.setdefault(e_up[0], {})[match.checkpoint.module] = cm.index
        # a module whose leaves were forced by shapes against what its own name and the exact matches say: every
        # leaf of it (the others followed it by the module rule)
        rivalled: dict[str, str] = {}
        for match in matches:
            rival = self._named_rival(match) if match.forced else None
            if rival is not None:
                rivalled[match.checkpoint.module] = (
                    f"its name points to '{rival.pattern()}', whose other blocks match as they stand"
                )
        kept: list[Match] = []
        for match in matches:
            if id(match) in inconsistent:
                self._demote(match, "the leaves of one module would go to different modules")
                continue
            hinted = any(e.kind == "hint" for e in match.evidence)
            if not hinted and self._placement(match.checkpoint, match.expected) < 0:
                # its sibling modules all went under another parent: this pairing contradicts them
                self._demote(match, "its sibling modules went under another parent")
                continue
            if match.forced and match.applicability is Applicability.safe:
                if any(e.kind == "hint" for e in match.evidence):
                    kept.append(match)
                    continue
                if match.checkpoint.module in rivalled:
                    self._demote(match, rivalled[match.checkpoint.module])
                    continue
                keys = sum(m.checkpoint.size for m in by_module[match.checkpoint.module])
                structure = self._structure(match, siblings)
                own = _own_name_agrees(match.checkpoint, match.expected)
                named = _named_in_place(match.checkpoint, match.expected)
                if keys >= 2 and (structure or named):
                    match.evidence.extend(structure or [Evidence("names", self._names_text(match))])
                elif named or (structure and own):
                    match.applicability = Applicability.unsafe
                    match.evidence.extend([*structure, Evidence("names", self._names_text(match))])
                    match.note = "inferred from a single key"
                else:
                    self._demote(match, "the only candidate by shape, but neither names nor neighbours confirm it")
                    continue
            kept.append(match)
        self.result.matches = kept
        self._settle_ties(self._sibling_support(kept))

    def _named_rival(self, match: Match) -> Group | None:
        """Another model group that the checkpoint group's own name points to, left out of the candidates only
        because some of its blocks match as they stand: counted with those, it has as many blocks and the same
        shapes. Shapes alone chose the target; the names and the exact matches say otherwise."""
        c, e = match.checkpoint, match.expected
        if _own_name_agrees(c, e) or not self.matched_counts:
            return None
        shapes = {m.info.shape for m in c.members}
        for rival in self.e_groups:
            if rival is e or rival.leaf != c.leaf or not _own_name_agrees(c, rival):
                continue
            template = digit_template(rival.members[0].name)[0]
            matched = self.matched_counts.get(template, 0)
            if matched and rival.size + matched == c.size and {m.info.shape for m in rival.members} <= shapes:
                return rival
        return None

    @staticmethod
    def _names_text(match: Match) -> str:
        return f"{'.'.join(match.checkpoint.path) or '?'} ~ {'.'.join(match.expected.path) or '?'}"

    def _demote(self, match: Match, why: str) -> None:
        self.pending.append(([(match.checkpoint, [match.expected])], why, match.evidence))

    def _settle_ties(self, siblings: dict[tuple[str, str], set[str]]) -> None:
        """Offer candidates only with some support: a name that links them, or a place in the tree that matched
        keys confirm (siblings that moved the same way, a parent that matches as it stands). Candidates from
        nowhere (two unrelated models that happen to share a shape) are no help: better no hint than a wrong one."""
        modules: dict[str, set[str]] = {}
        for match in self.result.matches:
            modules.setdefault(match.checkpoint.module, set()).add(match.expected.module)
        for pending, why, evidence in self.pending:
            # a module's other leaves went somewhere: this one can only go to the same module
            pairs = [
                (c, [e for e in targets if c.module not in modules or e.module in modules[c.module]])
                for c, targets in pending
            ]
            supported = any(
                self._related(c, e, siblings) or self._unique_everywhere(c, e) for c, targets in pairs for e in targets
            )
            if not supported:
                continue
            options: dict[str, list[str]] = {}
            for c, targets in pairs:
                kept = [
                    e
                    for e in targets
                    if self._related(c, e, siblings) or self._unique_everywhere(c, e) or len(targets) == 1
                ]
                if not kept:
                    continue
                for position, member in enumerate(c.members):
                    options[member.key] = [e.members[position].name for e in kept]
            self.result.ties.append(Tie(options, why, evidence))

    def _unique_everywhere(self, c: Group, e: Group) -> bool:
        """Every tensor of the pair has a shape found once among all checkpoint keys and once among all expected
        keys (not only the open ones): the shapes alone point from one to the other, which is worth a candidate
        (never a fix) even where no name or neighbour confirms it."""
        if self.shape_counts is None or not c.shapes_known or not e.shapes_known:
            return False
        ours, theirs = self.shape_counts
        return all(
            ours.get(cm.info.shape, 0) == 1 and theirs.get(em.info.shape, 0) == 1
            for cm, em in zip(c.members, e.members)
        )

    def _related(self, c: Group, e: Group, siblings: dict[tuple[str, str], set[str]]) -> bool:
        if c.path and e.path and segment_similarity(c.path[-1], e.path[-1]) >= WEAK_NAME:
            return True
        cm, em = c.members[0], e.members[0]
        c_up, e_up = _parents(cm.name), _parents(em.name)
        if c_up and e_up and c_up[0] == e_up[0]:
            return True  # renamed inside one parent module
        for parent in ancestors(cm.name)[1:]:
            if parent in self.anchored and em.name.startswith(parent + "."):
                return True
        return any(pair in siblings for pair in _ancestor_pairs(cm.name, em.name))

    def _sibling_support(self, matches: list[Match]) -> dict[tuple[str, str], set[str]]:
        """For every (checkpoint ancestor, expected ancestor) pair that a match's keys share, the checkpoint modules
        whose matches share it."""
        shared: dict[tuple[str, str], set[str]] = {}
        for match in matches:
            if not (match.forced or match.applicability is Applicability.unsafe):
                continue
            module = match.checkpoint.module
            for c, e in match.pairs:
                for pair in _ancestor_pairs(c.name, e.name):
                    shared.setdefault(pair, set()).add(module)
        return shared

    def _structure(self, match: Match, siblings: dict[tuple[str, str], set[str]]) -> list[Evidence]:
        """What the tree says for a match: it stays inside a parent that matches as it stands, or sibling modules
        move the same way."""
        module = match.checkpoint.module
        c, e = match.pairs[0]
        for c_parent in ancestors(c.name)[1:]:
            if c_parent in self.anchored and e.name.startswith(c_parent + "."):
                return [Evidence("anchored", f"stays inside '{c_parent}', which matches as it stands")]
        for pair in _ancestor_pairs(c.name, e.name):
            others = siblings.get(pair, set()) - {module}
            if others:
                return [
                    Evidence("siblings", f"'{pair[0]}' -> '{pair[1]}' is shared with {len(others)} other module(s)")
                ]
        return self._convergence(match) or self._list_split(match)

    def _list_split(self, match: Match) -> list[Evidence]:
        """One checkpoint list whose elements go to two model lists by kind (even entries blocks, odd entries
        transitions): several forced matches take disjoint elements of the same list, each to a list of its own."""
        c_list, e_list = match.checkpoint.template.split(HOLE)[0], match.expected.template.split(HOLE)[0]
        if HOLE not in match.checkpoint.template:
            return []
        mine = {m.index[0] for m in match.checkpoint.members}
        for module, (values, target) in self.lists.get(c_list, {}).items():
            if module != match.checkpoint.module and target != e_list and not values & mine:
                return [Evidence("siblings", f"the list '{c_list}' splits into families, element by element")]
        return []

    def _convergence(self, match: Match) -> list[Evidence]:
        """Modules of separate checkpoint lists that land, block by block, in one model block (``norms.N`` and
        ``projs.N`` both in ``levels.N``): their numbering agrees, which a coincidence would not."""
        module = match.checkpoint.module
        for cm, em in match.pairs[:1]:
            e_up = _parents(em.name)
            if not e_up:
                continue
            landed = self.landing.get(e_up[0], {})
            others = {m for m, index in landed.items() if m != module and index == cm.index}
            if others and all(index == cm.index for index in landed.values()):
                return [Evidence("siblings", f"modules of {len(others) + 1} lists land in '{e_up[0]}' alike")]
        return []


#: Wrapper segments that say nothing of where a module sits (DDP, torch.compile, a loader's ``model.``).
_WRAPPERS: Final = frozenset({"module", "_orig_mod", "model", "base_model"})


def _named_in_place(c: Group, e: Group) -> bool:
    """The module's own name agrees *and* it sits in the same place: its parent path is the same once wrapper
    segments are set aside (or reads the same up to separators). A match no neighbour confirms needs both:
    ``attn`` under ``transformer.layers`` is not ``attn`` under ``model.layers``."""
    if not c.path or not e.path:
        return False
    if same_path(c.path, e.path):
        return True
    if _own_names_agree(c, e) and _same_place(c.path[:-1], e.path[:-1]):
        return True
    short, long = (c.path, e.path) if len(c.path) < len(e.path) else (e.path, c.path)
    # wrapped or unwrapped (``head`` -> ``head.fc``); as many indices on both sides, so that the extra segment is
    # a container's, not one standing where the other side has a block number (``blocks.unused`` / ``blocks.0``)
    return (
        c.holes == e.holes
        and len(long) == len(short) + 1
        and same_name(short[-1], long[-2])
        and _same_place(short[:-1], long[:-2])
    )


def _same_place(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    a = tuple(s for s in a if s not in _WRAPPERS)
    b = tuple(s for s in b if s not in _WRAPPERS)
    return a == b or (bool(a) and bool(b) and same_path(a, b))


def _own_name_agrees(c: Group, e: Group) -> bool:
    """The module's own name (its last segment) is the same up to spelling, or a published equivalent."""
    if not c.path or not e.path:
        return False
    if _own_names_agree(c, e) or same_path(c.path, e.path):
        return True
    # wrapped or unwrapped: the module became a container of the layer (``head`` -> ``head.fc``), or the reverse
    short, long = (c.path, e.path) if len(c.path) < len(e.path) else (e.path, c.path)
    return c.holes == e.holes and len(long) == len(short) + 1 and same_name(short[-1], long[-2])


def _permuted(c: Group, e: Group) -> list[Member] | None:
    """The expected members re-ordered when the two templates number their blocks in another order of holes:
    ``conv{K}s.{N}`` against ``h.{N}.conv{K}``. An index written into a name (``conv2``) pairs with an index
    written into a name, a block number standing alone (``.0.``) with a block number standing alone, each kind in
    its order; ``None`` to pair in index order (the kinds already line up, or they cannot)."""
    k = c.holes
    if k < 2 or e.holes != k:
        return None
    ours, theirs = _hole_kinds(c.template), _hole_kinds(e.template)
    if ours == theirs or sorted(ours) != sorted(theirs):
        return None
    order: list[int] = []
    for kind in ours:  # the n-th hole of a kind here is the n-th hole of that kind there
        seen = sum(1 for o in order if theirs[o] == kind)
        order.append([j for j, t in enumerate(theirs) if t == kind][seen])
    ordered = sorted(e.members, key=lambda m: tuple(m.index[j] for j in order))
    for cm, em in zip(c.members, ordered):
        if cm.info.shape is not None and em.info.shape is not None and cm.info.shape != em.info.shape:
            return None
    return ordered


def _hole_kinds(template: str) -> list[bool]:
    """For each hole, whether it is written into a name (``conv{N}``) rather than standing alone (``h.{N}``)."""
    out: list[bool] = []
    for segment in template.split("."):
        if segment == HOLE:
            out.append(False)
        else:
            out.extend([True] * segment.count(HOLE))
    return out


def _same_holes(c: Group, e: Group) -> bool:
    """Split at the same holes where both keys have as many (see ``Group.remaining``)."""
    return c.root_holes != e.root_holes or c.origins == e.origins


def _own_names_agree(c: Group, e: Group) -> bool:
    return segment_similarity(own_name(c), own_name(e)) >= STRONG_NAME


def _learn(mapping: dict[str, str | None], key: str, value: str) -> None:
    if key not in mapping:
        mapping[key] = value
    elif mapping[key] != value:
        mapping[key] = None


def _reverse(edges: dict[Group, list[Group]]) -> dict[Group, list[Group]]:
    reverse: dict[Group, list[Group]] = {}
    for c, es in edges.items():
        for e in es:
            reverse.setdefault(e, []).append(c)
    return reverse


def _best(options: list[tuple[float, Group]], open_: set[Group]) -> tuple[float, Group | None, float]:
    """The best open option, its score, and the runner-up's score (0 when it is alone)."""
    ranked = sorted((score for score, group in options if group in open_), reverse=True)
    if not ranked:
        return -1.0, None, 0.0
    best = ranked[0]
    target = next(group for score, group in options if group in open_ and score == best)
    return best, target, ranked[1] if len(ranked) > 1 else 0.0


def _flat(options: list[tuple[int, list[Group]]]) -> list[Group]:
    return [g for _, split in options for g in split]


def _inside_a_name(template: str, position: int) -> bool:
    """True when the ``position``-th hole sits inside a segment with letters (``ln_1``), not alone (``h.0``)."""
    pieces = template.split(HOLE)
    before, after = pieces[position], pieces[position + 1]
    return not (before.endswith(".") or before == "") or not (after.startswith(".") or after == "")


def _choose(
    rest: list[Group], options: dict[Group, list[tuple[int, list[Group]]]], other: set[tuple[object, ...]]
) -> list[Group]:
    out: list[Group] = []
    for group in rest:
        best: list[Group] | None = None
        best_rank: tuple[int, bool, int] = (0, False, -1)
        for position, parts in options[group]:
            hits = sum(1 for p in parts if p.signature[:3] in other)
            # on equal hits, an index written into a name (``ln_1``, ``c_fc_0``, ``norm2``) names modules more often
            # than a dotted index counts blocks; then the innermost position
            rank = (hits, _inside_a_name(group.template, position), position)
            if hits and rank > best_rank:
                best, best_rank = parts, rank
        if best is not None:
            out.extend(best)
        else:
            out.append(group)  # unsplit: it may still match a part of the other side
    return out


def _ancestor_pairs(c_name: str, e_name: str) -> list[tuple[str, str]]:
    """Pairs of the nearest ancestors (parent and grandparent) of the two keys' modules: the places two sibling
    modules share. Farther ancestors (a wrapper prefix every key has) say nothing about siblings."""
    c_up = _parents(c_name)
    e_up = _parents(e_name)
    return [(a, b) for a in c_up for b in e_up]


def _parents(name: str) -> list[str]:
    """The nearest ancestors of a key's module (up to three levels), wrapper-only prefixes left out."""
    module = split_leaf(name)[0]
    if not module:
        return []
    return [a for a in ancestors(module + ".x")[1:4] if not set(a.split(".")) <= _WRAPPERS]
