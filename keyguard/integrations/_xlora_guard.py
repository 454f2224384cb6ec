"""X-LoRA: standard LoRA adapters loaded as experts through a diagnosis, and verified (peft#2132).

Stock PEFT loads each expert with ``peft.tuners.xlora.model._load_adapter_into_lora_model``, which rewrites every
key by dropping leading segments until it starts with ``model.`` and prepending ``model.``. That is right only when
the base model's top-level module is called ``model``; it loops forever on a key with no ``model.`` segment; it never
checks for missing keys; it leaves the experts on the meta device under ``low_cpu_mem_usage=True``; and it registers
the experts as ``"0"``, ``"1"``, ... whatever names the user gave. There is no public hook, but the function is looked
up on its module at call time, so ``guard()`` replaces it there for the duration of a build, and puts it back.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from keyguard._exceptions import KeyMismatchError, SourceError, UnsupportedVersionError
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Applicability
from keyguard.integrations._adapters import (
    Diagnosis,
    Strategy,
    accepted_keys,
    compare,
    comparison_findings,
    describe_plan,
    diagnose_adapter,
    expected_keyset,
    file_tensors,
    finding,
    load_into,
    make_report,
    refusal,
    summary_of,
    unresolved_finding,
)
from keyguard.integrations._versions import VERIFIED_PEFT, check_peft_version, check_set_adapter, installed_peft
from keyguard.report import _kinds as kinds
from keyguard.report._model import Example, Finding, Fix, Report, SourceRef
from keyguard.sources._keyset import KeySet
from keyguard.sources._resolve import read_keys

XLORA_MODULE: Final = "peft.tuners.xlora.model"
"""The module whose expert loader ``guard()`` replaces."""
LOADER_NAME: Final = "_load_adapter_into_lora_model"
"""The name of PEFT's expert loader in ``XLORA_MODULE``."""
_INTEGRATION: Final = "keyguard.integrations.xlora"
_P = inspect.Parameter
_LOADER_SHAPE: Final = (
    ("lora_model", _P.POSITIONAL_OR_KEYWORD, _P.empty),
    ("adapter_name", _P.POSITIONAL_OR_KEYWORD, _P.empty),
    ("model_id", _P.POSITIONAL_OR_KEYWORD, _P.empty),
    ("torch_device", _P.POSITIONAL_OR_KEYWORD, None),
    ("ephemeral_gpu_offload", _P.POSITIONAL_OR_KEYWORD, False),
    ("autocast_adapter_dtype", _P.POSITIONAL_OR_KEYWORD, True),
    ("subfolder", _P.POSITIONAL_OR_KEYWORD, None),
    ("kwargs", _P.VAR_KEYWORD, _P.empty),
)
_SET_STATE_NAMES: Final = (
    "model",
    "peft_model_state_dict",
    "adapter_name",
    "ignore_mismatched_sizes",
    "low_cpu_mem_usage",
)
_PEFT_PREFIX: Final = "base_model.model."
_STOCK: Final = "stock PEFT"


# -- version safety --------------------------------------------------------------------------------------------------
def check_supported(version: str, function: Callable[..., Any]) -> None:
    """Refuse to replace ``function`` unless ``version`` is a supported PEFT release (0.15.0 to 0.21.x) and the
    function has the shape keyguard was verified with (the parameters of ``_load_adapter_into_lora_model``, the same
    from PEFT 0.13.0 to 0.21.2).

    A pure check: pass any version string and function to see what ``guard()`` would do with them.

    Raises:
        UnsupportedVersionError: the version is outside PEFT 0.15.0 to 0.21.x (or a pre-release), or the function's
            parameters differ; the message says which and what was expected.
    """
    check_peft_version(version, _INTEGRATION)
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        parameters = None
    shape = None if parameters is None else tuple((p.name, p.kind, p.default) for p in parameters)
    if shape != _LOADER_SHAPE:
        found = "no inspectable signature" if parameters is None else f"({', '.join(map(str, parameters))})"
        wanted = ", ".join(_shape_text(p) for p in _LOADER_SHAPE)
        raise UnsupportedVersionError(
            f"{_INTEGRATION} replaces {XLORA_MODULE}.{LOADER_NAME} only when it looks as in PEFT {VERIFIED_PEFT}:"
            f" expected ({wanted}), found {found}. This PEFT ({version}) changed the X-LoRA loader; keyguard refuses"
            " to patch it blindly."
        )


def _shape_text(item: tuple[str, Any, Any]) -> str:
    name, kind, default = item
    if kind is _P.VAR_KEYWORD:
        return f"**{name}"
    return name if default is _P.empty else f"{name}={default!r}"


def _check_set_state_dict(function: Any, version: str) -> None:
    try:
        names = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        names = ()
    if names[: len(_SET_STATE_NAMES)] != _SET_STATE_NAMES:
        raise UnsupportedVersionError(
            f"{_INTEGRATION} loads experts with {XLORA_MODULE}.set_peft_model_state_dict"
            f"({', '.join(_SET_STATE_NAMES)}), as PEFT {VERIFIED_PEFT} binds it; this PEFT ({version}) has"
            f" ({', '.join(names) or 'no such function'})."
        )


# -- the guarded loader ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedExpert:
    """One expert the guarded loader loaded.

    Attributes:
        name: the name it is registered under: the one given in ``XLoraConfig.adapters``.
        path: the adapter folder.
        report: the diagnosis of the file as given against what the LoRA model accepts (``report.plan``: the safe
            plan).
        plan: the plan that was applied.
        assigned_on_exit: the expert's tensors were on the meta device (``low_cpu_mem_usage=True``) and were
            assigned when the guard exited.
    """

    name: str
    path: str
    report: Report
    plan: Plan
    assigned_on_exit: bool


