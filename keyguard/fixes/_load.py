"""Loading tensors (never unsafely) and guarded ``load_state_dict``: diagnose, apply the plan, load strictly."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from keyguard._exceptions import KeyMismatchError, SourceError
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Applicability, Drop, Fuse, Split, Transpose
from keyguard.sources._keyset import TensorInfo
from keyguard.sources._torch import import_torch

if TYPE_CHECKING:  # pragma: no cover
    from keyguard.report._load_result import LoadResult

Strategy = Literal["auto", "strict"] | Plan
_Loader = TypeVar("_Loader", bound=Callable[..., Any])


def _os_errors_are_source_errors(function: _Loader) -> _Loader:
    """Whatever the operating system refuses while a source's data is read is a ``SourceError`` naming the file."""

    @functools.wraps(function)
    def wrapper(source: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(source, *args, **kwargs)
        except OSError as exc:
            from keyguard.sources._resolve import unreadable

            raise unreadable(str(source) if isinstance(source, (str, os.PathLike)) else "", exc) from exc

    return wrapper  # type: ignore[return-value]


@_os_errors_are_source_errors
def load_tensors(source: str | os.PathLike[str] | Mapping[str, Any], *, container: str | None = None) -> dict[str, Any]:
    """The tensors of a checkpoint, memory-mapped where the format allows (no unsafe pickle loading, ever).

    Accepts a ``.safetensors`` file, a sharded checkpoint (folder or index), a PyTorch pickle, a
    ``torch.distributed.checkpoint`` folder, a Hugging Face model or PEFT adapter folder, or a state dict (returned as
    a plain dict).
    """
    if isinstance(source, Mapping):
        return dict(source)
    from keyguard.sources._resolve import read_keys

    keys = read_keys(source, container=container)
    torch = import_torch(f"to load the tensors of {os.fspath(source)}")
    if keys.format in ("safetensors", "peft-adapter") and all(i.offsets is not None for i in keys.values()):
        path = keys.location if keys.format == "safetensors" else os.path.join(keys.location or "", keys.files[0])
        return _safetensors_file(path or "")
    if keys.format == "safetensors-sharded":
        folder = _folder_of(keys.location or "")
        out: dict[str, Any] = {}
        for shard in keys.files:
            out.update(_safetensors_file(os.path.join(folder, shard)))
        return {k: out[k] for k in keys}
    if keys.format == "torch-dcp":
        from keyguard.sources._dcp import load_dcp_tensors

        return load_dcp_tensors(keys)
    if keys.format in ("torch-pickle", "torch-pickle-sharded", "peft-adapter"):
        from keyguard.sources._pickle import _unwrap

        files = (
            [keys.location or ""]
            if keys.format == "torch-pickle"
            else [os.path.join(_folder_of(keys.location or ""), f) for f in keys.files]
        )
        tensors: dict[str, Any] = {}
        for path in files:
            try:
                obj = torch.load(path, weights_only=True, mmap=_is_zip(path), map_location="cpu")
            except Exception as exc:  # read_keys read it a moment ago: it changed, or its data is broken
                first = str(exc).split("\n", 1)[0][:200]
                raise SourceError(
                    path, "corrupted-pickle", f"cannot be loaded (torch.load said: {type(exc).__name__}: {first})"
                ) from None
            state, _, _ = _unwrap(path, obj, keys.unwrapped)
            tensors.update({k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)})
        return tensors
    raise SourceError(keys.location, "no-tensors", f"a {keys.format} source holds no tensor data to load")


def _folder_of(location: str) -> str:
    return os.path.dirname(location) if os.path.isfile(location) else location


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _safetensors_file(path: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(path))


def read_safetensors_tensor(torch: Any, path: str, info: TensorInfo) -> Any:
    """One tensor of a ``.safetensors`` file, read from its byte range."""
    from safetensors.torch import _TYPES

    start, end = info.offsets or (0, 0)
    with open(path, "rb") as f:
        f.seek(start)
        data = bytearray(f.read(end - start))
    if len(data) != end - start:
        raise SourceError(
            path,
            "file-changed",
            f"tensor data ends early: {len(data):,} of {end - start:,} bytes at offset {start:,}"
            " (the file changed since its keys were read?)",
        )
    dtype = _TYPES[info.dtype]
    if not data:
        return torch.empty(info.shape or (), dtype=dtype)
    return torch.frombuffer(data, dtype=dtype).reshape(info.shape or ())


