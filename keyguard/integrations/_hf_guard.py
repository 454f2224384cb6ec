"""The diagnosis behind ``keyguard.integrations.transformers``, and the guarded ``from_pretrained``.

The guarded load diagnoses first, turns the safe plan into a ``key_mapping`` (transformers applies it before its own
conversions), replays the loader with that mapping and refuses unless every weight will be loaded; then it calls
the real ``from_pretrained``, checks its loading info, and compares every weight of the model with the tensor of the
file it came from (converted by the same converter, cast to the model's dtype). Any difference raises
``KeyMismatchError``: no model with weights left newly initialised is returned.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from keyguard._exceptions import KeyMismatchError, PlanError, SourceError
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Applicability
from keyguard.integrations._hf_loader import LoaderView, build_meta_model, import_loader, simulate
from keyguard.integrations._hf_report import loader_keysets, merge
from keyguard.report import _kinds as kinds
from keyguard.report._build import make_finding
from keyguard.report._model import Example, Finding, Report, SourceRef, Summary
from keyguard.sources._keyset import KeySet

Strategy = Literal["auto", "strict"] | Plan


@dataclass
class Diagnosis:
    """A checkpoint replayed through the loader of one model class and config, and its report."""

    checkpoint: KeySet
    model_class: Any
    config: Any
    view: LoaderView
    report: Report


def diagnosis(
    checkpoint: Any,
    model: Any,
    *,
    config: Any = None,
    key_mapping: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> Diagnosis:
    """Read the checkpoint's keys, replay ``from_pretrained``'s key handling, and diagnose what is left."""
    import keyguard
    from keyguard.sources._resolve import read_keys

    transformers = import_loader()
    keys = read_keys(checkpoint)
    model_class, config = _resolve(transformers, model, config, keys)
    meta = build_meta_model(model_class, config)
    view = simulate(keys, meta, key_mapping)
    name = type(meta).__name__
    loader_side, model_side = loader_keysets(view, keys, name)
    ignore = list(ignore)
    engine = keyguard.diagnose(loader_side, model_side, ignore=ignore)
    return Diagnosis(keys, type(meta), config, view, merge(view, engine, keys, name, ignore))


def _resolve(transformers: Any, model: Any, config: Any, keys: KeySet) -> tuple[Any, Any]:
    if isinstance(model, str):
        try:
            cls = getattr(transformers, model, None)
        except Exception:  # transformers' lazy module imports on attribute access
            cls = None
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise SourceError(
                f"transformers:{model}",
                "unknown-architecture",
                f"transformers {transformers.__version__} has no model class {model!r}",
            )
    elif isinstance(model, type):
        cls = model
    else:
        cls = type(model)
        config = config if config is not None else getattr(model, "config", None)
    if config is None:
        config = _config_beside(keys)
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        where = path if os.path.isfile(path) or not os.path.isdir(path) else os.path.join(path, "config.json")
        if not os.path.isfile(where):
            raise SourceError(where, "not-found", "no such config file")
        try:
            config = transformers.AutoConfig.from_pretrained(where, local_files_only=True)
        except Exception as exc:
            raise SourceError(where, "invalid-config", f"is not a config transformers can read ({exc})") from None
    return cls, config


def _config_beside(keys: KeySet) -> Any:
    location = keys.location or ""
    folder = location if os.path.isdir(location) else os.path.dirname(location)
    candidate = os.path.join(folder, "config.json")
    if folder and os.path.isfile(candidate):
        return candidate
    raise SourceError(
        location or None,
        "no-config",
        "no config given and no config.json beside the checkpoint; pass config= (or --config)",
    )


def from_pretrained(
    model_class: Any,
    path: str | os.PathLike[str],
    *,
    strategy: Strategy = "auto",
    ignore: Iterable[str] = (),
    **kwargs: Any,
) -> Any:
    """``model_class.from_pretrained(path, **kwargs)``, through a diagnosis and verified: never a model with weights
    left newly initialised.

    The safe plan of the diagnosis (or no rewriting with ``strategy="strict"``, or a ``Plan`` of your own) is passed
    as ``key_mapping`` (after a ``key_mapping`` of yours, as transformers applies them in order). The load is
    refused before it starts unless, with that mapping, every weight of the model will be loaded (or tied, or is
    allowed missing by the model) and every tensor of the checkpoint used (or dropped by the model's own rules).
    After loading, every weight is compared with the file.

    Args:
        model_class: a transformers model class (or an Auto class).
        path: a local model folder (or checkpoint file) with its ``config.json``, or pass ``config=``.
        strategy: ``"auto"`` (the safe plan), ``"strict"`` (no rewriting) or a ``Plan`` (its safe renames).
        ignore: regular expressions of keys allowed to differ: model weights that may stay newly initialised (a
            task head absent from a base-model checkpoint, ``"^classifier[.]"``) and checkpoint tensors that may
            be dropped.
        kwargs: passed to ``from_pretrained`` (``dtype``, ``config``, ``key_mapping``, ``output_loading_info``...).

    Returns:
        The model (and the loading info, with ``output_loading_info=True``), as ``from_pretrained`` returns them.

    Raises:
        KeyMismatchError: weights would be left newly initialised, tensors dropped, shapes differ, a conversion
            fails, or a loaded weight differs from the file; ``error.report`` holds the findings.
        UnsupportedVersionError: the installed transformers is not 5.x.
    """
    user_mapping = kwargs.pop("key_mapping", None)
    config = kwargs.pop("config", None)
    wants_info = bool(kwargs.pop("output_loading_info", False))
    ignore = list(ignore)
    before = diagnosis(path, model_class, config=config, key_mapping=user_mapping, ignore=ignore)
    plan = _choose(strategy, before.report)
    combined = dict(user_mapping or {})
    combined.update(_plan_mapping(plan, before.view, combined))
    after = diagnosis(path, before.model_class, config=before.config, key_mapping=combined or None, ignore=ignore)
    if not after.report.ok:
        raise KeyMismatchError(
            f"{os.fspath(path)}: from_pretrained would not load every weight even with the plan"
            f" ({len(plan.rules)} rule(s) as key_mapping); nothing was loaded:\n\n{after.report.render('table')}",
            after.report,
        )
    model, info = after.model_class.from_pretrained(
        path, config=after.config, key_mapping=combined or None, output_loading_info=True, **kwargs
    )
    _check_info(path, info, after, ignore)
    verified = verify(model, after)
    if not verified.ok:
        raise KeyMismatchError(
            f"{os.fspath(path)}: the load did not take:\n\n{verified.render('table')}",
            verified,
        )
    return (model, info) if wants_info else model


def _choose(strategy: Strategy, report: Report) -> Plan:
    if isinstance(strategy, Plan):
        return strategy.at_least(Applicability.safe)
    if strategy == "auto":
        return report.plan
    if strategy == "strict":
        return Plan()
    raise ValueError(f"strategy must be 'auto', 'strict' or a Plan, not {strategy!r}")


def _plan_mapping(plan: Plan, view: LoaderView, existing: Mapping[str, str]) -> dict[str, str]:
    from keyguard.fixes._emit import export_plan

    refused = [rule.describe() for rule in plan.rules if not rule.renames]
    if refused:
        raise PlanError(
            "from_pretrained takes renames only (key_mapping); the plan also needs: "
            + "; ".join(refused)
            + ". Write the checkpoint with `keyguard fix --unsafe-fixes` first"
        )
    mapping, _ = export_plan(plan, view.tensors)
    out: dict[str, str] = {}
    for pattern, replacement in mapping.items():
        while pattern in existing or pattern in out:
            pattern = f"(?:{pattern})"
        out[pattern] = replacement
    return out


def _check_info(path: Any, info: Mapping[str, Any], after: Diagnosis, ignore: list[str]) -> None:
    import re

    patterns = [re.compile(p) for p in ignore]

    def kept(keys: Iterable[str]) -> list[str]:
        return sorted(k for k in keys if not any(p.search(k) for p in patterns))

    problems = {
        "missing": kept(info.get("missing_keys") or ()),
        "unexpected": kept(info.get("unexpected_keys") or ()),
        "mismatched": sorted(str(k[0]) for k in info.get("mismatched_keys") or ()),
    }
    if any(problems.values()):
        listed = "; ".join(f"{what}: {', '.join(keys[:5])}" for what, keys in problems.items() if keys)
        raise KeyMismatchError(
            f"{os.fspath(path)}: from_pretrained reported keys keyguard's replay did not predict ({listed});"
            " the model was not returned",
            after.report,
        )


def verify(model: Any, done: Diagnosis) -> Report:
    """Compare every weight of a model loaded by ``from_pretrained`` with the checkpoint's tensors."""
    import torch

    from keyguard.fixes._load import load_tensors

    view = done.view
    state = model.state_dict()
    files = load_tensors(done.checkpoint.location or "")
    expected: dict[str, Any] = {}
    for key, origins in view.origin.items():
        if key not in view.expected or key in view.ignored_unexpected:
            continue
        if key in view.converter:
            first, converter, members = view.converter[key]
            if first not in expected:
                instance = copy.deepcopy(converter)
                for original, pattern in members:
                    instance.add_tensor(first, original, pattern, files[original])
                for name, value in instance.convert(first, model=model, config=model.config).items():
                    expected[name] = value[0] if isinstance(value, list) else value
            continue
        expected[key] = files[origins[0]]
    differ: dict[str, str] = {}
    equal: list[str] = []
    with torch.no_grad():
        for key, stored in expected.items():
            current = state.get(key)
            if current is None:
                differ[key] = "the model has no such weight"
                continue
            if tuple(current.shape) != tuple(stored.shape):
                differ[key] = f"shape {list(current.shape)}, file {list(stored.shape)}"
                continue
            if torch.equal(current, stored.to(device=current.device, dtype=current.dtype)):
                equal.append(key)
            else:
                gap = (current.double() - stored.to(current.device).double()).abs().max().item()
                differ[key] = f"differs from the checkpoint (largest difference {gap:.3g})"
        for target, source in view.tied.items():
            a, b = state.get(target), state.get(source)
            if a is None or b is None or not torch.equal(a, b):
                differ[target] = f"not tied to {source}"
            else:
                equal.append(target)
    findings: list[Finding] = []
    if differ:
        findings.append(
            make_finding(
                kinds.LOADED_TENSOR_DIFFERS,
                f"{len(differ):,} weight(s) of the loaded model differ from the checkpoint",
                expected_keys=list(differ),
                examples=[Example(expected=k, detail=why) for k, why in differ.items()],
                ctx={"differ": differ},
            )
        )
    else:
        findings.append(
            make_finding(
                kinds.LOADED_VERIFIED,
                f"all {len(equal):,} weight(s) loaded from the checkpoint equal it",
                expected_keys=equal,
                examples=[],
                ctx={"count": len(equal)},
            )
        )
    total = len(view.expected)
    return Report(
        ok=not differ,
        checkpoint=SourceRef(location=done.checkpoint.location, format=done.checkpoint.format, tensors=len(files)),
        expected=SourceRef(location=type(model).__name__, format="transformers", tensors=total),
        summary=Summary.of(
            expected=total,
            checkpoint=len(files),
            matched=len(equal),
            fixable=0,
            missing=0,
            unexpected=0,
            shape_mismatches=0,
            ambiguous=0,
        ),
        findings=findings,
    )
