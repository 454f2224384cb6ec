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
        return ConfigRead(AdapterConfig(), {}, {EVERYTHING}, [problem])
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
        return ConfigRead(config, raw)
    described = "; ".join(f"{name}: {' / '.join(texts)}" for name, texts in problems.items())
    problem = finding(
        kinds.INVALID_ADAPTER_CONFIG,
        f"{ADAPTER_CONFIG} has {len(problems)} invalid field(s): {described}",
        examples=[],
        ctx={"file": path, "problem": "invalid-fields", "fields": {k: " / ".join(v) for k, v in problems.items()}},
    )
    return ConfigRead(config, raw, set(problems), [problem])


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
    bad = {key: error for key in config.rank_pattern if (error := _regex_error(key))}
    if bad:
        out["rank_pattern"] = [f"key {key!r} is not a valid regular expression ({error})" for key, error in bad.items()]
    return out


def _regex_error(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    return None
