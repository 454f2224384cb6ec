"""The case the restructure properties work on: a model, a checkpoint made from it, and the truth, with the one
operation every conversion and noise step is built from (``rename``) and explicit cases written by hand
(``explicit``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from _restructure_trees import F32, I64

from keyguard.sources import KeySet, TensorInfo


@dataclass
class Case:
    """A model, a checkpoint made from it by the steps, and the truth."""

    expected: dict[str, TensorInfo]
    checkpoint: dict[str, TensorInfo]
    truth: dict[str, str | None]  # checkpoint key -> the expected key it really is (None: no expected key)
    steps: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # the conversion kinds applied (noise excluded)
    dropped: dict[str, str] = field(default_factory=dict)  # dropped expected key -> the name it had in the checkpoint
    ordered: bool = False  # both sources keep registration order (pickles, live modules)

    @staticmethod
    def of(expected: Mapping[str, TensorInfo], ordered: bool = False) -> Case:
        return Case(dict(expected), dict(expected), {k: k for k in expected}, ordered=ordered)

    def sources(self) -> tuple[KeySet | dict[str, TensorInfo], KeySet | dict[str, TensorInfo]]:
        """What to diagnose: plain mappings (order unknown), or key sets that say their order is registration
        order."""
        if not self.ordered:
            return self.checkpoint, self.expected
        return KeySet(self.checkpoint, "torch-pickle"), KeySet(self.expected, "module")

    def need(self) -> list[str]:
        """Checkpoint keys that must be renamed to load."""
        return [k for k, t in self.truth.items() if t is not None and t != k]


def rename(case: Case, fn: Callable[[str], str], step: str, kind: str | None) -> Case | None:
    """Apply ``fn`` to every checkpoint key; ``None`` when it changes nothing or is not one-to-one."""
    mapping = {k: fn(k) for k in case.checkpoint}
    if all(k == v for k, v in mapping.items()) or len(set(mapping.values())) != len(mapping):
        return None
    return replace(
        case,
        checkpoint={mapping[k]: info for k, info in case.checkpoint.items()},
        truth={mapping[k]: t for k, t in case.truth.items()},
        steps=[*case.steps, step],
        kinds=[*case.kinds, kind] if kind else case.kinds,
        dropped={e: fn(c) for e, c in case.dropped.items()},
    )


def explicit(
    expected: Mapping[str, Iterable[int] | TensorInfo],
    checkpoint: Mapping[str, Iterable[int] | TensorInfo],
    truth: Mapping[str, str | None],
    *,
    ordered: bool = False,
) -> Case:
    """A case written out by hand: shapes as tuples (``()`` is a scalar int64 counter), truth for renamed keys
    (keys not listed are their own truth when the model has them, else extra)."""

    def info(value: Iterable[int] | TensorInfo) -> TensorInfo:
        if isinstance(value, TensorInfo):
            return value
        shape = tuple(value)
        return TensorInfo(shape, F32 if shape else I64)

    e = {k: info(v) for k, v in expected.items()}
    c = {k: info(v) for k, v in checkpoint.items()}
    t = {k: truth.get(k, k if k in e else None) for k in c}
    return Case(e, c, t, ordered=ordered)
