"""Evidence and applicability: which aligned pairs are ``safe`` (forced by the shapes and corroborated), which are
``unsafe`` (chosen by names), and which stay candidates, with the reasons kept as data (``Evidence``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from keyguard.engine._groups import HOLE, Group, ancestors, digit_template, leaf_class, own_name, split_leaf
from keyguard.engine._matching import (
    WEAK_NAME,
    Alignment,
    Evidence,
    Match,
    Tie,
    ancestor_pairs,
    named_in_place,
    own_name_agrees,
    parents,
)
from keyguard.engine._names import canonical_tokens, segment_similarity
from keyguard.engine._numbering import renumbers_consistently
from keyguard.fixes._rules import Applicability

#: Leaf kinds a module holds together (a norm's weight and bias, a BatchNorm's statistics).
_MODULE_LEAVES: Final = frozenset({"weight", "bias", "running_mean", "running_var"})
PLACEMENT: Final = 0.75  # weight of agreeing (or not) with where decided sibling modules put the parent


class Settlement:
    """The aligner's last stage, kept apart from how candidates are found (``_align``)."""

    result: Alignment
    pending: list[tuple[list[tuple[Group, list[Group]]], str, list[Evidence]]]
    anchored: set[str]
    matched_counts: dict[str, int]
    e_groups: list[Group]
    c_leaves: dict[str, dict[str, tuple[int, ...] | None]]
    e_leaves: dict[str, dict[str, tuple[int, ...] | None]]
    e_leaf_names: dict[str, set[str]]
    parent_map: dict[str, str | None]
    shape_counts: tuple[Mapping[object, int], Mapping[object, int]] | None

    def _placement(self, c: Group, e: Group) -> float:
        """Where decided siblings put this module's parent: agreeing with every pair counts for the candidate,
        contradicting one counts against it (a parent whose children went to several places says nothing)."""
        agree = False
        for cm, em in zip(c.members, e.members):
            c_up, e_up = parents(cm.name), parents(em.name)
            image = self.parent_map.get(c_up[0]) if c_up else None
            if image is None:
                continue
            if not e_up or image != e_up[0]:
                return -PLACEMENT
            agree = True
        return PLACEMENT if agree else 0.0

    # ----------------------------------------------------------------------------------------- applicability
    def _settle(self) -> None:
        """Safe only with corroboration and two keys; a module's leaves must all go to one module; ties."""
        matches = self.result.matches
        by_module: dict[str, list[Match]] = {}
        for match in matches:
            by_module.setdefault(match.checkpoint.module, []).append(match)
        # a module's leaves must all go to one module: by the modules the keys name, not the templates (one
        # template's blocks may be different modules: an interleaved list, ``neck.0`` a conv and ``neck.1`` a norm)
        goes = _module_targets(matches)
        comes = _module_sources(matches)
        inconsistent = {
            id(m)
            for m in matches
            if any(
                len(goes.get(split_leaf(cm.name)[0], ())) > 1 or len(comes.get(split_leaf(em.name)[0], ())) > 1
                for cm, em in m.pairs
            )
        }
        siblings = self._sibling_support(matches)
        twins = self._free_by_family(matches)
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
                    e_up = parents(em.name)
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
            odd = self._odd_leaf(match)
            if odd is not None:
                rivalled[match.checkpoint.module] = f"its '{odd}' has another shape than the target module's"
            stranded = self._stranded_leaf(match)
            if stranded is not None:
                rivalled[match.checkpoint.module] = f"its '{stranded}' would have nowhere to go in the target module"
        kept: list[Match] = []
        for match in matches:
            if id(match) in inconsistent:
                self._demote(match, "the leaves of one module would go to different modules")
                continue
            hinted = any(e.kind == "hint" for e in match.evidence)
            if not hinted and not renumbers_consistently(match):
                self._demote(match, "paired in order, blocks of one index would go to different indices")
                continue
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
                module_matches = by_module[match.checkpoint.module]
                twin = self._twin(match, twins) if all(m.expected.size == 1 for m in module_matches) else None
                if twin is not None:
                    # one block, and another block of its list in the model holds the same name and shape: the
                    # shapes cannot say which block it is
                    self._demote(match, f"'{twin}' has its name and shape too")
                    continue
                keys = sum(m.checkpoint.size for m in module_matches)
                structure = self._structure(match, siblings)
                own = own_name_agrees(match.checkpoint, match.expected)
                named = named_in_place(match.checkpoint, match.expected)
                if keys >= 2 and (structure or named):
                    match.evidence.extend(structure or [Evidence("names", self._names_text(match))])
                    if _order_assumed(match):
                        match.applicability = Applicability.unsafe
                        match.note = "blocks regrouped in order: their shapes cannot tell another order"
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
        shapes = {m.info.shape for m in c.members}
        if own_name_agrees(c, e):
            return self._wordier_rival(match, shapes)
        for rival in self.e_groups:
            if rival is e or rival.leaf != c.leaf or not own_name_agrees(c, rival):
                continue
            template = digit_template(rival.members[0].name)[0]
            matched = self.matched_counts.get(template, 0)
            theirs = {m.info.shape for m in rival.members}
            if matched and rival.size + matched == c.size and theirs <= shapes:
                return rival
            if None not in shapes and shapes <= theirs and (_siblings(rival, e) or _same_place(c, rival)):
                # a sibling of the target (or the checkpoint group's namesake in place), named like the checkpoint
                # group, holding its shapes in another number of blocks (some dropped or matched elsewhere): only
                # the count chose, and names disagree
                return rival
        return None

    def _wordier_rival(self, match: Match, shapes: set[tuple[int, ...] | None]) -> Group | None:
        """With the module's own name agreeing, a model group in the same part, of the same leaf and shapes, whose
        path holds more of the checkpoint path's words than the target's, or as many and fewer others
        (``attention.output.LayerNorm`` for a checkpoint ``attention.output.LayerNorm`` that shapes put on
        ``output.LayerNorm``, and the reverse): the names disagree."""
        c, e = match.checkpoint, match.expected
        if None in shapes or not c.path or not e.path:
            return None
        ours = canonical_tokens(".".join(c.path))

        def score(group: Group) -> tuple[int, int]:
            words = canonical_tokens(".".join(group.path))
            return len(ours & words), -len(words - ours)  # more of its words, then fewer others

        mine = score(e)
        for rival in self.e_groups:
            if rival is e or rival.leaf != c.leaf or not rival.path or rival.path[0] != e.path[0]:
                continue
            if not shapes <= {m.info.shape for m in rival.members} or not own_name_agrees(c, rival):
                continue
            if score(rival) > mine:
                return rival
        return None

    def _twin(self, match: Match, twins: dict[tuple[str, object], list[str]]) -> str | None:
        """For one block: another model key of the same numbered family and shape that no pair takes (block 0's
        ``norm2.weight`` and block 1's): the names cannot tell which block is meant."""
        if match.expected.size != 1:
            return None
        target = match.expected.members[0]
        family = (digit_template(target.name)[0], target.info.shape)
        return next((name for name in twins.get(family, ()) if name != target.name), None)

    def _free_by_family(self, matches: list[Match]) -> dict[tuple[str, object], list[str]]:
        """Model keys no pair takes, by numbered family and shape."""
        taken = {em.name for m in matches for _, em in m.pairs}
        out: dict[tuple[str, object], list[str]] = {}
        for group in self.e_groups:
            for member in group.members:
                if member.name not in taken:
                    out.setdefault((digit_template(member.name)[0], member.info.shape), []).append(member.name)
        return out

    def _stranded_leaf(self, match: Match) -> str | None:
        """A leaf renamed into another leaf name (``norm.weight`` -> ``gamma``), while another leaf of the checkpoint
        module (its ``bias``, still open) has no leaf of its kind in the target module: a module's leaves go to one
        module together, so that one is not it (a layer-scale ``gamma`` is no norm's weight)."""
        for cm, em in match.pairs:
            c_module, c_leaf = split_leaf(cm.name)
            e_module, e_leaf = split_leaf(em.name)
            if c_leaf == e_leaf:
                continue
            kinds = {leaf_class(leaf) for leaf in self.e_leaf_names.get(e_module, ())}
            for leaf in self.c_leaves.get(c_module, {}):
                if leaf != c_leaf and leaf_class(leaf) in _MODULE_LEAVES and leaf_class(leaf) not in kinds:
                    return leaf
        return None

    def _odd_leaf(self, match: Match) -> str | None:
        """A leaf of the checkpoint module (still open) whose namesake in the target module (still open) has another
        shape: the weight fits, the bias does not (``dense_4h_to_h`` onto ``c_fc``), so the module is not that
        one, whatever the weight's shape says."""
        for cm, em in match.pairs:
            c_module, c_leaf = split_leaf(cm.name)
            e_module = split_leaf(em.name)[0]
            ours, theirs = self.c_leaves.get(c_module, {}), self.e_leaves.get(e_module, {})
            for leaf, shape in ours.items():
                other = theirs.get(leaf)
                if leaf != c_leaf and shape is not None and other is not None and shape != other:
                    return leaf
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
        modules = _module_targets(self.result.matches)
        for pending, why, evidence in self.pending:
            # a module's other leaves went somewhere: this one can only go to the same module
            pairs = [(c, [e for e in targets if _fits_modules(c, e, modules)]) for c, targets in pending]
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
        c_up, e_up = parents(cm.name), parents(em.name)
        if c_up and e_up and c_up[0] == e_up[0]:
            return True  # renamed inside one parent module
        for parent in ancestors(cm.name)[1:]:
            if parent in self.anchored and em.name.startswith(parent + "."):
                return True
        return any(pair in siblings for pair in ancestor_pairs(cm.name, em.name))

    def _sibling_support(self, matches: list[Match]) -> dict[tuple[str, str], set[str]]:
        """For every (checkpoint ancestor, expected ancestor) pair that a match's keys share, the checkpoint modules
        whose matches share it."""
        shared: dict[tuple[str, str], set[str]] = {}
        for match in matches:
            if not (match.forced or match.applicability is Applicability.unsafe):
                continue
            module = _identity(match)
            for c, e in match.pairs:
                for pair in ancestor_pairs(c.name, e.name):
                    shared.setdefault(pair, set()).add(module)
        return shared

    def _structure(self, match: Match, siblings: dict[tuple[str, str], set[str]]) -> list[Evidence]:
        """What the tree says for a match: it stays inside a parent that matches as it stands, or sibling modules
        move the same way."""
        module = _identity(match)
        c, e = match.pairs[0]
        for c_parent in ancestors(c.name)[1:]:
            if c_parent in self.anchored and e.name.startswith(c_parent + "."):
                return [Evidence("anchored", f"stays inside '{c_parent}', which matches as it stands")]
        for pair in ancestor_pairs(c.name, e.name):
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
            e_up = parents(em.name)
            if not e_up:
                continue
            landed = self.landing.get(e_up[0], {})
            others = {m for m, index in landed.items() if m != module and index == cm.index}
            if others and all(index == cm.index for index in landed.values()):
                return [Evidence("siblings", f"modules of {len(others) + 1} lists land in '{e_up[0]}' alike")]
        return []


