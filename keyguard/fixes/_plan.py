"""A fix plan: an ordered list of rules, stored as ``"format": "keyguard.plan/v1"`` JSON."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from keyguard._exceptions import PlanError
from keyguard._record import Record
from keyguard.fixes._rules import Applicability, Rename, ReplacePrefix, Rule, StripPrefix, _Rule

PLAN_FORMAT = "keyguard.plan/v1"
V = TypeVar("V")


@dataclass(frozen=True, kw_only=True)
class Plan(Record):
    """Rules applied in order: each renaming rule rewrites the keys it matches, as left by the rules before it.

    ``Report.plan`` holds the safe rules of a diagnosis; a plan can also be written by hand, saved, reviewed and
    reused (``Plan.load`` / ``Plan.save``).
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    format: Literal["keyguard.plan/v1"] = "keyguard.plan/v1"
    # the schema states the default, as it did when plans were pydantic models (a factory's default is not shown)
    rules: list[Rule] = field(default_factory=list, metadata={"json_schema_extra": {"default": []}})

    def __post_init__(self) -> None:
        rules = self.rules if type(self.rules) is list else list(self.rules)
        stray = next((r for r in rules if not isinstance(r, _Rule)), None)
        if stray is not None:  # a dict read from JSON: pydantic reads those (model_validate), the constructor does not
            raise TypeError(
                f"Plan(rules=...) takes rules (StripPrefix(...), Rename(...), ...), not {type(stray).__name__};"
                " read a plan document with Plan.model_validate(...) or Plan.load(path)"
            )
        object.__setattr__(self, "rules", rules)

    # -- selection -------------------------------------------------------------------------------------------
    def at_least(self, level: Applicability | str = Applicability.safe) -> Plan:
        """The plan restricted to rules at or above ``level`` (``"safe"``: the default; ``"unsafe"``: opt-in)."""
        wanted = Applicability(level)
        return Plan(rules=[r for r in self.rules if r.applicability.at_least(wanted)])

    @property
    def empty(self) -> bool:
        return not self.rules

    # -- renaming --------------------------------------------------------------------------------------------
    def rename_key(self, key: str) -> str:
        """The name ``key`` ends up with after every renaming rule, in order."""
        for rule in self.rules:
            if rule.renames:
                new = rule.rename(key)
                if new is not None:
                    key = new
        return key

    def mapping(self, keys: Iterable[str]) -> dict[str, str]:
        """Map every key to its new name, refusing collisions.

        Works rule by rule over the whole key list (prefix rules in bulk), so a million keys take well under a
        second.

        Raises:
            PlanError: two keys would end up under one name (naming them), since that would silently lose a tensor.
        """
        originals = list(keys)
        return dict(zip(originals, self._renamed(originals)))

    def _renamed(self, originals: list[str]) -> list[str]:
        """The new name of each key, in order; refuses collisions."""
        current = originals
        for rule in self.rules:
            if not rule.renames:
                continue
            if isinstance(rule, (StripPrefix, ReplacePrefix)):
                old = rule.prefix if isinstance(rule, StripPrefix) else rule.old
                new = "" if isinstance(rule, StripPrefix) else rule.new
                cut = len(old)
                current = [new + k[cut:] if k.startswith(old) else k for k in current]
            elif isinstance(rule, Rename):
                current = rule.rename_all(current)  # a plan file's pattern is evaluated under a time budget
            else:
                rename = rule.rename
                current = [r if (r := rename(k)) is not None else k for k in current]
        if len(set(current)) != len(current):
            owner: dict[str, str] = {}
            for key, renamed in zip(originals, current):
                clash = owner.setdefault(renamed, key)
                if clash != key:
                    raise PlanError(
                        f"plan refused: {clash!r} and {key!r} would both become {renamed!r}"
                        " (applying it would silently lose a tensor)"
                    )
        return current

    def preview(self, keys: Iterable[str]) -> list[tuple[str, str]]:
        """``(old, new)`` for every key the plan renames, in input order."""
        return [(old, new) for old, new in self.mapping(keys).items() if old != new]

    def apply(self, state_dict: Mapping[str, V]) -> dict[str, V]:
        """Return a new mapping holding the same value objects under their new names (no copy, no device move).

        Only renaming rules are applied here; data rules (transpose, split, fuse) are applied by ``keyguard fix``.

        Raises:
            PlanError: the plan would make two keys collide.
        """
        return dict(zip(self._renamed(list(state_dict)), state_dict.values()))

    # -- storage ---------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_defaults=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON, atomically."""
        from keyguard._atomic import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """Read a plan written by ``save`` (or by hand).

        Raises:
            PlanError: the file is not a valid ``keyguard.plan/v1`` document; the message names the problem.
        """
        from keyguard._exceptions import SourceError
        from keyguard.sources._jsonfile import load_json_object

        try:
            raw: dict[str, Any] = load_json_object(path)
        except SourceError as exc:
            raise PlanError(str(exc)) from None
        if raw.get("format") != PLAN_FORMAT:
            raise PlanError(f"{os.fspath(path)}: not a keyguard plan (format is {raw.get('format')!r})")
        from pydantic import ValidationError

        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)[:5]
            )
            raise PlanError(f"{os.fspath(path)}: invalid plan: {problems}") from None
