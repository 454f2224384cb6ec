"""``preflight``: will each expert load, with stock PEFT and through keyguard? Predicted from the files' headers and
the LoRA layers injected into a copy of the base model on the meta device; and ``expert_keys`` for the command line."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from keyguard._exceptions import SourceError
from keyguard.fixes._rules import Applicability
from keyguard.integrations._adapters import (
    Diagnosis,
    Strategy,
    accepted_for,
    accepted_keys,
    describe_plan,
    diagnose_adapter,
    expected_keyset,
    finding,
    make_report,
    summary_of,
    unresolved_finding,
)
from keyguard.integrations._versions import check_peft_version, check_set_adapter, installed_peft
from keyguard.integrations._xlora_experts import (
    INTEGRATION,
    PEFT_PREFIX,
    STOCK,
    experts_of,
    order_finding,
    validate,
)
from keyguard.integrations._xlora_verify import locations
from keyguard.report import _kinds as kinds
from keyguard.report._model import Example, Finding, Fix, Report, SourceRef
from keyguard.sources._keyset import KeySet
from keyguard.sources._resolve import read_keys

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
    prefixed = {PEFT_PREFIX + saved: saved for saved in accepted}
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
    missing = [s for s in saved_to_live if s not in rewritten and PEFT_PREFIX + s not in rewritten]
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

    check_peft_version(installed_peft(), INTEGRATION)
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
    validate(strategy)
    check_peft_version(installed_peft(), INTEGRATION)
    from peft.tuners.lora import LoraConfig

    experts = experts_of(xlora_config)
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
        accepted = accepted_for(lora_model, name, f"{where}: the keys the LoRA model accepts")
        diagnosis = diagnose_adapter(folder, accepted, strategy, keys=keys, model=lora_model)
        saved_to_live = diagnosis.saved_to_live
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
    findings += order_finding([n for n, _ in experts])
    if low_cpu_mem_usage and experts:
        findings.append(
            finding(
                kinds.XLORA_STOCK_META_TENSORS,
                f"built with low_cpu_mem_usage=True, {STOCK} leaves every expert's tensors and the X-LoRA classifier"
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
        check="xlora-preflight",
        checkpoint=SourceRef(location=locations(xlora_config), format="peft-adapter", tensors=totals[1]),
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
    "loads": f"{STOCK} loads it too",
    "fails": f"{STOCK} fails (KG550)",
    "loops": f"{STOCK} never returns (KG551)",
    "partial": f"{STOCK} loads it partly without a word (KG552)",
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
                f"{where}: {STOCK} never returns: {stock.detail}; {verdict}",
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
                f"{where}: {STOCK} loads it without a word, but {stock.detail}; {verdict}",
                expected_keys=stock.missing,
                examples=stock.examples,
                ctx=context,
            )
        ]
    return [
        finding(
            kinds.XLORA_STOCK_KEY_REWRITE_FAILS,
            f"{where}: {STOCK} fails after its key rewrite: {stock.detail}; {verdict}",
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
            f"{STOCK} registers the experts as {', '.join(repr(n) for n in numbered)} whatever their names"
            f" ({', '.join(repr(n) for n in names)}): {effect}; keyguard registers each under its own name",
            hint="fixed by keyguard.integrations.xlora.get_peft_model (or guard())",
            ctx={"adapter": None, "names": list(names)},
        )
    ]