@dataclass
class _Pending:
    lora_model: Any
    name: str
    what: str
    folder: str
    saved_to_live: dict[str, str]
    tensors: dict[str, Any]
    module: Any


@dataclass
class GuardSession:
    """What a ``guard()`` did: ``experts`` in the order they were loaded, ``reports`` by expert name."""

    strategy: Strategy = "auto"
    experts: list[LoadedExpert] = field(default_factory=list)
    _pending: list[_Pending] = field(default_factory=list, repr=False)

    @property
    def reports(self) -> dict[str, Report]:
        return {expert.name: expert.report for expert in self.experts}

    # the replacement of PEFT's loader; ``module`` is peft.tuners.xlora.model, looked up again at every call
    def _load(
        self,
        module: Any,
        lora_model: Any,
        adapter_name: str,
        model_id: str,
        torch_device: str | None,
        ephemeral_gpu_offload: bool,
        autocast_adapter_dtype: bool,
        subfolder: str | None,
        kwargs: dict[str, Any],
    ) -> None:
        from peft.peft_model import PeftModel
        from peft.tuners.lora.config import LoraConfig

        del torch_device  # the file's tensors are read on the CPU and copied to each layer's own device
        hub_kwargs, _ = PeftModel._split_kwargs(kwargs)
        name = _expert_name(lora_model, adapter_name, model_id)
        folder = _adapter_folder(model_id, subfolder, hub_kwargs)
        what = f"X-LoRA expert {name!r} ({folder})"
        keys = _read_lora_keys(folder, name, what)
        _check_name(lora_model, name, folder, what)
        if name not in lora_model.peft_config:
            config = LoraConfig.from_pretrained(
                model_id, ephemeral_gpu_offload=ephemeral_gpu_offload, subfolder=subfolder, **hub_kwargs
            )
            config.inference_mode = False
            lora_model.peft_config[name] = config
            lora_model.inject_adapter(lora_model.model, name)
        _check_heads(lora_model, name, folder, what)
        saved_to_live = accepted_keys(lora_model, name)
        expected = expected_keyset(lora_model, saved_to_live, f"{what}: the keys the LoRA model accepts")
        diagnosis = diagnose_adapter(folder, expected, self.strategy, keys=keys)
        if not diagnosis.ok:
            raise refusal(what, diagnosis)
        tensors = file_tensors(diagnosis)
        live = lora_model.state_dict(keep_vars=True)
        deferred = any(live[key].is_meta for key in saved_to_live.values())
        if not deferred:
            load_into(lora_model, name, saved_to_live, tensors, module.set_peft_model_state_dict, what=what)
        if hasattr(lora_model, "_cast_adapter_dtype"):
            # as stock PEFT; on meta tensors this sets the dtype the file's tensors are assigned with on exit
            lora_model._cast_adapter_dtype(adapter_name=name, autocast_adapter_dtype=autocast_adapter_dtype)
        if deferred:
            self._pending.append(_Pending(lora_model, name, what, folder, saved_to_live, tensors, module))
        else:
            _raise_unless_arrived(lora_model, name, what, folder, saved_to_live, tensors, diagnosis)
        self.experts.append(LoadedExpert(name, folder, diagnosis.report, diagnosis.plan, deferred))

    def _finish(self) -> None:
        """Assign the experts left on the meta device, now outside PEFT's ``init_empty_weights``, then verify."""
        pending, self._pending = self._pending, []
        for item in pending:
            load_into(
                item.lora_model,
                item.name,
                item.saved_to_live,
                item.tensors,
                item.module.set_peft_model_state_dict,
                what=item.what,
            )
        done: set[int] = set()
        for item in pending:
            if id(item.lora_model) not in done:
                done.add(id(item.lora_model))
                _materialise_classifier(item.lora_model)
        for item in pending:
            _raise_unless_arrived(item.lora_model, item.name, item.what, item.folder, item.saved_to_live, item.tensors)


