"""Rules: the steps of a fix plan, each with an applicability.

Renaming rules (``strip_prefix``, ``add_prefix``, ``replace_prefix``, ``rename``, ``shift_index``, ``remap``,
``remove_segment``, ``map``) change keys only. Data rules (``transpose``, ``split``, ``fuse``) change tensors and are
never ``safe``; ``drop`` removes keys and is only applied when asked for.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final, Literal

from keyguard._exceptions import PlanError
from keyguard._record import Record, TaggedBy
from keyguard._regex_budget import PatternTimeout, bounded, budget, match_all, runs_here


class Applicability(str, enum.Enum):
    """How sure keyguard is that a fix is right; ordered, so "at or above" is one comparison.

    - ``safe``: provably right on the data: a bijection on the keys it covers, onto no key that already exists, with
      equal shapes and compatible dtypes. Applied automatically.
    - ``unsafe``: plausible but inferred (a transposed weight, a split of a fused tensor, a rename chosen by
      similarity). Applied only when the user opts in (``--unsafe-fixes``).
    - ``display_only``: several candidates fit; shown to help a human decide, never applied.
    """

    display_only = "display_only"
    unsafe = "unsafe"
    safe = "safe"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Applicability) -> bool:
        return self.rank >= other.rank


_RANK = {Applicability.display_only: 0, Applicability.unsafe: 1, Applicability.safe: 2}


@dataclass(frozen=True, kw_only=True)
class _Rule(Record):
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    applicability: Applicability = Applicability.safe
    reason: str | None = field(
        default=None, metadata={"description": "Code of the finding this rule fixes, e.g. KG101"}
    )
    origin: Literal["inferred", "hint"] = field(
        default="inferred",
        metadata={"description": "How the rule came about: inferred by keyguard, or the user's --hint"},
    )
    renames: ClassVar[bool] = True

    def __post_init__(self) -> None:
        # "unsafe" given in Python is the member (pydantic converts it when it validates); anything else fails here,
        # not later where the plan is selected or applied
        if type(self.applicability) is not Applicability:
            object.__setattr__(self, "applicability", Applicability(self.applicability))

    def rename(self, key: str) -> str | None:  # pragma: no cover - every rule overrides
        """The new name of ``key``, or ``None`` when the rule does not apply to it."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - every rule overrides
        raise NotImplementedError

    def key_mapping(self) -> list[tuple[str, str]]:
        """This rule as ``(regex, replacement)`` pairs for transformers' / PEFT's ``key_mapping``."""
        return []


@dataclass(frozen=True, kw_only=True)
class StripPrefix(_Rule):
    """Remove ``prefix`` from every key that starts with it (``module.`` left by DDP)."""

    op: Literal["strip_prefix"] = "strip_prefix"
    prefix: str

    def rename(self, key: str) -> str | None:
        return key[len(self.prefix) :] if key.startswith(self.prefix) else None

    def describe(self) -> str:
        return f"strip prefix {self.prefix!r}"

    def key_mapping(self) -> list[tuple[str, str]]:
        return [(f"^{re.escape(self.prefix)}", "")]


@dataclass(frozen=True, kw_only=True)
class AddPrefix(_Rule):
    """Prepend ``prefix`` to keys (only those whose first segment is in ``only``, when given)."""

    op: Literal["add_prefix"] = "add_prefix"
    prefix: str
    only: list[str] | None = None

    @functools.cached_property
    def _scope(self) -> frozenset[str] | None:
        # a set, so that a scope of many first segments stays one lookup per key (a list made it quadratic); not a
        # field, so neither compared nor written
        return frozenset(self.only) if self.only is not None else None

    def rename(self, key: str) -> str | None:
        if self._scope is not None and key.split(".", 1)[0] not in self._scope:
            return None
        return self.prefix + key

    def describe(self) -> str:
        scope = f" to keys under {', '.join(s + '.' for s in self.only)}" if self.only else ""
        return f"add prefix {self.prefix!r}{scope}"

    def key_mapping(self) -> list[tuple[str, str]]:
        if self.only is None:
            return [("^", self.prefix)]
        scope = "|".join(re.escape(s) for s in self.only)
        return [(rf"^((?:{scope})(?:\.|$))", f"{self.prefix}\\1")]


