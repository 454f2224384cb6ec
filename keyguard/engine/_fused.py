"""Fused and split tensors (``qkv_proj`` against ``q_proj``/``k_proj``/``v_proj``), and stacked experts."""

from __future__ import annotations

from keyguard.engine import _knowledge as knowledge
from keyguard.engine._state import (
    EngineState,
    _dims,
)
from keyguard.fixes._rules import (
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
