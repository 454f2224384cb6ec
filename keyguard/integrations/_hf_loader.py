"""What transformers' ``from_pretrained`` does to a checkpoint's keys, computed with transformers' own code on the
meta device: no tensor data is read and nothing is loaded.

transformers 5 converts legacy layouts while loading (``core_model_loading.convert_and_load_state_dict_in_model``):
every ``WeightRenaming`` of the model's conversion mapping is applied to each checkpoint key in turn (a user's
``key_mapping`` first, then the per-model tables of ``conversion_mapping.py``, then the ``legacy`` renames:
``LayerNorm.gamma``/``beta``, ``weight_g``/``weight_v``), then at most one ``WeightConverter`` (stacked experts,
fused or split projections), then the ``base_model_prefix`` is added or stripped when that makes the key one the
model has. Afterwards missing weights are tied to their partners (symmetrically) or newly initialised, and
``_keys_to_ignore_on_load_missing`` / ``_keys_to_ignore_on_load_unexpected`` (plus rotary ``inv_freq`` and
``position_ids`` buffers) are dropped from the report. Shape mismatches and failed conversions raise; missing and
unexpected keys only log a warning.

``simulate`` replays the key handling with the same functions (``get_model_conversion_mapping``,
``WeightTransform.rename_source_key``, ``rename_source_key``, ``WeightConverter.convert`` on meta tensors) and
records which transform moved which key, so each difference the loader handles can be reported as such.
Module ``_load_state_dict_pre_hook``s and ``_load_from_state_dict`` overrides are not part of it: transformers 5
never calls ``load_state_dict`` in ``from_pretrained`` (it sets each parameter itself), so they do not run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from keyguard._dtypes import canonical_dtype
from keyguard.sources._keyset import KeySet, TensorInfo

SUPPORTED_TRANSFORMERS: Final = "5.x"
"""The transformers release series whose loader ``keyguard.integrations.transformers`` replays."""
VERIFIED_TRANSFORMERS: Final = "5.24.0"
"""The transformers release it was verified with (``constraints.txt``)."""


@dataclass
class Step:
    """One loader transform that applied: a rename, the base-model prefix, or a conversion of several tensors."""

    kind: str  # "rename", "base_prefix", "convert", "user_mapping"
    label: str
    sources: list[str] = field(default_factory=list)  # original checkpoint keys
    targets: list[str] = field(default_factory=list)  # the keys the loader gives them


@dataclass
class LoaderView:
    """The checkpoint as the loader sees it after its own conversions, in the model's key space."""

    tensors: dict[str, TensorInfo]  # loader key -> shape/dtype (converted tensors: the shape after conversion)
    origin: dict[str, list[str]]  # loader key -> original checkpoint keys it is made from
    converter: dict[str, Any]  # loader key (first target) -> the converter that makes it, for converted tensors
    steps: list[Step]
    conversion_errors: dict[str, str]  # loader key -> why the conversion failed
    expected: dict[str, TensorInfo]  # the model's keys
    tied: dict[str, str]  # model key the loader ties -> the key it takes the value of
    ignored_missing: list[str]  # model keys absent from the checkpoint that the model allows missing
    ignored_unexpected: list[str]  # loader keys the model drops by design
    base_model_prefix: str


def import_loader() -> Any:
    """transformers' loading internals, or ``UnsupportedVersionError`` when they are not the ones replayed here."""
    from keyguard._exceptions import UnsupportedVersionError
    from keyguard.sources._torch import import_transformers

    transformers = import_transformers("to replay from_pretrained's key handling")
    version = str(transformers.__version__)
    try:
        from transformers import conversion_mapping, core_model_loading
        from transformers.utils import loading_report  # noqa: F401  (LoadStateDictInfo, used by _leniency)
    except ImportError:
        conversion_mapping = core_model_loading = None
    needed = ("rename_source_key", "apply_converters", "WeightRenaming", "WeightConverter", "dot_natural_key")
    if (
        not version.startswith("5.")
        or core_model_loading is None
        or not all(hasattr(core_model_loading, n) for n in needed)
        or not hasattr(conversion_mapping, "get_model_conversion_mapping")
    ):
        raise UnsupportedVersionError(
            f"keyguard.integrations.transformers replays the loader of transformers {SUPPORTED_TRANSFORMERS}"
            f" (verified with {VERIFIED_TRANSFORMERS}); the installed transformers is {version!r}. Install"
            f" transformers=={VERIFIED_TRANSFORMERS}, or diagnose with `keyguard diagnose` against a config folder."
        )
    return transformers


def build_meta_model(model_class: Any, config: Any) -> Any:
    """The model ``from_pretrained`` would build, on the meta device (no memory, no initialisation)."""
    import torch

    with torch.device("meta"):
        if hasattr(model_class, "_model_mapping"):  # an Auto class: the concrete class comes from the config
            return model_class.from_config(config)
        return model_class(config)