@contextlib.contextmanager
def guard(strategy: Strategy = "auto") -> Iterator[GuardSession]:
    """Load X-LoRA experts through keyguard while the block runs: diagnosed, mapped, loaded, verified.

    Replaces ``peft.tuners.xlora.model._load_adapter_into_lora_model`` (PEFT's expert loader, looked up on its module
    at call time) for the duration of the block and puts the original back on exit, also when an exception escapes.
    Each expert is loaded by diagnosing its file's keys against the keys the LoRA model accepts for it (its LoRA
    parameters and ``modules_to_save`` copies), applying the strategy, loading with PEFT's own
    ``set_peft_model_state_dict``, and checking that every tensor the model holds for the expert equals the file's.

    Experts are registered under the names given in ``XLoraConfig.adapters`` (stock PEFT uses ``"0"``, ``"1"``,
    ...), so the forward pass works with any names. Under ``low_cpu_mem_usage=True`` the experts' tensors are
    assigned, and a meta X-LoRA classifier is materialised with ``nn.Linear``'s initialisation, when the block exits.

    Args:
        strategy: ``"auto"`` (the safe plan of each diagnosis), ``"strict"`` (no rewriting) or a ``Plan``.

    Yields:
        A ``GuardSession`` listing the experts loaded and their reports.

    PEFT's ``ignore_mismatched_sizes`` is not honoured: a tensor whose shape differs from the model's is refused, never
    skipped.

    Raises:
        UnsupportedVersionError: the installed PEFT is outside 0.15.0 to 0.21.x, or its loader does not look as
            verified.
        KeyMismatchError: an expert's keys do not fit even after the plan (nothing of it is loaded), a tensor did not
            arrive, an expert name is taken, or several experts train one classification head (a PEFT limitation).
            The message is the rendered report; ``error.report`` the report.
        SourceError: an expert's folder cannot be read.
    """
    _validate(strategy)
    module = importlib.import_module(XLORA_MODULE)
    version = installed_peft()
    original = getattr(module, LOADER_NAME)
    check_supported(version, original)
    _check_set_state_dict(getattr(module, "set_peft_model_state_dict", None), version)
    session = GuardSession(strategy)

    def _load_adapter_into_lora_model(
        lora_model: Any,
        adapter_name: str,
        model_id: str,
        torch_device: str | None = None,
        ephemeral_gpu_offload: bool = False,
        autocast_adapter_dtype: bool = True,
        subfolder: str | None = None,
        **kwargs: Any,
    ) -> None:
        session._load(
            importlib.import_module(XLORA_MODULE),
            lora_model,
            adapter_name,
            model_id,
            torch_device,
            ephemeral_gpu_offload,
            autocast_adapter_dtype,
            subfolder,
            kwargs,
        )

    setattr(module, LOADER_NAME, _load_adapter_into_lora_model)
    try:
        yield session
    finally:
        setattr(module, LOADER_NAME, original)
    session._finish()


def get_peft_model(model: Any, xlora_config: Any, *, strategy: Strategy = "auto", **kwargs: Any) -> Any:
    """``peft.get_peft_model`` for an ``XLoraConfig``, with every expert loaded through ``guard(strategy)``.

    Args:
        model: the base model (``use_cache`` off, as X-LoRA requires).
        xlora_config: a ``peft.XLoraConfig``; its ``adapters`` name the experts and their folders.
        strategy: ``"auto"``, ``"strict"`` or a ``Plan`` (see ``guard``).
        **kwargs: passed to ``peft.get_peft_model`` (``adapter_name``, ``low_cpu_mem_usage``, ...).

    Returns:
        The X-LoRA ``PeftModel``, every expert verified against its file.

    Raises:
        TypeError: ``xlora_config`` is not an ``XLoraConfig``.
        UnsupportedVersionError, KeyMismatchError: see ``guard``.
    """
    import peft

    if not isinstance(xlora_config, peft.XLoraConfig):
        raise TypeError(
            "keyguard.integrations.xlora.get_peft_model builds X-LoRA models from an XLoraConfig; got a"
            f" {type(xlora_config).__name__} (for a LoRA adapter use keyguard.integrations.peft.load_adapter)"
        )
    with guard(strategy):
        return peft.get_peft_model(model, xlora_config, **kwargs)


def _validate(strategy: Strategy) -> None:
    if not isinstance(strategy, Plan) and strategy not in ("auto", "strict"):
        raise ValueError(f"strategy must be 'auto', 'strict' or a Plan, not {strategy!r}")


def _raise_unless_arrived(
    lora_model: Any,
    name: str,
    what: str,
    location: str,
    saved_to_live: Mapping[str, str],
    tensors: Mapping[str, Any],
    diagnosis: Diagnosis | None = None,
) -> None:
    comparison = compare(lora_model, saved_to_live, tensors)
    if comparison.ok:
        return
    live_to_saved = {live: saved for saved, live in saved_to_live.items()}
    findings = comparison_findings(
        comparison, adapter=name, where=what, saved_of=live_to_saved, ctx={"adapter": name, "path": location}
    )
    report = _expert_report(findings, location, len(tensors), len(saved_to_live), len(comparison.equal), diagnosis)
    raise KeyMismatchError(f"{what}: the load did not take:\n\n{report.render('table')}", report)


def _expert_report(
    findings: Sequence[Finding],
    location: str,
    checkpoint: int,
    expected: int,
    matched: int,
    diagnosis: Diagnosis | None = None,
) -> Report:
    return make_report(
        findings,
        checkpoint=SourceRef(location=location, format="peft-adapter", tensors=checkpoint),
        expected=SourceRef(location="the X-LoRA LoRA model", format="module", tensors=expected),
        summary=summary_of(
            expected=expected, checkpoint=checkpoint, matched=matched, reports=[diagnosis.after] if diagnosis else []
        ),
    )


def _refuse(kind: kinds.FindingKind, message: str, location: str, ctx: Mapping[str, Any]) -> KeyMismatchError:
    report = _expert_report([finding(kind, message, ctx=ctx)], location, 0, 0, 0)
    return KeyMismatchError(f"refused ({kind.code} {kind.kind}):\n\n{report.render('table')}", report)


# -- experts: names, files, heads ------------------------------------------------------------------------------------
def _xlora_config_of(lora_model: Any) -> tuple[str, Any] | None:
    """The X-LoRA model's own entry in the LoRA model's configs (a copy of the ``XLoraConfig``), with its name."""
    from peft.utils.peft_types import PeftType

    for name, config in lora_model.peft_config.items():
        if getattr(config, "peft_type", None) == PeftType.XLORA:
            return str(name), config
    return None