def _module_targets(matches: list[Match]) -> dict[str, set[str]]:
    """Checkpoint module -> the model modules its matched leaves went to, key by key."""
    out: dict[str, set[str]] = {}
    for match in matches:
        if match.checkpoint.leaf == "param":
            continue  # a free-form parameter may become a module of its own (``layer_scale_1`` -> ``ls1.scale``)
        for cm, em in match.pairs:
            out.setdefault(split_leaf(cm.name)[0], set()).add(split_leaf(em.name)[0])
    return out


def _module_sources(matches: list[Match]) -> dict[str, set[str]]:
    """Model module -> the checkpoint modules its matched leaves came from: two checkpoint modules (a block's norm
    and a transition's norm of an interleaved list) never fill one model module."""
    out: dict[str, set[str]] = {}
    for match in matches:
        if match.checkpoint.leaf == "param" or match.expected.leaf == "param":
            continue
        for cm, em in match.pairs:
            out.setdefault(split_leaf(em.name)[0], set()).add(split_leaf(cm.name)[0])
    return out


def _fits_modules(c: Group, e: Group, modules: dict[str, set[str]]) -> bool:
    """Every key of ``c`` may go to its counterpart in ``e``: where its module's other leaves went, if anywhere."""
    if c.leaf == "param":
        return True
    for cm, em in zip(c.members, e.members):
        went = modules.get(split_leaf(cm.name)[0])
        if went is not None and split_leaf(em.name)[0] not in went:
            return False
    return True