def simulate(checkpoint: KeySet, model: Any, key_mapping: Mapping[str, str] | None = None) -> LoaderView:
    """Replay the key handling of ``from_pretrained`` for ``checkpoint`` into ``model`` (built on meta)."""
    import torch
    from transformers import conversion_mapping as cm
    from transformers import core_model_loading as cml

    transforms = cm.get_model_conversion_mapping(model, dict(key_mapping) if key_mapping else None, None)
    user = len(key_mapping or {})
    renamings = [t for t in transforms if isinstance(t, cml.WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, cml.WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    user_renamings = {id(t) for t in transforms[:user]}
    meta_sd = model.state_dict()
    base = str(getattr(model, "base_model_prefix", "") or "")
    steps: dict[tuple[str, str], Step] = {}
    tensors: dict[str, TensorInfo] = {}
    origin: dict[str, list[str]] = {}
    groups: dict[str, tuple[Any, list[tuple[str, str]]]] = {}  # first target -> converter, [(original, pattern)]

    def step(kind: str, label: str, source: str, target: str) -> None:
        entry = steps.setdefault((kind, label), Step(kind, label))
        entry.sources.append(source)
        entry.targets.append(target)

    for original in sorted(checkpoint, key=cml.dot_natural_key):
        key = original
        fired: list[tuple[str, str]] = []
        for renaming in renamings:
            new, pattern = renaming.rename_source_key(key)
            if pattern is not None and new != key:
                kind = "user_mapping" if id(renaming) in user_renamings else "rename"
                fired.append((kind, _describe(renaming, pattern)))
                key = new
        converted, pattern = cml.apply_converters(key, converters)
        final, _ = cml.rename_source_key(converted, [], [], base, meta_sd)
        if final not in meta_sd and original in meta_sd:  # the loader's own fallback: the key was right as it was
            final, pattern, fired, converted = original, None, [], original
        if pattern is not None:
            converter = by_pattern[pattern]
            groups.setdefault(final, (converter, []))[1].append((original, pattern))
            continue
        for kind, label in fired:
            step(kind, label, original, final)
        if final != converted:
            step("base_prefix", _prefix_label(converted, final, base), original, final)
        if final in tensors:  # two checkpoint keys onto one model key: the loader keeps the first one it sees
            origin[final].append(original)
            continue
        tensors[final] = checkpoint[original]
        origin[final] = [original]
    errors: dict[str, str] = {}
    converter_of: dict[str, Any] = {}
    for first, (converter, members) in groups.items():
        made = _convert_on_meta(torch, checkpoint, first, converter, members, model, errors)
        sources = [o for o, _ in members]
        label = f"{' + '.join(converter.source_patterns)} -> {', '.join(converter.target_patterns)}"
        for name, info in made.items():
            tensors[name] = info
            origin[name] = sources
            converter_of[name] = (first, converter, members)
        entry = steps.setdefault(("convert", label), Step("convert", label))
        entry.sources.extend(sources)
        entry.targets.extend(made)
    expected = {k: TensorInfo(tuple(int(d) for d in v.shape), canonical_dtype(v.dtype)) for k, v in meta_sd.items()}
    tied, ignored_missing, ignored_unexpected = _leniency(model, tensors, expected)
    return LoaderView(
        tensors=tensors,
        origin=origin,
        converter=converter_of,
        steps=list(steps.values()),
        conversion_errors=errors,
        expected=expected,
        tied=tied,
        ignored_missing=ignored_missing,
        ignored_unexpected=ignored_unexpected,
        base_model_prefix=base,
    )


def _describe(renaming: Any, pattern: str) -> str:
    targets = getattr(renaming, "_original_target_patterns", None) or renaming.target_patterns
    sources = getattr(renaming, "_original_source_patterns", None) or renaming.source_patterns
    source = pattern if pattern in sources else sources[0]
    return f"{source} -> {targets[0] if targets else ''}"


def _prefix_label(before: str, after: str, base: str) -> str:
    return f"add {base}." if after == f"{base}.{before}" else f"strip {base}."


def _convert_on_meta(
    torch: Any,
    checkpoint: KeySet,
    first: str,
    converter: Any,
    members: list[tuple[str, str]],
    model: Any,
    errors: dict[str, str],
) -> dict[str, TensorInfo]:
    """Run the converter on meta tensors of the checkpoint's shapes: the shapes it makes, or why it fails."""
    instance = copy.deepcopy(converter)
    dtype = None
    for original, pattern in members:
        info = checkpoint[original]
        dtype = dtype or info.dtype
        meta = torch.empty(info.shape or (), dtype=torch.float32, device="meta")
        instance.add_tensor(first, original, pattern, meta)
    try:
        made = instance.convert(first, model=model, config=model.config)
    except Exception as exc:  # the ops raise anything on tensors they cannot convert
        errors[first] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        return {first: TensorInfo(None, dtype)}
    out: dict[str, TensorInfo] = {}
    for name, value in made.items():
        tensor = value[0] if isinstance(value, list) else value
        out[name] = TensorInfo(tuple(int(d) for d in tensor.shape), dtype)
    return out


def _leniency(
    model: Any, tensors: Mapping[str, TensorInfo], expected: Mapping[str, TensorInfo]
) -> tuple[dict[str, str], list[str], list[str]]:
    """What the loader settles itself: tied weights, and keys its patterns allow missing or unexpected."""
    from transformers.utils.loading_report import LoadStateDictInfo

    missing = set(expected) - set(tensors)
    tied: dict[str, str] = {}
    for target, source in dict(getattr(model, "all_tied_weights_keys", {}) or {}).items():
        if target in missing and source not in missing:
            tied[target] = source
        elif source in missing and target not in missing:  # the loader swaps them and ties the one it has
            tied[source] = target
    missing -= set(tied)
    info = LoadStateDictInfo(
        missing_keys=set(missing),
        unexpected_keys=set(tensors) - set(expected),
        mismatched_keys=set(),
        error_msgs=[],
        conversion_errors={},
        skipped_pp_keys=set(),
    )
    unexpected_before = set(info.unexpected_keys)
    model._adjust_missing_and_unexpected_keys(info)
    ignored_missing = sorted(missing - info.missing_keys)
    ignored_unexpected = sorted(unexpected_before - info.unexpected_keys)
    return tied, ignored_missing, ignored_unexpected