@dataclass(frozen=True, kw_only=True)
class ReplacePrefix(_Rule):
    """Replace the leading ``old`` with ``new`` (``transformer.`` -> ``model.``)."""

    op: Literal["replace_prefix"] = "replace_prefix"
    old: str
    new: str

    def rename(self, key: str) -> str | None:
        return self.new + key[len(self.old) :] if key.startswith(self.old) else None

    def describe(self) -> str:
        return f"replace prefix {self.old!r} with {self.new!r}"

    def key_mapping(self) -> list[tuple[str, str]]:
        return [(f"^{re.escape(self.old)}", self.new.replace("\\", "\\\\"))]


@dataclass(frozen=True, kw_only=True)
class Rename(_Rule):
    """Rewrite keys matching an anchored regular expression (``re.fullmatch``) into ``replacement``.

    ``old`` / ``new`` say in words what is renamed (``gamma`` -> ``weight``).
    """

    op: Literal["rename"] = "rename"
    pattern: str
    replacement: str
    old: str = ""
    new: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {self.pattern!r}: {exc}") from None
        try:  # a group the pattern does not have (``\\2`` with one group) is refused here, not while renaming
            _renamer(self.pattern, self.replacement)
        except re.error as exc:
            raise ValueError(f"replacement {self.replacement!r} does not fit pattern {self.pattern!r}: {exc}") from None

    def rename(self, key: str) -> str | None:
        return _renamer(self.pattern, self.replacement)(key)

    def rename_all(self, keys: list[str]) -> list[str]:
        """Every key renamed (or kept when the pattern does not match it), the pattern evaluated under a time budget:
        a plan file is untrusted input, and a pattern such as ``(.*)*X`` backtracks for minutes in ``re``.

        Raises:
            PlanError: the pattern overran its budget.
        """
        try:
            if runs_here(self.pattern):  # the main thread (a timer bounds it) or a tame pattern: the fast path
                rename = _renamer(self.pattern, self.replacement)
                with bounded(self.pattern, budget(len(keys))):
                    return [new if (new := rename(k)) is not None else k for k in keys]
            _, text = _template(self.pattern, self.replacement)
            found = match_all(self.pattern, keys, mode="fullmatch")  # in a child process, killed when it overruns
        except PatternTimeout as exc:
            raise PlanError(
                f"plan refused: the rename pattern {self.pattern!r} did not finish matching {len(keys):,} keys within"
                f" {exc.seconds:g} s (Python's re backtracks on it without end); rewrite it"
            ) from None
        return [key if groups is None else text.format(*(g or "" for g in groups)) for key, groups in zip(keys, found)]

    def describe(self) -> str:
        if self.old and self.new:
            return f"rename segment {self.old!r} to {self.new!r}"
        if self.new:
            return f"insert segment {self.new!r}"
        if self.old:
            return f"remove segment {self.old!r}"
        return f"rename {self.pattern!r} to {self.replacement!r}"

    def key_mapping(self) -> list[tuple[str, str]]:
        pattern = self.pattern if self.pattern.startswith("^") else "^" + self.pattern
        pattern = pattern if pattern.endswith("$") else pattern + "$"
        return [(pattern, self.replacement)]


@functools.lru_cache(maxsize=1024)
def _renamer(pattern: str, replacement: str) -> Callable[[str], str | None]:
    """A fast ``fullmatch`` + ``expand``: the replacement is turned once into a format string over the groups."""
    compiled, text = _template(pattern, replacement)

    def rename(key: str) -> str | None:
        match = compiled.fullmatch(key)
        return None if match is None else text.format(*match.groups(""))

    return rename


@functools.lru_cache(maxsize=1024)
def _template(pattern: str, replacement: str) -> tuple[re.Pattern[str], str]:
    """The compiled pattern, and the replacement as a format string over its groups (``re.error`` on a group the
    pattern does not have)."""
    compiled = re.compile(pattern)
    pieces: list[str] = []
    position = 0
    for token in _TEMPLATE_TOKEN.finditer(replacement):
        pieces.append(_braces(replacement[position : token.start()]))
        group = token.group(1) or token.group(2)
        if group is not None:
            if int(group) == 0 or int(group) > compiled.groups:
                raise re.error(f"invalid group reference {group} in {replacement!r}")
            pieces.append("{" + str(int(group) - 1) + "}")
        else:
            pieces.append(_braces(_ESCAPES.get(token.group(3), "\\" + token.group(3))))
        position = token.end()
    pieces.append(_braces(replacement[position:]))
    return compiled, "".join(pieces)


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@functools.lru_cache(maxsize=256)
def _block_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + r"([0-9]+)((?:\..*)?)")


