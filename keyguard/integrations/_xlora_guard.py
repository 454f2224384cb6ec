"""X-LoRA: standard LoRA adapters loaded as experts through a diagnosis, and verified (peft#2132).

Stock PEFT loads each expert with ``peft.tuners.xlora.model._load_adapter_into_lora_model``, which rewrites every
key by dropping leading segments until it starts with ``model.`` and prepending ``model.``. That is right only when
the base model's top-level module is called ``model``; it loops forever on a key with no ``model.`` segment; it never
checks for missing keys; it leaves the experts on the meta device under ``low_cpu_mem_usage=True``; and it registers
the experts as ``"0"``, ``"1"``, ... whatever names the user gave. There is no public hook, but the function is looked
up on its module at call time, so ``guard()`` replaces it there for the duration of a build, and puts it back.

This module holds the guard and its session; ``_xlora_experts`` the loading of one expert's pieces,
``_xlora_preflight`` the prediction before a build and ``_xlora_verify`` the check of a built model.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from keyguard._exceptions import UnsupportedVersionError
from keyguard.fixes._plan import Plan
from keyguard.integrations._adapters import (
    Strategy,
    accepted_for,
    diagnose_adapter,
    file_tensors,
    load_into,
    refusal,
)
from keyguard.integrations._base_weights import replaced_findings
from keyguard.integrations._restore import ModelState
from keyguard.integrations._versions import VERIFIED_PEFT, check_peft_version, installed_peft
from keyguard.integrations._xlora_experts import (
    INTEGRATION,
    adapter_folder,
    built_order,
    check_heads,
    check_name,
    expert_name,
    materialise_classifier,
    order_finding,
    raise_unless_arrived,
    read_lora_keys,
    validate,
)
from keyguard.report._model import Finding, Report

XLORA_MODULE: Final = "peft.tuners.xlora.model"
"""The module whose expert loader ``guard()`` replaces."""
LOADER_NAME: Final = "_load_adapter_into_lora_model"
"""The name of PEFT's expert loader in ``XLORA_MODULE``."""
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
    check_peft_version(version, INTEGRATION)
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        parameters = None
    shape = None if parameters is None else tuple((p.name, p.kind, p.default) for p in parameters)
    if shape != _LOADER_SHAPE:
        found = "no inspectable signature" if parameters is None else f"({', '.join(map(str, parameters))})"
        wanted = ", ".join(_shape_text(p) for p in _LOADER_SHAPE)
        raise UnsupportedVersionError(
            f"{INTEGRATION} replaces {XLORA_MODULE}.{LOADER_NAME} only when it looks as in PEFT {VERIFIED_PEFT}:"
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
            f"{INTEGRATION} loads experts with {XLORA_MODULE}.set_peft_model_state_dict"
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
        findings: what the load did beyond the expert's own tensors: KG620 when the file's copy of a base weight
            (an embedding saved with the adapter) differed from the model's and replaced it, as stock PEFT does.
    """

    name: str
    path: str
    report: Report
    plan: Plan
    assigned_on_exit: bool
    findings: tuple[Finding, ...] = ()


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
    """What a ``guard()`` did: ``experts`` in the order they were loaded, ``reports`` by expert name, and
    ``findings``: what it noticed besides (KG620 base weights replaced, KG622 an expert order a saved copy would
    not keep), each also issued as a Python warning."""

    strategy: Strategy = "auto"
    experts: list[LoadedExpert] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    _pending: list[_Pending] = field(default_factory=list, repr=False)
    _states: dict[int, ModelState] = field(default_factory=dict, repr=False)

    @property
    def reports(self) -> dict[str, Report]:
        return {expert.name: expert.report for expert in self.experts}

    def _note(self, found: list[Finding]) -> None:
        for item in found:
            self.findings.append(item)
            warnings.warn(f"keyguard {item.code} {item.kind}: {item.message}", UserWarning, stacklevel=4)

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
        if id(lora_model) not in self._states:  # the first expert of a build: what to put back if the build fails
            self._states[id(lora_model)] = ModelState.capture(lora_model.model)
            self._note(order_finding(built_order(lora_model)))
        state = self._states[id(lora_model)]
        hub_kwargs, _ = PeftModel._split_kwargs(kwargs)
        name = expert_name(lora_model, adapter_name, model_id)
        folder = adapter_folder(model_id, subfolder, hub_kwargs)
        what = f"X-LoRA expert {name!r} ({folder})"
        keys = read_lora_keys(folder, name, what)
        check_name(lora_model, name, folder, what)
        if name not in lora_model.peft_config:
            config = LoraConfig.from_pretrained(
                model_id, ephemeral_gpu_offload=ephemeral_gpu_offload, subfolder=subfolder, **hub_kwargs
            )
            config.inference_mode = False
            lora_model.peft_config[name] = config
            lora_model.inject_adapter(lora_model.model, name)
        check_heads(lora_model, name, folder, what)
        accepted = accepted_for(lora_model, name, f"{what}: the keys the LoRA model accepts")
        diagnosis = diagnose_adapter(folder, accepted, self.strategy, keys=keys, model=lora_model)
        if not diagnosis.ok:
            raise refusal(what, diagnosis)
        saved_to_live = diagnosis.saved_to_live
        tensors = file_tensors(diagnosis)
        replaced = replaced_findings(
            lora_model, saved_to_live, diagnosis.base_keys, tensors, where=what, ctx={"adapter": name, "path": folder}
        )
        live = lora_model.state_dict(keep_vars=True)
        for saved in diagnosis.base_keys:
            state.keep(live[saved_to_live[saved]])
        deferred = any(live[key].is_meta for key in saved_to_live.values())
        if not deferred:
            load_into(lora_model, name, saved_to_live, tensors, module.set_peft_model_state_dict, what=what)
        if hasattr(lora_model, "_cast_adapter_dtype"):
            # as stock PEFT; on meta tensors this sets the dtype the file's tensors are assigned with on exit
            lora_model._cast_adapter_dtype(adapter_name=name, autocast_adapter_dtype=autocast_adapter_dtype)
        if deferred:
            self._pending.append(_Pending(lora_model, name, what, folder, saved_to_live, tensors, module))
        else:
            raise_unless_arrived(lora_model, name, what, folder, saved_to_live, tensors, diagnosis)
        self._note(replaced)
        self.experts.append(LoadedExpert(name, folder, diagnosis.report, diagnosis.plan, deferred, tuple(replaced)))

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
                materialise_classifier(item.lora_model)
        for item in pending:
            raise_unless_arrived(item.lora_model, item.name, item.what, item.folder, item.saved_to_live, item.tensors)

    def _abort(self) -> None:
        """A build failed: put back the base models the session touched, as they were at their first expert."""
        self._pending = []
        for state in self._states.values():
            state.restore()


# -- one loader for the whole process, sessions per thread -----------------------------------------------------------
class _Installation:
    """PEFT's loader is replaced by ``_dispatch`` while any guard is active in any thread (counted under a lock), and
    put back when the last one exits. ``_dispatch`` routes a load to the innermost guard of the calling thread, and
    to PEFT's own loader in a thread without a guard."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.original: Callable[..., Any] | None = None
        self.local = threading.local()

    def sessions(self) -> list[GuardSession]:
        stack: list[GuardSession] | None = getattr(self.local, "sessions", None)
        if stack is None:
            stack = self.local.sessions = []
        return stack

    def enter(self, session: GuardSession) -> None:
        with self.lock:
            module = importlib.import_module(XLORA_MODULE)
            if self.count == 0:
                version = installed_peft()
                original = getattr(module, LOADER_NAME)
                check_supported(version, original)
                _check_set_state_dict(getattr(module, "set_peft_model_state_dict", None), version)
                self.original = original
                setattr(module, LOADER_NAME, _load_adapter_into_lora_model)
            self.count += 1
        self.sessions().append(session)

    def exit(self, session: GuardSession) -> None:
        stack = self.sessions()
        for index in range(len(stack) - 1, -1, -1):  # by identity: guards may exit out of order
            if stack[index] is session:
                del stack[index]
                break
        with self.lock:
            self.count -= 1
            if self.count == 0:
                module = importlib.import_module(XLORA_MODULE)
                if getattr(module, LOADER_NAME) is _load_adapter_into_lora_model:  # else someone replaced it since
                    setattr(module, LOADER_NAME, self.original)
                self.original = None


_INSTALLED = _Installation()


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
    """The loader PEFT calls while a guard is active: the calling thread's innermost session, or PEFT's own."""
    stack = _INSTALLED.sessions()
    if not stack:
        original = _INSTALLED.original
        if original is None:  # pragma: no cover - only reachable if PEFT kept a reference past the last guard
            original = getattr(importlib.import_module(XLORA_MODULE), LOADER_NAME)
        original(
            lora_model,
            adapter_name,
            model_id,
            torch_device,
            ephemeral_gpu_offload,
            autocast_adapter_dtype,
            subfolder,
            **kwargs,
        )
        return
    stack[-1]._load(
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


@contextlib.contextmanager
def guard(strategy: Strategy = "auto") -> Iterator[GuardSession]:
    """Load X-LoRA experts through keyguard while the block runs: diagnosed, mapped, loaded, verified.

    Replaces ``peft.tuners.xlora.model._load_adapter_into_lora_model`` (PEFT's expert loader, looked up on its module
    at call time) while the block runs and puts the original back when the last active guard exits, also when an
    exception escapes. Each expert is loaded by diagnosing its file's keys against the keys the LoRA model accepts
    for it (its LoRA parameters and ``modules_to_save`` copies, and the base embedding layers PEFT saves with an
    adapter that targets them), applying the strategy, loading with PEFT's own ``set_peft_model_state_dict``, and
    checking that every tensor the model holds for the expert equals the file's.

    Experts are registered under the names given in ``XLoraConfig.adapters`` (stock PEFT uses ``"0"``, ``"1"``,
    ...), so the forward pass works with any names. Under ``low_cpu_mem_usage=True`` the experts' tensors are
    assigned, and a meta X-LoRA classifier is materialised with ``nn.Linear``'s initialisation, when the block exits.

    Threads: a guard applies to the builds of the thread that entered it; a build in another thread without a guard
    of its own runs PEFT's loader. Guards may be nested and may run in several threads at once.

    When a build fails inside the block (a refused expert, Ctrl-C), the base model is put back as it was when the
    first expert was loaded: no injected LoRA layer, no expert tensor, no replaced base weight.

    Args:
        strategy: ``"auto"`` (the safe plan of each diagnosis), ``"strict"`` (no rewriting) or a ``Plan``.

    Yields:
        A ``GuardSession`` listing the experts loaded, their reports, and what the loads noticed besides.

    PEFT's ``ignore_mismatched_sizes`` is not honoured: a tensor whose shape differs from the model's is refused, never
    skipped.

    Raises:
        UnsupportedVersionError: the installed PEFT is outside 0.15.0 to 0.21.x, or its loader does not look as
            verified.
        KeyMismatchError: an expert's keys do not fit even after the plan (nothing of it is loaded), a tensor did not
            arrive, an expert name is taken, or several experts train one classification head (a PEFT limitation).
            The message is the rendered report (and, for base weights saved with the adapter, the cause and the way
            out); ``error.report`` the report.
        SourceError: an expert's folder cannot be read.
    """
    validate(strategy)
    session = GuardSession(strategy)
    _INSTALLED.enter(session)
    try:
        yield session
    except BaseException:
        _INSTALLED.exit(session)
        session._abort()
        raise
    _INSTALLED.exit(session)
    try:
        session._finish()
    except BaseException:
        session._abort()
        raise


def get_peft_model(model: Any, peft_config: Any, *, strategy: Strategy = "auto", **kwargs: Any) -> Any:
    """``peft.get_peft_model``, with every X-LoRA expert loaded through ``guard(strategy)``.

    For an ``XLoraConfig``, ``peft_config.adapters`` is first put in the order PEFT writes it when the model is saved
    (sorted by name), and the experts are built in that order: the X-LoRA classifier gives output k to the k-th
    expert, so a model built in another order would, once saved and reloaded with ``PeftModel.from_pretrained``, pair
    every expert with another one's output (KG621). Pass the same config to ``verify``. When the build fails (a
    refused expert, Ctrl-C), ``model`` is put back exactly as it was. Any other config goes to ``peft.get_peft_model``
    as it is.

    Args:
        model: the base model (``use_cache`` off, as X-LoRA requires).
        peft_config: a ``peft.XLoraConfig``, whose ``adapters`` name the experts and their folders (or any other
            PEFT config).
        strategy: ``"auto"``, ``"strict"`` or a ``Plan`` (see ``guard``).
        **kwargs: passed to ``peft.get_peft_model`` (``adapter_name``, ``low_cpu_mem_usage``, ...).

    Returns:
        The ``PeftModel``; for X-LoRA, every expert verified against its file.

    Raises:
        UnsupportedVersionError, KeyMismatchError: see ``guard``.
    """
    import peft

    if not isinstance(peft_config, peft.XLoraConfig):
        return peft.get_peft_model(model, peft_config, **kwargs)
    _saved_order(peft_config)
    state = ModelState.capture(model)
    try:
        with guard(strategy):
            return peft.get_peft_model(model, peft_config, **kwargs)
    except BaseException:
        state.restore()
        raise


def _saved_order(xlora_config: Any) -> None:
    """Put ``xlora_config.adapters`` (and PEFT's parallel ``_subfolders``, for Hub models) in sorted order."""
    items = list((xlora_config.adapters or {}).items())
    subfolders = getattr(xlora_config, "_subfolders", None) or [None] * len(items)
    pairs = sorted(zip(items, subfolders), key=lambda pair: str(pair[0][0]))
    xlora_config.adapters = dict(item for item, _ in pairs)
    if getattr(xlora_config, "_subfolders", None):
        xlora_config._subfolders = [sub for _, sub in pairs]