def _expert_name(lora_model: Any, adapter_name: str, model_id: str) -> str:
    """The user's name for the expert PEFT passes as ``str(i)``: the i-th key of ``XLoraConfig.adapters``."""
    found = _xlora_config_of(lora_model)
    if found is None or not str(adapter_name).isdigit():
        return adapter_name
    items = list(found[1].adapters.items())
    index = int(adapter_name)
    if index >= len(items) or items[index][1] != model_id:
        return adapter_name
    return str(items[index][0])


def _check_name(lora_model: Any, name: str, folder: str, what: str) -> None:
    found = _xlora_config_of(lora_model)
    own = found[0] if found is not None else None
    if name == own:
        raise _refuse(
            kinds.XLORA_ADAPTER_NAMES,
            f"{what}: the expert's name is also the X-LoRA model's own adapter name ({own!r}); give the expert"
            " another name in XLoraConfig.adapters, or the X-LoRA model another adapter_name",
            folder,
            {"adapter": name, "path": folder, "taken_by": "x-lora"},
        )


def _check_heads(lora_model: Any, name: str, folder: str, what: str) -> None:
    """Refuse now what PEFT refuses once every expert is loaded: two experts in one ``modules_to_save`` wrapper."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    found = _xlora_config_of(lora_model)
    experts = [n for n in (found[1].adapters if found else [name]) if n in lora_model.peft_config] or [name]
    for path, module in lora_model.named_modules():
        if not isinstance(module, AuxiliaryTrainingWrapper):
            continue
        try:
            check_set_adapter(module, experts)
        except ValueError:
            holders = [n for n in experts if n in getattr(module, "modules_to_save", {})] or experts
            raise _refuse(
                kinds.XLORA_MULTIPLE_SEQ_CLS,
                f"{what}: experts {', '.join(map(repr, holders))} each train their own copy of"
                f" {path.removeprefix('model.')!r} (modules_to_save); PEFT activates one such copy at a time and X-LoRA"
                f' activates every expert, so PEFT would refuse the model once built ("Only one adapter can be set at'
                ' a time for ModulesToSaveWrapper"). A PEFT limitation: keyguard reports it and does not work around'
                " it.",
                folder,
                {"adapter": name, "path": folder, "module": path, "experts": holders},
            ) from None


def _read_lora_keys(folder: str, name: str, what: str) -> KeySet:
    keys = read_keys(folder)
    config = keys.adapter
    peft_type = getattr(config, "peft_type", None)
    if keys.format != "peft-adapter" or peft_type not in (None, "LORA"):
        raise _refuse(
            kinds.XLORA_ADAPTER_UNREADABLE,
            f"{what}: not a LoRA adapter folder ({keys.format}, peft_type {peft_type!r}); X-LoRA mixes LoRA experts",
            folder,
            {"adapter": name, "path": folder, "peft_type": peft_type},
        )
    return keys


def _adapter_folder(model_id: str, subfolder: str | None, hub_kwargs: Mapping[str, Any]) -> str:
    """A local folder holding the adapter: the path itself, or its files fetched into the Hugging Face cache."""
    path = os.path.join(model_id, subfolder) if subfolder else model_id
    if os.path.isdir(path):
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    options = dict(hub_kwargs)
    token = options.pop("use_auth_token", None)
    if token is not None:
        options.setdefault("token", token)
    config: str = hf_hub_download(model_id, "adapter_config.json", subfolder=subfolder, **options)
    for weights in ("adapter_model.safetensors", "adapter_model.bin"):
        try:
            hf_hub_download(model_id, weights, subfolder=subfolder, **options)
            break
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
    return os.path.dirname(config)


# -- the X-LoRA model around a LoRA model ----------------------------------------------------------------------------
def _xlora_model_of(lora_model: Any) -> Any:
    """The ``XLoraModel`` built around ``lora_model``: X-LoRA replaced each LoRA layer's ``forward`` with a method
    of an X-LoRA layer that holds the model. ``None`` before that happened."""
    from peft.tuners.lora import LoraLayer

    for module in lora_model.modules():
        if isinstance(module, LoraLayer):
            owner = getattr(module.__dict__.get("forward"), "__self__", None)
            model = getattr(owner, "model", None)
            if model is not None and hasattr(model, "internal_xlora_classifier"):
                return model
    return None


def _materialise_classifier(lora_model: Any) -> None:
    """Give a meta X-LoRA classifier real tensors, initialised as ``nn.Linear`` does (as without
    ``low_cpu_mem_usage``), on the device of the experts."""
    xlora = _xlora_model_of(lora_model)
    classifier = getattr(xlora, "internal_xlora_classifier", None)
    if classifier is None or not any(p.is_meta for p in classifier.parameters()):
        return
    device = next((t.device for t in lora_model.parameters() if not t.is_meta), "cpu")
    classifier.to_empty(device=device)
    for layer in classifier.modules():
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()


def _models_of(xlora_model: Any) -> tuple[Any, Any]:
    """``(XLoraModel, its LoRA model)`` from a ``PeftModel`` or an ``XLoraModel``."""
    from peft.tuners.xlora.model import XLoraModel

    candidate = xlora_model
    for _ in range(3):
        if isinstance(candidate, XLoraModel):
            return candidate, candidate.lora_model
        candidate = getattr(candidate, "base_model", None)
    raise TypeError(f"not an X-LoRA model: a {type(xlora_model).__name__} with no XLoraModel inside")


def _experts(xlora_config: Any) -> list[tuple[str, str]]:
    """``(name, folder)`` of every expert, subfolders joined as PEFT does for Hub X-LoRA models."""
    items = [(str(n), str(p)) for n, p in (xlora_config.adapters or {}).items()]
    subfolders = getattr(xlora_config, "_subfolders", None)
    if subfolders:
        return [(n, os.path.join(p, s)) for (n, p), s in zip(items, subfolders)]
    return items


# -- verify ----------------------------------------------------------------------------------------------------------
def verify(xlora_model: Any, xlora_config: Any) -> Report:
    """Check an X-LoRA model that is already built against its experts' files.

    For each expert of ``xlora_config.adapters``: that it is registered under its name (not PEFT's ``"0"``, ``"1"``,
    ...), that the file's keys fit what the LoRA model accepts for it (after the safe plan), that every tensor the
    model holds for it equals the file's, and that none is on the meta device; and that the X-LoRA classifier is not
    on the meta device.

    Returns:
        A ``Report``: KG554, KG557, KG560, KG561 and KG562 findings for problems, a KG563 finding per verified expert.
    """
    check_peft_version(installed_peft(), _INTEGRATION)
    xlora, lora_model = _models_of(xlora_model)
    own = (_xlora_config_of(lora_model) or ("", None))[0]
    findings: list[Finding] = []
    diagnoses: list[Report] = []
    totals = [0, 0, 0]  # expected, checkpoint, matched
    for index, (name, folder) in enumerate(_experts(xlora_config)):
        ctx: dict[str, Any] = {"adapter": name, "path": folder}
        where = f"X-LoRA expert {name!r} ({folder})"
        registered = _registered_name(lora_model, name, index, own)
        if registered != name:
            findings.append(_registration_finding(name, index, registered, where, ctx))
        if registered is None:
            continue
        try:
            keys = read_keys(folder)
        except SourceError as exc:
            findings.append(finding(kinds.XLORA_ADAPTER_UNREADABLE, f"{where}: {exc}", ctx=ctx))
            continue
        saved_to_live = accepted_keys(lora_model, registered)
        expected = expected_keyset(lora_model, saved_to_live, f"{where}: the keys the LoRA model accepts")
        diagnosis = diagnose_adapter(folder, expected, "auto", keys=keys)
        diagnoses.append(diagnosis.after)
        if not diagnosis.ok:
            findings.append(unresolved_finding(diagnosis, adapter=name, where=where, ctx=ctx))
        comparison = compare(lora_model, saved_to_live, file_tensors(diagnosis))
        live_to_saved = {live: saved for saved, live in saved_to_live.items()}
        findings += comparison_findings(comparison, adapter=name, where=where, saved_of=live_to_saved, ctx=ctx)
        totals[0] += len(saved_to_live)
        totals[1] += len(keys)
        totals[2] += len(comparison.equal)
    classifier = getattr(xlora, "internal_xlora_classifier", None)
    meta = (
        [f"internal_xlora_classifier.{n}" for n, p in classifier.named_parameters() if p.is_meta] if classifier else []
    )
    if meta:
        findings.append(
            finding(
                kinds.LIVE_ADAPTER_ON_META,
                f"the X-LoRA classifier has {len(meta)} tensor(s) on the meta device (built with"
                " low_cpu_mem_usage=True and never loaded): the forward pass fails",
                expected_keys=meta,
                examples=[Example(expected=k, detail="meta") for k in meta],
                ctx={"adapter": None, "count": len(meta)},
            )
        )
    return make_report(
        findings,
        checkpoint=SourceRef(location=_locations(xlora_config), format="peft-adapter", tensors=totals[1]),
        expected=SourceRef(location=f"{type(xlora_model).__name__} (X-LoRA)", format="module", tensors=totals[0]),
        summary=summary_of(expected=totals[0], checkpoint=totals[1], matched=totals[2], reports=diagnoses),
    )


def _registered_name(lora_model: Any, name: str, index: int, own: str) -> str | None:
    """The name the expert is registered under: its own (keyguard), ``str(index)`` (stock PEFT), or none."""
    from peft.utils.peft_types import PeftType

    def is_lora(candidate: str) -> bool:
        config = lora_model.peft_config.get(candidate)
        return candidate != own and getattr(config, "peft_type", None) == PeftType.LORA

    if is_lora(name):
        return name
    return str(index) if is_lora(str(index)) else None


def _registration_finding(name: str, index: int, registered: str | None, where: str, ctx: Mapping[str, Any]) -> Finding:
    if registered is None:
        message = f"{where}: the LoRA model holds no adapter for this expert, neither as {name!r} nor as {str(index)!r}"
    else:
        message = (
            f"{where}: registered as {registered!r} (stock PEFT's numbering), while X-LoRA activates the experts by"
            f" the names in XLoraConfig.adapters: the forward pass fails on {name!r}, or uses another file's expert"
        )
    return finding(
        kinds.XLORA_ADAPTER_NAMES,
        message,
        hint="build the model with keyguard.integrations.xlora.get_peft_model, which registers experts by name",
        ctx={**ctx, "registered": registered},
    )


def _locations(xlora_config: Any) -> str:
    return ", ".join(folder for _, folder in _experts(xlora_config)) or "<no experts>"


# -- preflight -------------------------------------------------------------------------------------------------------
Outcome = Literal["loads", "fails", "loops", "partial"]


@dataclass
class _Stock:
    """What stock PEFT 0.21's X-LoRA loader does with one adapter file."""

    outcome: Outcome
    detail: str = ""
    keys: list[str] = field(default_factory=list)  # file keys concerned
    examples: list[Example] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # accepted saved keys never loaded