_TEMPLATE_TOKEN: Final = re.compile(r"\\g<([0-9]+)>|\\([0-9]{1,2})|\\(.)")
_ESCAPES: Final = {"\\": "\\", "n": "\n", "t": "\t"}


@dataclass(frozen=True, kw_only=True)
class ShiftIndex(_Rule):
    """Add ``offset`` to the block index that follows ``prefix`` (``model.layers.16.`` -> ``model.layers.0.``)."""

    op: Literal["shift_index"] = "shift_index"
    prefix: str
    offset: int

    def rename(self, key: str) -> str | None:
        if not key.startswith(self.prefix):
            return None
        match = _block_pattern(self.prefix).fullmatch(key)
        if match is None:
            return None
        index = int(match.group(1)) + self.offset
        return None if index < 0 else f"{self.prefix}{index}{match.group(2)}"

    def describe(self) -> str:
        return f"shift the index after {self.prefix!r} by {self.offset:+d}"

    def key_mapping(self) -> list[tuple[str, str]]:
        return []  # arithmetic: exported as explicit per-index patterns by the emitter


_PLACEHOLDER: Final = re.compile(r"\{([0-9]+)\}|\{\{|\}\}")
_INDEX_ATOM: Final = "(0|[1-9][0-9]*)"


@functools.lru_cache(maxsize=1024)
def _template_regex(template: str) -> tuple[re.Pattern[str], int]:
    """A template with ``{i}`` index placeholders as an anchored regular expression, and its placeholder count."""
    parts: list[str] = []
    order: list[int] = []
    position = 0
    for token in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[position : token.start()]))
        if token.group(1) is None:
            parts.append(re.escape(token.group(0)[0]))
        else:
            order.append(int(token.group(1)))
            parts.append(_INDEX_ATOM)
        position = token.end()
    parts.append(re.escape(template[position:]))
    if order != list(range(len(order))):
        raise ValueError(f"template {template!r}: index placeholders must read {{0}}, {{1}}, ... from left to right")
    return re.compile("".join(parts)), len(order)


def _index_text(index: tuple[int, ...] | list[int]) -> str:
    return ",".join(map(str, index))


@dataclass(frozen=True, kw_only=True)
class Remap(_Rule):
    """Rename the keys of one template into another, index by index.

    ``old`` is a key with ``{0}``, ``{1}``, ... where its indices stand (left to right); ``new`` places indices with
    the same placeholders. Without ``indices`` the new key takes the old indices as they are, in any order
    (``head.norms.{0}.weight`` -> ``head.levels.{0}.norm.weight``); with ``indices``, an explicit map from old index
    tuples (``"3"``, ``"1,2"``) to new ones renumbers them (``blocks.{0}`` -> ``stages.{0}.blocks.{1}``), and keys whose
    indices it does not list are left alone. Literal braces in keys are written ``{{`` and ``}}``.
    """

    op: Literal["remap"] = "remap"
    old: str
    new: str
    indices: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _template_regex(self.old)

    def rename(self, key: str) -> str | None:
        pattern, _ = _template_regex(self.old)
        match = pattern.fullmatch(key)
        if match is None:
            return None
        index: tuple[int, ...] | list[int] = tuple(map(int, match.groups()))
        if self.indices is not None:
            found = self.indices.get(_index_text(index))
            if found is None:
                return None
            index = found
        try:
            return self.new.format(*index)
        except (IndexError, ValueError):
            return None

    def describe(self) -> str:
        text = f"rename {self.old!r} to {self.new!r}"
        if self.indices is not None:
            moved = [(k, v) for k, v in self.indices.items() if k != _index_text(v)]
            if moved:
                shown = ", ".join(f"{k}->{_index_text(v)}" for k, v in moved[:4])
                more = f", ... ({len(moved)} in all)" if len(moved) > 4 else ""
                text += f", renumbering {shown}{more}"
        return text

    def key_mapping(self) -> list[tuple[str, str]]:
        if self.indices is not None:
            return []  # explicit per-index entries, computed by the emitter
        pattern, _ = _template_regex(self.old)
        pieces: list[str] = []
        position = 0
        for token in _PLACEHOLDER.finditer(self.new):
            pieces.append(self.new[position : token.start()].replace("\\", "\\\\"))
            group = token.group(1)
            pieces.append(f"\\g<{int(group) + 1}>" if group is not None else token.group(0)[0])
            position = token.end()
        pieces.append(self.new[position:].replace("\\", "\\\\"))
        return [(f"^{pattern.pattern}$", "".join(pieces))]