def _identity(match: Match) -> str:
    """Which module a match moves, for sibling evidence: the checkpoint module and where it goes. One checkpoint
    template may hold several modules (``neck.{N}``: convs and norms) that go to different model modules."""
    return f"{match.checkpoint.module}\x01{match.expected.module}"


def _order_assumed(match: Match) -> bool:
    """The blocks are regrouped (the index structure changes: a flat list into stages, or the reverse) and paired
    in order, while every block has the same shapes: any other order (interleaved stages) would fit as well."""
    c, e = match.checkpoint, match.expected
    if c.holes == e.holes or c.size < 2:
        return False
    return len({m.info.shape for m in c.members}) == 1


def _same_place(c: Group, e: Group) -> bool:
    """The checkpoint group names the model group's module, path for path, a wrapper aside (``_orig_mod.``)."""
    short, long = (c.path, e.path) if len(c.path) <= len(e.path) else (e.path, c.path)
    return len(short) >= 2 and long[len(long) - len(short) :] == short


def _siblings(a: Group, b: Group) -> bool:
    """Two modules under the same parent template (``mlp.gate_proj`` and ``mlp.up_proj`` in every block), or one
    a child of the other (a block's ``norm`` and the block's own ``gamma``)."""
    mod_a, mod_b = (digit_template(g.module)[0] for g in (a, b))
    up_a, up_b = (digit_template(split_leaf(g.module)[0])[0] for g in (a, b))
    return (up_a in (up_b, mod_b) or up_b == mod_a) and own_name(a) != own_name(b)
