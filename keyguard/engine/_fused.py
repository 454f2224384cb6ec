"""Fused and split tensors (``qkv_proj`` against ``q_proj``/``k_proj``/``v_proj``), and stacked experts."""

from __future__ import annotations

from collections.abc import Mapping

from keyguard.engine import _knowledge as knowledge
from keyguard.engine._groups import split_leaf
from keyguard.engine._names import name_groups, spelled_parts
from keyguard.engine._state import (
    EngineState,
    _dims,
)
from keyguard.fixes._rules import (
    Applicability,
    Fuse,
    Rule,
    Split,
)
from keyguard.report import _kinds as kinds
from keyguard.sources._keyset import TensorInfo


class _Fusions(EngineState):
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
        # nothing open in the model (every key matched): no pass over its keys to find that out
        for target in [k for k in self.E if k in self.open_e] if self.open_e else []:
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

    def _fused_by_shape(self) -> None:
        """Fused tensors under names no table knows (``Wqkv``, ``up_gate_proj``) against their parts in the model,
        or the reverse: one tensor whose shape is the parts' stacked along dim 0, where the parts sit where the
        fused tensor's module sits (its siblings went there, or it is the same place by name). The order of the
        parts comes from the fused name when it spells them (``up_gate`` is up, then gate): then the split is
        ``unsafe`` (it changes data); when it does not, it is shown but never applied (``display_only``)."""
        if not self.by_cur or not self.open_e:
            return
        places = self._places()
        by_parent = _by_parent([k for k in self.E if k in self.open_e])
        for name in list(self.by_cur):
            original = self.by_cur.get(name)
            if original is None:
                continue
            module, leaf = _module_and_leaf(name)
            c_parent, own = _parent_and_own(module)
            for e_parent in dict.fromkeys([places.get(_parent_and_own(_module_and_leaf(original)[0])[0]), c_parent]):
                if e_parent is None:
                    continue
                parts = [k for k in by_parent.get((e_parent, leaf), []) if k in self.open_e]
                chosen = _order(own, parts, self.C[original], self.E)
                if chosen is not None:
                    ordered, applicability = chosen
                    sizes = [_dims(self.E[t])[0] for t in ordered]
                    rule = Split(source=name, targets=ordered, sizes=sizes, applicability=applicability)
                    self._take_fused(rule, [original], ordered)
                    break
        by_parent_c = _by_parent(list(self.by_cur))
        for target in [k for k in self.E if k in self.open_e]:
            module, leaf = split_leaf(target)
            e_parent, own = _parent_and_own(module)
            sources = [n for n in by_parent_c.get((e_parent, leaf), []) if n in self.by_cur]
            infos = {n: self.C[self.by_cur[n]] for n in sources}
            chosen = _order(own, sources, self.E[target], infos)
            if chosen is not None:
                ordered, applicability = chosen
                fuse = Fuse(sources=ordered, target=target, applicability=applicability)
                self._take_fused(fuse, [self.by_cur[n] for n in ordered], [target])

    def _places(self) -> dict[str, str]:
        """Checkpoint parent module -> model parent module, where every matched child agrees."""
        seen: dict[str, str | None] = {}
        for original, target in self.resolved.items():
            if original == target:
                continue
            c_parent = _parent_and_own(split_leaf(original)[0])[0]
            e_parent = _parent_and_own(split_leaf(target)[0])[0]
            if seen.get(c_parent, e_parent) != e_parent:
                seen[c_parent] = None
            elif c_parent not in seen:
                seen[c_parent] = e_parent
        return {c: e for c, e in seen.items() if e is not None}

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


def _module_and_leaf(key: str) -> tuple[str, str]:
    """``split_leaf``, reading a parameter named for a module's weight or bias (``nn.MultiheadAttention``'s
    ``attn.in_proj_weight``) as that module's leaf (``attn.in_proj`` / ``weight``)."""
    module, leaf = split_leaf(key)
    if "." not in leaf:
        head, _, tail = leaf.rpartition("_")
        if head and tail in ("weight", "bias"):
            return (f"{module}.{head}" if module else head), tail
    return module, leaf


def _parent_and_own(module: str) -> tuple[str, str]:
    parent, _, own = module.rpartition(".")
    return parent, own


def _by_parent(keys: list[str]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        module, leaf = split_leaf(key)
        out.setdefault((_parent_and_own(module)[0], leaf), []).append(key)
    return out


def _order(
    fused_name: str, parts: list[str], whole: TensorInfo, infos: Mapping[str, TensorInfo]
) -> tuple[list[str], Applicability] | None:
    """The parts that stack (dim 0) into ``whole``, in the order the fused name spells them (``unsafe``), or in
    the model's order when the name spells nothing (``display_only``); ``None`` when no set of parts fits."""
    shape = whole.shape
    if shape is None or len(shape) == 0 or len(parts) < 2:
        return None
    fitting = [p for p in parts if (s := infos[p].shape) is not None and len(s) == len(shape) and s[1:] == shape[1:]]
    spelled = spelled_parts(fused_name)
    if len(spelled) >= 2:
        ordered: list[str] = []
        for groups in spelled:
            found = [p for p in fitting if name_groups(_parent_and_own(split_leaf(p)[0])[1]) & groups]
            if len(found) != 1 or found[0] in ordered:
                break
            ordered.append(found[0])
        else:
            if sum(_dims(infos[p])[0] for p in ordered) == shape[0]:
                return ordered, Applicability.unsafe
    if 2 <= len(fitting) <= 4 and sum(_dims(infos[p])[0] for p in fitting) == shape[0]:
        return fitting, Applicability.display_only
    return None