@dataclass(frozen=True, kw_only=True)
class RemoveSegment(_Rule):
    """Remove the segment ``segment`` wherever it stands in a key, as often as it does (wrappers that sit inside
    keys: FSDP's ``_fsdp_wrapped_module`` around every layer, activation checkpointing's
    ``_checkpoint_wrapped_module``)."""

    op: Literal["remove_segment"] = "remove_segment"
    segment: str

    def rename(self, key: str) -> str | None:
        parts = key.split(".")
        kept = [p for p in parts if p != self.segment]
        return ".".join(kept) if len(kept) != len(parts) and kept else None

    def describe(self) -> str:
        return f"remove segment {self.segment!r} wherever it stands"

    def key_mapping(self) -> list[tuple[str, str]]:
        # re.sub replaces every occurrence (mmengine); transformers' single replacement gets per-key entries
        escaped = re.escape(self.segment)
        return [(rf"^{escaped}\.|\.{escaped}(?=\.|$)", "")]


@dataclass(frozen=True, kw_only=True)
class MapKeys(_Rule):
    """Explicit key-to-key renames."""

    op: Literal["map"] = "map"
    mapping: dict[str, str]

    def rename(self, key: str) -> str | None:
        return self.mapping.get(key)

    def describe(self) -> str:
        return f"rename {len(self.mapping)} key(s) explicitly"

    def key_mapping(self) -> list[tuple[str, str]]:
        return [(f"^{re.escape(old)}$", new.replace("\\", "\\\\")) for old, new in self.mapping.items()]


@dataclass(frozen=True, kw_only=True)
class _DataRule(_Rule):
    """A rule that changes tensors or drops keys rather than renaming: never safe, never renames."""

    applicability: Applicability = Applicability.unsafe
    renames: ClassVar[bool] = False

    def rename(self, key: str) -> str | None:
        return None


@dataclass(frozen=True, kw_only=True)
class Transpose(_DataRule):
    """Transpose 2-D tensors (GPT-2 ``Conv1D`` weights into ``nn.Linear``). Changes data: never safe."""

    op: Literal["transpose"] = "transpose"
    keys: list[str]

    def describe(self) -> str:
        return f"transpose {len(self.keys)} tensor(s)"


@dataclass(frozen=True, kw_only=True)
class Split(_DataRule):
    """Split one fused tensor into parts along ``dim`` (``qkv_proj`` -> ``q_proj``, ``k_proj``, ``v_proj``)."""

    op: Literal["split"] = "split"
    source: str
    targets: list[str]
    sizes: list[int]
    dim: int = 0

    def describe(self) -> str:
        return f"split {self.source!r} into {len(self.targets)} along dim {self.dim}"


@dataclass(frozen=True, kw_only=True)
class Fuse(_DataRule):
    """Concatenate several tensors into one along ``dim``; with ``stack``, concatenate each run of ``parts``
    sources and stack the results along a new dim 0 (per-expert weights -> transformers 5 stacked experts)."""

    op: Literal["fuse"] = "fuse"
    sources: list[str]
    target: str
    dim: int = 0
    stack: bool = False
    parts: int = 1

    def describe(self) -> str:
        verb = "stack" if self.stack else "concatenate"
        return f"{verb} {len(self.sources)} tensors into {self.target!r}"


@dataclass(frozen=True, kw_only=True)
class Drop(_DataRule):
    """Leave keys out of the output (only with ``--drop-unexpected`` or an explicit plan)."""

    op: Literal["drop"] = "drop"
    keys: list[str]

    def describe(self) -> str:
        return f"drop {len(self.keys)} key(s)"


Rule = Annotated[
    StripPrefix
    | AddPrefix
    | ReplacePrefix
    | Rename
    | ShiftIndex
    | Remap
    | RemoveSegment
    | MapKeys
    | Transpose
    | Split
    | Fuse
    | Drop,
    TaggedBy("op"),
]
RENAMING_OPS = (
    "strip_prefix",
    "add_prefix",
    "replace_prefix",
    "rename",
    "shift_index",
    "remap",
    "remove_segment",
    "map",
)
