"""The engine's state: what is matched, what is open, which rules were kept; shared by the stages."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import compress, repeat
from typing import Any, Final

from keyguard._patterns import template
from keyguard.engine._infer import (
    Candidate,
    RenameRule,
)
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import (
    AddPrefix,
    Applicability,
    Rename,
    ReplacePrefix,
    Rule,
    ShiftIndex,
    StripPrefix,
)
from keyguard.report import _kinds as kinds
from keyguard.report._build import make_finding
from keyguard.report._model import Example, Finding, Fix
from keyguard.sources._keyset import KeySet, TensorInfo

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
    settled: bool = False  # applicability decided by its stage (template alignment), not re-judged at the end
    evidence: list[dict[str, str]] = field(default_factory=list)  # why the rule is as applicable as it is
    change: tuple[str, str, str] | None = None  # (old, new, phrase) as people read it, for aligned modules
    # keys of ``pairs`` whose pair differs in shape or dtype, as the round compared them when every pair of the
    # rule was one it compared (None: not compared; the findings compare them)
    differ: list[str] | None = None


@dataclass
class _Ambiguity:
    keys: dict[str, list[str]]  # original checkpoint key -> candidate expected keys
    rules: list[Rule]
    why: str
    contested: bool = False  # an exact match among the readings (KG405)


class EngineState:
    """Keys of both sides, and what the stages have established so far."""

    def __init__(
        self,
        ck: KeySet,
        ex: KeySet,
        ignore: Sequence[re.Pattern[str]],
        hints: dict[str, str] | None = None,
    ) -> None:
        self.ck_set, self.ex_set = ck, ex
        self.hints: dict[str, str] = dict(hints or {})
        self.aligning = True  # run template alignment on what the rule rounds leave open
        # fingerprints of both sides' tensor bytes (``match_values``), or None: header-only
        self.values: tuple[Callable[[str], bytes | None], Callable[[str], bytes | None]] | None = None

        def kept(keys: KeySet) -> dict[str, TensorInfo]:
            if not ignore:
                # the engine never changes C or E: a source's own dict is used as it is (no copy of a million keys)
                return keys.tensors if type(keys.tensors) is dict else dict(keys.tensors)
            return {k: v for k, v in keys.tensors.items() if not any(p.search(k) for p in ignore)}

        self.C = kept(ck)
        self.E = kept(ex)
        self.ignored = len(ck) - len(self.C) + len(ex) - len(self.E)
        # the model's keys as a set first (the open expected keys when nothing matches as it stands): asking a set
        # for each checkpoint key misses the cache about once per key, a dict's table about twice
        expected_keys = set(self.E)
        exact = expected_keys.intersection(self.C)
        # same name, other shape: no match yet. Held out of the rule rounds (a shape mismatch is no evidence for a
        # rename), offered to template alignment (``layers.0.downsample`` may be the model's ``layers.1``), and
        # matched by name again if nothing explains them better (then reported as a shape mismatch)
        self.held: set[str] = {
            k for k in exact if (a := self.C[k].shape) is not None and (b := self.E[k].shape) is not None and a != b
        }
        if self.held:
            exact = exact - self.held
        self.exact = exact
        self.resolved: dict[str, str] = {k: k for k in self.C if k in exact} if exact else {}
        open_c = [k for k in self.C if k not in exact and k not in self.held] if exact or self.held else list(self.C)
        self.cur: dict[str, str] = dict(zip(open_c, open_c))  # open key -> current name
        self.by_cur: dict[str, str] = dict(self.cur)  # current name -> open key (identical at the start)
        if exact or self.held:
            expected_keys.difference_update(exact, self.held)
        self.open_e: set[str] = expected_keys
        # times keys were put back into open_e (``_reopen``): while it, open_e's identity and its size stay as they
        # were, open_e holds what it held (keys only ever leave it otherwise)
        self.reopened = 0
        self.accepted: list[_Accepted] = []
        self.via: dict[str, int] = {}  # resolved original key -> index of the accepted rule that resolved it
        self.first_rule: dict[str, int] = {}  # open original key -> first accepted rule that renamed it
        self.chain: dict[str, list[int]] = {}  # original key -> every rule that renamed it, when more than one
        self.ambiguities: list[_Ambiguity] = []
        self.claimed: set[str] = set()  # expected keys offered as candidates by an ambiguity
        # groups that partly land by a rule (offset?), set aside until alignment has weighed them
        self.deferred: list[tuple[Candidate, dict[str, str], set[str], dict[str, str]]] = []
        self.deferred_templates: set[str] = set()
        self.lookalikes: list[dict[str, list[str]]] = []  # keys a rule left for another reading (original -> targets)
        self.endings: dict[tuple[int, int], dict[tuple[str, str], list[str]]] = {}  # _Doubts._ending, per round
        self.template_cache: dict[str, tuple[str, tuple[int, ...]]] = {}  # key -> template(key), as the checks ask
        self.roots: frozenset[str] | None = None  # the model's top-level parts, once asked for
        self.declined: set[str] = set()  # candidates the rounds refused (identity): not offered again
        self.frozen: list[str] = []  # current names of keys declared ambiguous: no later rule may touch them
        self.fused: list[tuple[Rule, list[str], list[str]]] = []  # rule, checkpoint keys, expected keys
        self.findings: list[Finding] = []

    # whole-side facts that let the per-rule checks skip work on large inputs (C-level scans, nothing hashed but the
    # dtype names). Asked only once a rule is accepted: a checkpoint that matches as it stands never pays for them
    # (C and E never change after __init__, so a fact computed late is the fact at the start)
    @cached_property
    def shapes_all_known(self) -> bool:
        return None not in map(_SHAPE_OF, self.C.values()) and None not in map(_SHAPE_OF, self.E.values())

    @cached_property
    def dtypes(self) -> tuple[frozenset[str | None], frozenset[str | None]]:
        """Every dtype of each side (``None`` for unknown)."""
        return frozenset(map(_DTYPE_OF, self.C.values())), frozenset(map(_DTYPE_OF, self.E.values()))

    @cached_property
    def dtypes_all_float(self) -> bool:
        return self.dtypes[0] | self.dtypes[1] <= _FLOAT_DTYPES

    @cached_property
    def one_dtype(self) -> bool:
        """Every tensor of both sides has one and the same known dtype: no pair can differ in dtype."""
        return len(self.dtypes[0]) == 1 and self.dtypes[0] == self.dtypes[1] and None not in self.dtypes[0]

    # ------------------------------------------------------------------------------------------ shared helpers
    def _ambiguous(self, ambiguity: _Ambiguity) -> None:
        """Record keys with several readings. Each candidate is offered once in the whole report, only where its
        shape fits, and never when it is already matched."""
        taken = self.claimed | set(self.resolved.values())
        options: dict[str, list[str]] = {}
        offered: set[str] = set()
        for original, targets in ambiguity.keys.items():
            shape = self.C[original].shape
            kept = [
                t
                for t in dict.fromkeys(targets)
                if t not in taken and (shape is None or self.E[t].shape is None or self.E[t].shape == shape)
            ]
            options[original] = kept
            offered.update(targets)
        for kept in options.values():
            self.claimed.update(kept)
        # a candidate left out (another shape) that nothing else claims stays open: reported as missing
        self._reopen(t for t in offered if t not in self.claimed and t not in taken)
        ambiguity.keys = options
        self.ambiguities.append(ambiguity)

    def _reopen(self, keys: Iterable[str]) -> None:
        """Put expected keys back into play (every addition to ``open_e`` goes through here: see ``reopened``)."""
        self.reopened += 1
        self.open_e.update(keys)

    @staticmethod
    def _side_ordered(keys: set[str], side: dict[str, TensorInfo]) -> list[str]:
        """``keys`` in the order of ``side`` (the checkpoint's or the model's): a set's own order follows string
        hashes, which change with ``PYTHONHASHSEED``, and whatever is built from it (candidates, findings, their
        key lists) must not."""
        return [k for k in side if k in keys] if keys else []

    def _template(self, key: str) -> tuple[str, tuple[int, ...]]:
        """``template(key)``, each key split once per diagnosis (the per-rule checks ask again every round)."""
        found = self.template_cache.get(key)
        if found is None:
            found = self.template_cache[key] = template(key)
        return found

    def _renames_resolved(self, rule: Rule) -> bool:
        """True when ``rule`` would rename a key that is already right, or one declared ambiguous."""
        literal = _literal(rule)
        names = [*self.resolved.values(), *self.frozen]
        holding = compress(names, map(operator.contains, names, repeat(literal))) if literal else names
        return any(rule.rename(name) is not None for name in holding)  # only names holding the literal, C-level

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