def stock_rewrite(key: str) -> str | None:
    """The key stock X-LoRA (PEFT 0.21) loads ``key`` under, or ``None`` when its rewrite never terminates.

    It drops leading dotted segments until the key starts with ``model.`` but not ``model.model.``, then prepends
    ``model.``; on a key that runs out of dots first, it keeps slicing the same string forever.
    """
    while not (key.startswith("model.") and not key.startswith("model.model.")):
        cut = key.find(".")
        if cut < 0:
            return None
        key = key[cut + 1 :]
    return "model." + key


def _stock_load(
    keys: KeySet, saved_to_live: Mapping[str, str], lora_model: Any, name: str, mapping: Mapping[str, str]
) -> _Stock:
    """Simulate stock loading from the keys: the rewrite, then ``set_peft_model_state_dict`` and the unexpected-key
    check of ``_load_adapter_into_lora_model``. ``mapping``: file key -> the key keyguard's plan gives it."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    rewritten: dict[str, str] = {}
    loops: list[str] = []
    for key in keys:
        new = stock_rewrite(key)
        if new is None:
            loops.append(key)
        else:
            rewritten.setdefault(new, key)
    if loops:
        return _Stock(
            "loops",
            f"{len(loops):,} key(s) have no `model.` segment for its key rewrite to stop at",
            loops,
            [Example(checkpoint=k, detail="no `model.` segment") for k in loops],
        )
    accepted = set(saved_to_live)
    prefixed = {_PEFT_PREFIX + saved: saved for saved in accepted}
    model_keys = set(lora_model.state_dict())
    misplaced = [new for new in rewritten if new not in accepted and new not in prefixed and new not in model_keys]

    def wrong(detail: str) -> _Stock:
        examples = [
            Example(
                checkpoint=rewritten[new],
                expected=new,
                detail=f"stock name; the LoRA model expects {mapping[rewritten[new]]}"
                if rewritten[new] in mapping
                else "stock name; the LoRA model has no such key",
            )
            for new in misplaced
        ]
        return _Stock("fails", detail, [rewritten[new] for new in misplaced], examples)

    for path, module in lora_model.named_modules():
        if isinstance(module, AuxiliaryTrainingWrapper):
            for inner in module.adapter_state_dict_load_map(name):
                lookup = f"{path}.{inner}"
                if lookup not in rewritten:
                    return wrong(f"KeyError: {lookup!r} (the modules_to_save copy of {path!r} looks it up)")
    if misplaced:
        return wrong(f"ValueError: Got unexpected keys! ({len(misplaced):,} of {len(rewritten):,} rewritten keys)")
    shapes = {saved: info.shape for saved, info in _expected_infos(lora_model, saved_to_live).items()}
    resized = []
    for new, old in rewritten.items():
        saved = new if new in accepted else prefixed.get(new)
        shape = keys[old].shape
        if saved is not None and shape is not None and tuple(shape) != shapes.get(saved):
            resized.append((old, new, saved))
    if resized:
        return _Stock(
            "fails",
            f"RuntimeError: size mismatch for {len(resized):,} key(s)",
            [old for old, _, _ in resized],
            [
                Example(checkpoint=old, expected=new, detail=f"model shape {list(shapes[s] or ())}")
                for old, new, s in resized
            ],
        )
    missing = [s for s in saved_to_live if s not in rewritten and _PEFT_PREFIX + s not in rewritten]
    if missing:
        return _Stock(
            "partial",
            f"{len(missing):,} tensor(s) the LoRA model expects are not in the file and keep their initialisation",
            [],
            [Example(expected=s, detail="not in the file") for s in missing],
            missing,
        )
    return _Stock("loads")


def _expected_infos(lora_model: Any, saved_to_live: Mapping[str, str]) -> Mapping[str, Any]:
    return expected_keyset(lora_model, saved_to_live, "").tensors


def _meta_copy(model: Any) -> Any:
    """A copy of ``model`` whose parameters and buffers are on the meta device (the modules are copied, no data)."""
    import itertools

    import torch

    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) in memo:
            continue
        shadow = torch.empty_like(tensor, device="meta")
        if isinstance(tensor, torch.nn.Parameter):
            shadow = torch.nn.Parameter(shadow, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = shadow
    return copy.deepcopy(model, memo)


def _shadow_lora_model(base_model: Any, adapter_name: str) -> Any:
    """An empty LoRA model around a meta copy of ``base_model``, as X-LoRA builds one (no target modules yet)."""
    from peft.tuners.lora import LoraConfig, LoraModel
    from peft.utils.constants import DUMMY_TARGET_MODULES

    config = LoraConfig(target_modules=DUMMY_TARGET_MODULES)
    return LoraModel(_meta_copy(base_model), config, adapter_name, low_cpu_mem_usage=True)


def expert_keys(base_model: Any, adapter_dir: str | os.PathLike[str], *, name: str = "expert") -> KeySet:
    """The keys X-LoRA's LoRA model accepts for an adapter, in the form adapter files use, with shapes and dtypes.

    The adapter's LoRA layers are injected into a copy of ``base_model`` on the meta device (no data is copied), as
    X-LoRA injects them. Write the result as a manifest to compare the adapter with it on the command line::

        keyguard.write_manifest(xlora.expert_keys(model, "./my-lora"), "my-lora.xlora.keys.json")
        # keyguard diagnose ./my-lora --expected my-lora.xlora.keys.json

    Raises:
        SourceError: the folder cannot be read.
        ValueError: PEFT refuses the adapter's config on this model (its target modules are not there).
    """
    from peft.tuners.lora import LoraConfig

    check_peft_version(installed_peft(), _INTEGRATION)
    folder = os.fspath(adapter_dir)
    lora_model = _shadow_lora_model(base_model, "default" if name != "default" else "x-lora")
    config = LoraConfig.from_pretrained(folder)
    config.inference_mode = False
    lora_model.peft_config[name] = config
    lora_model.inject_adapter(lora_model.model, name, low_cpu_mem_usage=True)
    saved_to_live = accepted_keys(lora_model, name)
    label = f"{type(base_model).__name__}: what X-LoRA's LoRA model accepts for {folder}"
    return expected_keyset(lora_model, saved_to_live, label)


def preflight(
    base_model: Any,
    xlora_config: Any,
    *,
    strategy: Strategy = "auto",
    low_cpu_mem_usage: bool = False,
    adapter_name: str = "default",
) -> Report:
    """Predict, before building, whether each expert loads with stock PEFT and through keyguard.

    Reads only the headers of the experts' files. The LoRA layers are injected into a copy of ``base_model`` on the
    meta device (no data is copied), exactly as X-LoRA injects them, to learn the keys the LoRA model will accept for
    each expert; stock PEFT's key rewrite and load are then simulated on the file's keys, and keyguard's diagnosis
    run on them.

    Args:
        base_model: the model ``get_peft_model`` will be called with (left untouched).
        xlora_config: the ``XLoraConfig`` (left untouched).
        strategy: the strategy the guarded load will use.
        low_cpu_mem_usage: whether the model will be built with ``low_cpu_mem_usage=True``.
        adapter_name: the X-LoRA model's own adapter name (``get_peft_model``'s ``adapter_name``).

    Returns:
        A ``Report`` whose findings carry the expert's name in ``ctx["adapter"]``: KG550-KG555 and KG557 for what
        goes wrong with stock PEFT or PEFT itself, KG560 for keys keyguard cannot map, and one KG556 (info) per expert
        keyguard loads. ``report.ok`` is true only when stock PEFT would load every expert too.
    """
    _validate(strategy)
    check_peft_version(installed_peft(), _INTEGRATION)
    from peft.tuners.lora import LoraConfig

    experts = _experts(xlora_config)
    lora_model = _shadow_lora_model(base_model, adapter_name)
    findings: list[Finding] = []
    diagnoses: list[Report] = []
    totals = [0, 0, 0, 0]  # expected, checkpoint, matched, fixable
    keyguard_loads: dict[str, str] = {}  # name -> plan text, for experts keyguard would load
    stock_said: dict[str, str] = {}
    for name, folder in experts:
        ctx: dict[str, Any] = {"adapter": name, "path": folder}
        where = f"expert {name!r} ({folder})"
        try:
            keys = read_keys(folder)
        except SourceError as exc:
            findings.append(finding(kinds.XLORA_ADAPTER_UNREADABLE, f"{where}: {exc}", ctx=ctx))
            continue
        peft_type = getattr(keys.adapter, "peft_type", None)
        if keys.format != "peft-adapter" or peft_type not in (None, "LORA"):
            findings.append(
                finding(
                    kinds.XLORA_ADAPTER_UNREADABLE,
                    f"{where}: not a LoRA adapter folder ({keys.format}, peft_type {peft_type!r})",
                    ctx={**ctx, "peft_type": peft_type},
                )
            )
            continue
        if name == adapter_name:
            findings.append(
                finding(
                    kinds.XLORA_ADAPTER_NAMES,
                    f"{where}: the name is also the X-LoRA model's own adapter name ({adapter_name!r}); stock PEFT"
                    " then activates no expert at all, and keyguard refuses the name",
                    ctx={**ctx, "taken_by": "x-lora"},
                )
            )
            continue
        try:
            config = LoraConfig.from_pretrained(folder)
            config.inference_mode = False
            lora_model.peft_config[name] = config
            lora_model.inject_adapter(lora_model.model, name, low_cpu_mem_usage=True)
        except (ValueError, TypeError, KeyError) as exc:
            lora_model.peft_config.pop(name, None)
            findings.append(
                finding(
                    kinds.XLORA_ADAPTER_UNREADABLE, f"{where}: PEFT refuses the adapter on this model: {exc}", ctx=ctx
                )
            )
            continue
        saved_to_live = accepted_keys(lora_model, name)
        expected = expected_keyset(lora_model, saved_to_live, f"{where}: the keys the LoRA model accepts")
        diagnosis = diagnose_adapter(folder, expected, strategy, keys=keys)
        diagnoses.append(diagnosis.after)
        stock = _stock_load(keys, saved_to_live, lora_model, name, diagnosis.mapping)
        findings += _stock_findings(stock, diagnosis, where, ctx)
        stock_said[name] = _STOCK_PHRASE[stock.outcome]
        totals[0] += len(saved_to_live)
        totals[1] += len(keys)
        totals[2] += diagnosis.report.summary.matched
        if diagnosis.ok:
            totals[3] += diagnosis.report.summary.fixable
            keyguard_loads[name] = describe_plan(diagnosis.plan)
        else:
            findings.append(unresolved_finding(diagnosis, adapter=name, where=where, ctx=ctx))
    blocked = _head_findings(lora_model, [n for n, _ in experts if n in lora_model.peft_config], findings)
    findings += _name_findings([n for n, _ in experts], adapter_name)
    if low_cpu_mem_usage and experts:
        findings.append(
            finding(
                kinds.XLORA_STOCK_META_TENSORS,
                f"built with low_cpu_mem_usage=True, {_STOCK} leaves every expert's tensors and the X-LoRA classifier"
                " on the meta device (the forward pass fails); keyguard assigns them when its guard exits",
                hint="fixed by keyguard.integrations.xlora.get_peft_model (or guard())",
                ctx={"adapter": None, "experts": [n for n, _ in experts]},
            )
        )
    for name, folder in experts:
        if name in keyguard_loads and name not in blocked:
            findings.append(
                finding(
                    kinds.XLORA_ADAPTER_LOADS,
                    f"expert {name!r} ({folder}): loads through keyguard ({keyguard_loads[name]}); {stock_said[name]}",
                    ctx={"adapter": name, "path": folder, "plan": keyguard_loads[name]},
                )
            )
    return make_report(
        findings,
        checkpoint=SourceRef(location=_locations(xlora_config), format="peft-adapter", tensors=totals[1]),
        expected=SourceRef(
            location=f"{type(base_model).__name__}: the X-LoRA LoRA model (injected on the meta device)",
            format="module",
            tensors=totals[0],
        ),
        summary=summary_of(
            expected=totals[0], checkpoint=totals[1], matched=totals[2], fixable=totals[3], reports=diagnoses
        ),
    )


_STOCK_PHRASE: Final[dict[Outcome, str]] = {
    "loads": f"{_STOCK} loads it too",
    "fails": f"{_STOCK} fails (KG550)",
    "loops": f"{_STOCK} never returns (KG551)",
    "partial": f"{_STOCK} loads it partly without a word (KG552)",
}


def _stock_findings(stock: _Stock, diagnosis: Diagnosis, where: str, ctx: Mapping[str, Any]) -> list[Finding]:
    if stock.outcome == "loads":
        return []
    fix = (
        Fix(
            applicability=Applicability.safe,
            rules=list(diagnosis.plan.rules),
            note="applied by keyguard.integrations.xlora.get_peft_model and guard()",
        )
        if diagnosis.ok
        else None
    )
    verdict = "keyguard loads it" if diagnosis.ok else "keyguard refuses it too (KG560)"
    context = {**ctx, "stock": stock.outcome, "keyguard_loads": diagnosis.ok}
    if stock.outcome == "loops":
        return [
            finding(
                kinds.XLORA_STOCK_LOOPS_FOREVER,
                f"{where}: {_STOCK} never returns: {stock.detail}; {verdict}",
                checkpoint_keys=stock.keys,
                examples=stock.examples,
                fix=fix,
                ctx=context,
            )
        ]
    if stock.outcome == "partial":
        return [
            finding(
                kinds.XLORA_STOCK_SILENT_PARTIAL_LOAD,
                f"{where}: {_STOCK} loads it without a word, but {stock.detail}; {verdict}",
                expected_keys=stock.missing,
                examples=stock.examples,
                ctx=context,
            )
        ]
    return [
        finding(
            kinds.XLORA_STOCK_KEY_REWRITE_FAILS,
            f"{where}: {_STOCK} fails after its key rewrite: {stock.detail}; {verdict}",
            checkpoint_keys=stock.keys,
            examples=stock.examples,
            fix=fix,
            ctx=context,
        )
    ]


def _head_findings(lora_model: Any, names: Sequence[str], findings: list[Finding]) -> set[str]:
    """KG555 for every wrapper PEFT would refuse to activate for all experts; returns the experts concerned."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    blocked: set[str] = set()
    if not names:
        return blocked
    for path, module in lora_model.named_modules():
        if not isinstance(module, AuxiliaryTrainingWrapper):
            continue
        try:
            check_set_adapter(module, list(names))
        except ValueError:
            holders = [n for n in names if n in getattr(module, "modules_to_save", {})] or list(names)
            blocked.update(holders)
            findings.append(
                finding(
                    kinds.XLORA_MULTIPLE_SEQ_CLS,
                    f"experts {', '.join(map(repr, holders))} each train their own copy of"
                    f" {path.removeprefix('model.')!r}"
                    ' (modules_to_save): PEFT refuses to build the X-LoRA model ("Only one adapter can be set at a'
                    ' time"), with or without keyguard',
                    ctx={"adapter": holders[0], "experts": holders, "module": path},
                )
            )
    return blocked


def _name_findings(names: Sequence[str], own: str) -> list[Finding]:
    numbered = [str(i) for i in range(len(names))]
    usable = [n for n in names if n != own]
    if list(names) == numbered or not usable:
        return []
    if sorted(names) == sorted(numbered):
        effect = (
            "the files are registered in order as "
            + ", ".join(repr(n) for n in numbered)
            + ", so these names end up on other files' experts"
        )
    else:
        first = next(n for n in usable if n not in numbered)
        effect = f"the X-LoRA model builds and its forward pass raises KeyError: {first!r}"
    return [
        finding(
            kinds.XLORA_ADAPTER_NAMES,
            f"{_STOCK} registers the experts as {', '.join(repr(n) for n in numbered)} whatever their names"
            f" ({', '.join(repr(n) for n in names)}): {effect}; keyguard registers each under its own name",
            hint="fixed by keyguard.integrations.xlora.get_peft_model (or guard())",
            ctx={"adapter": None, "names": list(names)},
        )
    ]
