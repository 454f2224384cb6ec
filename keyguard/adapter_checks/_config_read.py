"""``adapter_config.json`` read leniently: every problem becomes data (``KG501``), never an exception.

A folder without the file is not an adapter (``SourceError``, exit 2). A file that exists but is not valid JSON, or
whose fields PEFT would refuse, is a finding: the checks that do not depend on the broken fields still run, with
defaults in their place, and the others are skipped (``ConfigRead.usable``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from keyguard._exceptions import AdapterConfigError, SourceError
from keyguard.adapter_checks._findings import finding
from keyguard.adapter_checks._peft_conventions import Base, FirstMatch, Ranks, Selection, SlowPattern, select
from keyguard.report import _kinds as kinds
from keyguard.report._model import Finding
from keyguard.sources._adapter import ADAPTER_CONFIG, AdapterConfig
from keyguard.sources._jsonfile import load_json_object

_BROKEN_FILE: Final = frozenset({"not-json", "not-utf8", "lone-surrogate", "duplicate-key", "not-an-object"})
EVERYTHING: Final = "*"


@dataclass
class ConfigRead:
    """The config with every invalid field replaced by its default, and what was wrong."""

    config: AdapterConfig
    raw: dict[str, Any]
    invalid: set[str] = field(default_factory=set)  # field names, or EVERYTHING when the file is not a JSON object
    findings: list[Finding] = field(default_factory=list)
    path: str = ""  # the adapter_config.json read

    def usable(self, *names: str) -> bool:
        """True when every named field was read as written."""
        return EVERYTHING not in self.invalid and not self.invalid.intersection(names)

    @property
    def base_class(self) -> str | None:
        """The model class PEFT recorded at training time (``auto_mapping.base_model_class``), if any."""
        mapping = self.raw.get("auto_mapping")
        name = mapping.get("base_model_class") if isinstance(mapping, dict) else None
        return name if isinstance(name, str) else None


def read_config(folder: str) -> ConfigRead:
    """Read ``folder/adapter_config.json``.

    Raises:
        SourceError: the file is absent or unreadable (the folder is not an adapter).
    """
    path = os.path.join(folder, ADAPTER_CONFIG)
    if not os.path.exists(path):  # anything else that is there is read, and refused, by the JSON reader
        if not os.path.isdir(folder):
            raise SourceError(folder, "not-found", "no such adapter folder")
        raise SourceError(folder, "not-an-adapter", f"has no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    try:
        raw = load_json_object(path, AdapterConfigError)
    except AdapterConfigError as exc:
        if exc.problem not in _BROKEN_FILE:
            raise
        problem = finding(
            kinds.INVALID_ADAPTER_CONFIG,
            f"{ADAPTER_CONFIG} cannot be read: {exc.detail}; the checks that need the config are skipped",
            examples=[],
            ctx={"file": path, "problem": exc.problem, "detail": exc.detail, "fields": {}},
        )
        return ConfigRead(AdapterConfig(), {}, {EVERYTHING}, [problem], path)
    problems: dict[str, list[str]] = {}
    try:
        config = AdapterConfig.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            name = str(error["loc"][0]) if error["loc"] else "<root>"
            text = f"{error['msg']} (got {error.get('input')!r})"
            if text not in problems.setdefault(name, []):
                problems[name].append(text)
        config = _salvage(raw, set(problems))
    problems.update(_peft_checks(raw, config))
    if not problems:
        return ConfigRead(config, raw, path=path)
    described = "; ".join(f"{name}: {' / '.join(texts)}" for name, texts in problems.items())
    problem = finding(
        kinds.INVALID_ADAPTER_CONFIG,
        f"{ADAPTER_CONFIG} has {len(problems)} invalid field(s): {described}",
        examples=[],
        ctx={"file": path, "problem": "invalid-fields", "fields": {k: " / ".join(v) for k, v in problems.items()}},
    )
    return ConfigRead(config, raw, set(problems), [problem], path)


def _salvage(raw: dict[str, Any], invalid: set[str]) -> AdapterConfig:
    """The config without its invalid fields (defaults instead)."""
    try:
        return AdapterConfig.model_validate({k: v for k, v in raw.items() if k not in invalid})
    except ValidationError:
        return AdapterConfig()


def _peft_checks(raw: dict[str, Any], config: AdapterConfig) -> dict[str, list[str]]:
    """What PEFT refuses beyond the types: a missing ``peft_type``, regular expressions that do not compile."""
    out: dict[str, list[str]] = {}
    if "peft_type" not in raw:
        out["peft_type"] = ["missing (PEFT reads it to choose the adapter method)"]
    for name in ("target_modules", "exclude_modules"):
        value = getattr(config, name)
        if isinstance(value, str) and name in raw:
            error = _regex_error(value)
            if error:
                out[name] = [f"not a valid regular expression ({error})"]
    for name in ("rank_pattern", "alpha_pattern"):
        bad = {key: error for key in getattr(config, name) if (error := _regex_error(key))}
        if bad:
            out[name] = [f"key {key!r} is not a valid regular expression ({error})" for key, error in bad.items()]
    layers = config.layers_pattern
    for pattern in [layers] if isinstance(layers, str) else layers or []:
        error = _regex_error(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.")  # as peft wraps it
        if error and "layers_pattern" in raw:
            out.setdefault("layers_pattern", []).append(f"{pattern!r} is not a valid regular expression ({error})")
    return out


def evaluate_patterns(read: ConfigRead, base: Base) -> tuple[Selection, Ranks | None, list[Finding]]:
    """What the config selects, and the ranks it gives, with every regular expression under its time budget.

    A pattern that overruns (``(.*)*X`` backtracks for minutes in ``re``, and so in PEFT) becomes a ``KG501``
    finding; its field is then treated as invalid (its default in its place, the checks that need it skipped) and
    the rest is evaluated again. ``alpha_pattern`` is evaluated too, though keyguard needs no alphas: PEFT matches it
    on load, so one that would hang PEFT is worth saying.
    """
    problems: list[Finding] = []
    while True:
        try:
            selection = select(read.config, base)
            modules = list(base.weights)
            ranks = Ranks(read.config, modules) if read.usable("r", "rank_pattern") else None
            if read.usable("alpha_pattern"):
                FirstMatch("alpha_pattern", list(read.config.alpha_pattern), modules)
            return selection, ranks, problems
        except SlowPattern as slow:
            detail = (
                f"{slow.field} {slow.pattern!r} did not finish matching the base's {slow.names:,} module paths within"
                f" {slow.seconds:g} s: Python's re, which PEFT uses, backtracks on it for minutes or more (PEFT would"
                " hang); the checks that need it are skipped"
            )
            problems.append(
                finding(
                    kinds.INVALID_ADAPTER_CONFIG,
                    f"{ADAPTER_CONFIG}: {detail}",
                    examples=[],
                    ctx={
                        "file": read.path,
                        "problem": "pattern-too-slow",
                        "detail": detail,
                        "fields": {slow.field: detail},
                    },
                )
            )
            read.invalid.add(slow.field)
            default = AdapterConfig.model_fields[slow.field].get_default(call_default_factory=True)
            read.config = read.config.model_copy(update={slow.field: default})


def _regex_error(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    return None