def load_state_dict(
    module: Any,
    source: Any,
    *,
    strategy: Strategy = "auto",
    unsafe_fixes: bool = False,
    ignore: Iterable[str] = (),
    drop_unexpected: bool = False,
    container: str | None = None,
) -> LoadResult:
    """Load a checkpoint into ``module`` with ``load_state_dict(strict=True)``, after fixing what is safe to fix.

    Resolves ``source`` (a path keyguard reads, or a state dict), diagnoses it against the module, applies the
    plan — the safe plan (``"auto"``), no rewriting (``"strict"``), or a ``Plan`` of your own (its unsafe rules
    only with ``unsafe_fixes=True``) — and loads strictly. It never falls back to ``strict=False``.

    Modules on the meta device are loaded with ``assign=True``; tied parameters stay tied. Non-persistent buffers
    are in no checkpoint: those a transformers model computes itself (rotary ``inv_freq``, ``position_ids``) are
    filled in as the model would; any other stays on meta, with a warning naming it.

    Args:
        ignore: regular expressions of keys allowed to differ: ignored missing keys keep the module's current
            value (a weight tied to one that is loaded follows it), ignored unexpected keys are left out.
        drop_unexpected: leave out every checkpoint key the model does not expect (listed in the report).

    Returns:
        A ``LoadResult``: the tensors loaded, each compared with its source afterwards (``verified``), the plan
        applied, the keys left out or kept, and ``report``, the diagnosis of the checkpoint as given (before the
        plan: it may list the errors the plan resolved). ``print(result)`` says it in a few lines.

    Raises:
        KeyMismatchError: problems remain after the plan; its message is the rendered report and
            ``error.report`` the report itself. The module is left untouched.
    """
    from keyguard._regex import compile_patterns
    from keyguard.engine._pipeline import diagnose
    from keyguard.report._load_result import LoadResult

    patterns = compile_patterns(ignore, "ignore")  # before reading anything: a bad pattern is the caller's error
    torch = import_torch("to load a state dict into a module")
    state = load_tensors(source, container=container)
    report = diagnose(state, module, ignore=[p.pattern for p in patterns])
    if strategy == "auto":
        plan = report.unsafe_plan if unsafe_fixes else report.plan
    elif strategy == "strict":
        plan = Plan()
    elif isinstance(strategy, Plan):
        plan = strategy if unsafe_fixes else strategy.at_least(Applicability.safe)
    else:
        raise ValueError(f"strategy must be 'auto', 'strict' or a Plan, not {strategy!r}")
    fixed = _apply_all(torch, plan, state)
    expected = module.state_dict(keep_vars=True)
    unexpected = [k for k in fixed if k not in expected]
    leave_out = [k for k in unexpected if drop_unexpected or any(p.search(k) for p in patterns)]
    for key in leave_out:
        del fixed[key]
    from_source = set(fixed)
    from keyguard.sources._module import read_module

    module_keys = read_module(module)
    partners = {k: g for g in module_keys.tied for k in g}
    kept = []
    for key in expected:
        if key not in fixed and any(p.search(key) for p in patterns):
            kept.append(key)
            loaded_partner = next((o for o in partners.get(key, ()) if o != key and o in fixed), None)
            fixed[key] = fixed[loaded_partner] if loaded_partner is not None else expected[key]
    after = diagnose(fixed, module_keys)
    if after.errors():
        raise KeyMismatchError(
            "the checkpoint does not load strictly even after the plan"
            f" ({len(plan.rules)} rule(s) applied):\n\n" + after.render("table"),
            after,
        )
    assign = any(t.is_meta for t in expected.values() if isinstance(t, torch.Tensor))
    if assign:
        # assign=True gives every name its own parameter: load one tensor per tied group, and tie them again after
        for group in module_keys.tied:
            present = [k for k in group if k in fixed]
            if present:
                for key in group:
                    fixed[key] = fixed[present[-1]]  # the last one wins, as when copying into one shared parameter
    module.load_state_dict(fixed, strict=True, assign=assign)
    still_meta: list[str] = []
    if assign:
        _retie(module, module_keys.tied)
        still_meta = _fill_meta_buffers(torch, module)
        if still_meta:
            import warnings

            warnings.warn(
                f"{len(still_meta)} non-persistent buffer(s) are not in any checkpoint and stay on the meta device:"
                f" {', '.join(still_meta[:5])}{' ...' if len(still_meta) > 5 else ''} (initialize them before use)",
                stacklevel=2,
            )
    loaded = [k for k in fixed if k in from_source]
    verified = verify_loaded(torch, module, {k: fixed[k] for k in loaded}, module_keys.tied)
    return LoadResult(
        source=None if isinstance(source, Mapping) else os.fspath(source),
        target=type(module).__name__,
        loaded=len(loaded),
        verified=verified,
        plan=plan,
        report=report,
        left_out=_left_out(plan, state, leave_out),
        kept=kept,
        assigned=assign,
        on_meta=still_meta,
    )


def _left_out(plan: Plan, state: Mapping[str, Any], unexpected: Iterable[str]) -> list[str]:
    """The checkpoint's keys (as given) that were not loaded: dropped by the plan, or unexpected and left out."""
    renamed = plan.mapping(state)
    dropped = {k for rule in plan.rules if isinstance(rule, Drop) for k in rule.keys}
    unloaded = set(unexpected)
    return [k for k in state if k in dropped or renamed[k] in dropped or renamed[k] in unloaded]


