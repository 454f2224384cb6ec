"""Export a plan for other loaders: transformers / PEFT ``key_mapping`` and mmengine ``revise_keys``.

transformers applies every matching ``key_mapping`` entry in order (``re.search`` on the key, the match replaced
once, ``\\1`` as the only back-reference); mmengine applies ``re.sub`` for each ``revise_keys`` pair in order. Rules
that neither can express (arithmetic index shifts, renames needing two captured groups) are exported as one
anchored entry per key, computed by running the plan over the keys; a ``remap`` that renumbers (an explicit
index map) is exported that way to both.

``key_mapping`` is a dict, so a pattern can appear in it once: when a plan repeats a rule (a prefix doubled on some
keys only is stripped by two identical rules), the repeat is written as an equivalent pattern wrapped in a
non-capturing group, so that both steps survive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import AddPrefix, MapKeys, Remap, Rename, ReplacePrefix, StripPrefix


def export_plan(plan: Plan, keys: Iterable[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``(key_mapping, revise_keys)`` equivalent to the plan's renaming rules on ``keys``."""
    names = list(dict.fromkeys(keys))
    key_mapping: dict[str, str] = {}
    revise: list[tuple[str, str]] = []
    for rule in plan.rules:
        if not rule.renames:
            continue
        explicit: list[tuple[str, str]] = []
        for i, name in enumerate(names):
            new = rule.rename(name)
            if new is not None:
                explicit.append((name, new))
                names[i] = new
        if isinstance(rule, (StripPrefix, AddPrefix, ReplacePrefix, MapKeys)):
            pairs = rule.key_mapping()
            _extend(key_mapping, pairs)
            revise.extend(pairs)
            continue
        per_key = [(f"^{re.escape(old)}$", new.replace("\\", "\\\\")) for old, new in explicit]
        _extend(key_mapping, per_key)
        pattern = rule.key_mapping() if isinstance(rule, (Rename, Remap)) else []
        revise.extend(pattern or per_key)
    return key_mapping, revise


def _extend(key_mapping: dict[str, str], pairs: Iterable[tuple[str, str]]) -> None:
    """Append ``pairs`` in order; a pattern already present is wrapped in ``(?:...)`` (same matches, same groups)
    rather than overwriting the earlier entry."""
    for pattern, replacement in pairs:
        while pattern in key_mapping:
            pattern = f"(?:{pattern})"
        key_mapping[pattern] = replacement


def render_key_mapping(plan: Plan, keys: Iterable[str], *, as_json: bool = False) -> str:
    """The export as pasteable Python (or JSON)."""
    key_mapping, revise = export_plan(plan, keys)
    if as_json:
        return json.dumps({"key_mapping": key_mapping, "revise_keys": [list(p) for p in revise]}, indent=2)
    lines = [
        "# transformers / PEFT: Model.from_pretrained(..., key_mapping=KEY_MAPPING)",
        "KEY_MAPPING = {",
        *(f"    {pattern!r}: {replacement!r}," for pattern, replacement in key_mapping.items()),
        "}",
        "",
        "# mmengine: load_checkpoint(model, filename, revise_keys=REVISE_KEYS)",
        "REVISE_KEYS = [",
        *(f"    ({pattern!r}, {replacement!r})," for pattern, replacement in revise),
        "]",
    ]
    if not key_mapping:
        lines.insert(0, "# the safe plan is empty: no renaming to export")
    return "\n".join(lines)
