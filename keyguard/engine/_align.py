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
from typing import Final

from keyguard.engine._evidence import Settlement
from keyguard.engine._groups import (
    HOLE,
    Group,
    ancestors,
    build_groups,
    compatible,
    digit_template,
    signature_index,
    split_leaf,
    split_positions,
    structural_splits,
    transposed,
)
from keyguard.engine._matching import (
    STRONG_NAME,
    Alignment,
    Entry,
    Evidence,
    Match,
    Tie,
    learn,
    leaves_by_module,
    own_name_agrees,
    parents,
    permuted,
    root_of,
    same_holes,
)
from keyguard.engine._names import path_similarity, same_path, segment_similarity
from keyguard.fixes._rules import Applicability

__all__ = ["Alignment", "Evidence", "Match", "Tie", "align"]

LEVELS: Final = 3  # coarse groups, then up to two splits
MAX_COMPONENT: Final = 400  # groups per side in one tie weighed by names; larger ties stay candidates
MARGIN: Final = 0.25  # how much better the chosen candidate must be than the next
ROOT: Final = 0.5  # weight of staying in (or leaving) the top-level part of the same name on both sides


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
        learn(aligner.module_map, split_leaf(key)[0], split_leaf(target)[0])
        learn(aligner.module_image, split_leaf(target)[0], split_leaf(key)[0])
    aligner.shape_counts = shape_counts
    return aligner.run()


class _Aligner(Settlement):
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
        # the top-level parts both sides name alike (``encoder`` / ``model.encoder``, ``decoder`` / ``model.decoder``)
        both = {root_of(e[0]) for e in checkpoint} & {root_of(e[0]) for e in expected}
        both |= {root_of(k) for k in anchored_keys}
        self.shared_roots = both - {""}
        # every open key's leaves by module, on both sides: a module's leaves go to one module together
        self.c_leaves = leaves_by_module(checkpoint)
        self.e_leaves = leaves_by_module(expected)
        # every model module's leaf names, open or matched: where a checkpoint module's other leaves could go
        self.e_leaf_names: dict[str, set[str]] = {}
        for name in (*(e[0] for e in expected), *anchored_keys):
            module, leaf = split_leaf(name)
            self.e_leaf_names.setdefault(module, set()).add(leaf)
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
            found += self._named_across(group, pool_e, found)
            found = [
                g for g in found if same_holes(group, g) and self._consistent(group, g) and not self._offset(group, g)
            ]
            if self.hints:
                found = self._apply_hints(group, found, pool_e)
            if found:
                edges[group] = found
        return edges

    @staticmethod
    def _named_across(group: Group, pool_e: list[Group], found: list[Group]) -> list[Group]:
        """A free-form parameter that became a module's weight, or the reverse (``positional_embedding`` ->
        ``embed_positions.weight``): the leaf kinds differ, so only where the names are the same or published
        equivalents, with the same shapes."""
        kinds = {"param": "weight", "weight": "param"}
        other = kinds.get(group.leaf)
        if other is None or not group.path:
            return []
        return [
            e
            for e in pool_e
            if e.leaf == other
            and e not in found
            and e.path
            and e.size == group.size
            and segment_similarity(group.path[-1], e.path[-1]) >= STRONG_NAME
            and all(
                cm.info.shape is not None and cm.info.shape == em.info.shape for cm, em in zip(group.members, e.members)
            )
        ]

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
        match.order = permuted(match.checkpoint, match.expected)
        self.result.matches.append(match)
        for cm, em in match.pairs:
            c_module, e_module = split_leaf(cm.key)[0], split_leaf(em.name)[0]
            learn(self.module_map, c_module, e_module)
            learn(self.module_image, e_module, c_module)
            c_up, e_up = parents(cm.name), parents(em.name)
            if c_up and e_up:
                learn(self.parent_map, c_up[0], e_up[0])

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
                    scores[c, e] = path_similarity(c.path, e.path) + self._placement(c, e) + self._roots(c, e)
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
                if target is None or best - runner < MARGIN or not own_name_agrees(c, target):
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

    def _roots(self, c: Group, e: Group) -> float:
        """Where both sides have top-level parts of the same names, a module stays in its namesake: an encoder
        block's attention is the encoder's, not the decoder's, however alike the rest of their names."""
        if not self.shared_roots:
            return 0.0
        ours, theirs = root_of(c.members[0].name), root_of(e.members[0].name)
        if ours not in self.shared_roots or theirs not in self.shared_roots:
            return 0.0
        return ROOT if ours == theirs else -ROOT

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