def verify_loaded(torch: Any, module: Any, loaded: Mapping[str, Any], tied: Iterable[Iterable[str]]) -> int:
    """Compare every tensor the module now holds with the one loaded into it (in the module's dtype); returns how
    many are equal. A tied tensor may equal any of its group's loaded tensors (the last copied into it wins).

    Raises:
        KeyMismatchError: a tensor differs from its source after ``load_state_dict`` returned.
    """
    live = module.state_dict(keep_vars=True)
    partners = {k: tuple(g) for g in tied for k in g}
    differ = []
    with torch.no_grad():
        for key, source in loaded.items():
            held = live[key]
            candidates = [loaded[k] for k in partners.get(key, (key,)) if k in loaded] or [source]
            if not any(_same(torch, held, c) for c in candidates):
                differ.append(key)
    if differ:
        raise KeyMismatchError(
            f"{len(differ)} tensor(s) differ from the checkpoint after load_state_dict returned:"
            f" {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}",
            None,
        )
    return len(loaded)


def _same(torch: Any, held: Any, source: Any) -> bool:
    if held is source:
        return True
    if held.is_meta or tuple(held.shape) != tuple(source.shape):
        return False
    return bool(torch.equal(held.detach(), source.detach().to(device=held.device, dtype=held.dtype)))


def _retie(module: Any, groups: Iterable[Iterable[str]]) -> None:
    """Make every name of a tied group the same parameter object again (as it was before ``assign=True``)."""
    for group in groups:
        first, *others = list(group)
        try:
            shared = module.get_parameter(first)
        except AttributeError:
            continue  # tied buffers: nothing to re-tie
        for key in others:
            owner, _, attr = key.rpartition(".")
            setattr(module.get_submodule(owner), attr, shared)


def _fill_meta_buffers(torch: Any, module: Any) -> list[str]:
    """Give non-persistent buffers left on the meta device their values, where the model can compute them.

    They are in no checkpoint. A transformers model computes them in ``_init_weights`` (rotary ``inv_freq``,
    ``position_ids``): each owning module that holds no parameters of its own gets real buffers and is initialized
    with every loaded tensor marked as initialized; a buffer the call did not write goes back to meta. Returns the
    names of the buffers still on meta.
    """
    owners: dict[str, list[str]] = {}
    for name, buffer in module.named_buffers():
        if buffer is not None and buffer.is_meta:
            prefix, _, attr = name.rpartition(".")
            owners.setdefault(prefix, []).append(attr)
    init = getattr(module, "_init_weights", None)
    if owners and callable(init) and getattr(module, "config", None) is not None:
        loaded = {id(t): t for t in (*module.parameters(), *module.buffers()) if not t.is_meta}
        marked = [t for t in loaded.values() if not getattr(t, "_is_hf_initialized", False)]
        for tensor in marked:
            tensor._is_hf_initialized = True  # transformers' init functions leave these alone
        try:
            for prefix, attrs in owners.items():
                owner = module.get_submodule(prefix)
                if next(owner.parameters(recurse=False), None) is not None:
                    continue
                metas = {attr: owner._buffers[attr] for attr in attrs}
                fresh = {attr: torch.empty_like(meta, device="cpu") for attr, meta in metas.items()}
                versions = {attr: tensor._version for attr, tensor in fresh.items()}
                owner._buffers.update(fresh)
                try:
                    init(owner)
                except Exception:  # a model's own init code: whatever it raises, the buffers go back to meta
                    owner._buffers.update(metas)
                    continue
                for attr, tensor in fresh.items():
                    if owner._buffers.get(attr) is tensor and tensor._version == versions[attr]:
                        owner._buffers[attr] = metas[attr]  # never written: no garbage, back to meta
        finally:
            for tensor in marked:
                del tensor._is_hf_initialized
    return [name for name, buffer in module.named_buffers() if buffer is not None and buffer.is_meta]


def _apply_all(torch: Any, plan: Plan, state: Mapping[str, Any]) -> dict[str, Any]:
    """Renames (same tensor objects), then data rules (new tensors only for the keys they change), then drops."""
    renamed = plan.mapping(state)  # refuses collisions
    fixed = {renamed[key]: value for key, value in state.items()}
    for rule in plan.rules:
        if isinstance(rule, Drop):  # names as in the checkpoint or as renamed, like ``keyguard fix``
            for key in rule.keys:
                fixed.pop(renamed.get(key, key), None)
                fixed.pop(key, None)
        elif isinstance(rule, Transpose):
            for key in rule.keys:
                if key in fixed:
                    fixed[key] = fixed[key].t().contiguous()
        elif isinstance(rule, Split) and rule.source in fixed:
            whole = fixed.pop(rule.source)
            for part, size in zip(rule.targets, torch.split(whole, rule.sizes, dim=rule.dim)):
                fixed[part] = size.contiguous()
        elif isinstance(rule, Fuse) and all(s in fixed for s in rule.sources):
            parts = [fixed.pop(s) for s in rule.sources]
            if rule.stack:
                groups = [torch.cat(parts[i : i + rule.parts], dim=rule.dim) for i in range(0, len(parts), rule.parts)]
                fixed[rule.target] = torch.stack(groups, dim=0)
            else:
                fixed[rule.target] = torch.cat(parts, dim=rule.dim)
    return fixed
