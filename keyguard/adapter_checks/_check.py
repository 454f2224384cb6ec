"""``check_adapter``: would a stock PEFT load take every tensor of an exported LoRA adapter? From the files alone.

Order of work: read the config leniently (its problems are findings); sort the adapter's keys by PEFT's naming into
LoRA tensors of base modules, base tensors saved in full or from inside a LoRA-wrapped module, and keys that name
nothing of the base. When any key names nothing, the engine explains why (``diagnose`` of the adapter's keys
against the keys PEFT would expect), and the keys its plan maps are checked under their mapped names, so a stripped
prefix is one finding with a fix rather than every module missing. Then module by module: declared and present,
complete pairs, ranks, shapes against the base; saved tensors; dtypes; values and X-LoRA on request.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Final

from keyguard._dtypes import dtype_label
from keyguard._exceptions import SourceError
from keyguard.adapter_checks._config_read import ConfigRead, evaluate_patterns, read_config
from keyguard.adapter_checks._findings import finding, plural, shape_text
from keyguard.adapter_checks._peft_conventions import (
    BASE_LAYER,
    EMBEDDING_A,
    EMBEDDING_B,
    LORA_A,
    LORA_B,
    LORA_B_BIAS,
    LORA_ROLES,
    MAGNITUDE,
    PREFIX,
    SAVED,
    Base,
    Ranks,
    Selection,
    join_key,
    split_key,
)
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Applicability
from keyguard.report import _kinds as kinds
from keyguard.report._model import Example, Finding, Report, SourceRef, Summary
from keyguard.sources._adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_weights
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._resolve import Source, read_keys

#: engine kinds kept in an adapter report: naming problems and what stays unexplained. Missing keys are re-derived
#: module by module (declared without weights, incomplete pairs), and the expected side has no shapes.
_ENGINE_KINDS: Final = frozenset({"KG101", "KG102", "KG103", "KG201", "KG202", "KG402", "KG403"})
_ADAPTER_FILES: Final = (ADAPTER_CONFIG, *ADAPTER_WEIGHTS)
_ORDER: Final = {"fatal": 0, "error": 1, "warning": 2, "info": 3}


def check_adapter(
    adapter_dir: str | os.PathLike[str],
    base: Source,
    *,
    check_values: bool = False,
    xlora: bool = False,
    container: str | None = None,
    architecture: str | None = None,
) -> Report:
    """Check an exported PEFT LoRA adapter against the base model it is meant for, from the files alone.

    Whatever would make a stock PEFT load fail, or silently skip or mis-shape a tensor, is an error. Checks, each a
    finding kind (``keyguard explain KG5xx``): the config is valid; every LoRA tensor names a module of the base
    under PEFT's naming (the engine explains prefix and rename problems, with the fix); ``target_modules`` entries
    match modules, declared modules have weights and weights are declared; pairs are complete; ranks agree with
    ``r`` / ``rank_pattern`` and shapes with the base (``Conv1D`` and embeddings included); ``modules_to_save``
    tensors fit; dtypes agree.

    Args:
        adapter_dir: the adapter folder (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``), or
            one of those files.
        base: what the adapter is for: a checkpoint (file or sharded folder), a ``config.json`` folder, a keyguard
            manifest, or anything else ``keyguard.read_keys`` accepts (a ``KeySet`` is used as is).
        check_values: also read every tensor (one at a time; needs torch): NaN / Inf are errors, an all-zero
            ``lora_B`` (untrained) is a warning.
        xlora: also predict whether PEFT's X-LoRA would load the adapter, stock and through keyguard.
        container: for a pickle base holding several state dicts, the one to read.
        architecture: for a ``config.json`` base, the model class to build.

    Returns:
        A ``Report`` like ``diagnose``'s: ``checkpoint`` is the adapter, ``expected`` the base; ``plan`` holds the safe
        renames of the adapter's keys, if any.

    Raises:
        SourceError: the adapter folder or the base cannot be read (an invalid ``adapter_config.json`` is a finding).
    """
    folder = adapter_folder(adapter_dir)
    config = read_config(folder)
    weights = _read_weights(folder)
    base_keys = read_keys(base, container=container, architecture=architecture)
    if base_keys.format == "peft-adapter":
        raise SourceError(
            base_keys.location, "base-is-adapter", "is a PEFT adapter; the base must be the model it was trained on"
        )
    return _Check(folder, config, weights, base_keys).run(check_values=check_values, xlora=xlora)


def adapter_folder(path: str | os.PathLike[str]) -> str:
    """The adapter folder ``path`` names (the folder itself, or a file inside it)."""
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) in _ADAPTER_FILES:
        return os.path.dirname(path) or "."
    return path


def _read_weights(folder: str) -> KeySet:
    path = adapter_weights(folder)  # the rule shards follow: symlinks stay in the adapter's own tree
    if path.endswith(".safetensors"):
        from keyguard.sources._safetensors import read_safetensors

        keys = read_safetensors(path)
    else:
        from keyguard.sources._pickle import read_pickle

        keys = read_pickle(path)
    return keys.evolve(format="peft-adapter", location=folder, files=(os.path.basename(path),))


def _wrapper_copy(key: str) -> str | None:
    """The base key of a ``<module>.modules_to_save.<param>`` / ``<module>.original_module.<param>`` key."""
    for infix in (".modules_to_save.", ".original_module."):
        module, found, param = key.partition(infix)
        if found:
            return f"{module}.{param}"
    return None


class _Check:
    def __init__(self, folder: str, config: ConfigRead, adapter: KeySet, base: KeySet) -> None:
        self.folder = folder
        self.cfg = config
        self.config = config.config
        self.adapter = adapter
        self.base_keys = base
        self.findings: list[Finding] = list(config.findings)
        # adapter keys by what they name, each value the adapter's key as it stands
        self.lora: dict[str, dict[str, str]] = {}  # module -> role -> key
        self.inner: dict[str, str] = {}  # base key saved from inside a LoRA-wrapped module (<module>.base_layer.<p>)
        self.full: dict[str, str] = {}  # base key saved in full
        self.unknown: list[str] = []  # keys naming nothing of the base
        # PEFT's bias="all" also saves the modules_to_save wrapper's own copies; loading ignores them, harmlessly
        self.wrapper_copies: list[str] = []
        self.renamed: dict[str, str] = {}  # unknown key -> the PEFT-form key the engine's plan maps it to
        self.expected: dict[str, None] = {}  # keys PEFT expects (ordered set)
        self.matching = 0  # LoRA tensors of declared modules, as the keys stand
        self.engine: Report | None = None
        self.base: Base | None = None
        self.selection: Selection | None = None
        self.saved_expected: list[str] = []  # keys PEFT expects in full
        self.ranks: Ranks | None = None

    # ------------------------------------------------------------------------------------------------ driver
    def run(self, *, check_values: bool, xlora: bool) -> Report:
        peft_type = self.config.peft_type
        if peft_type not in (None, "LORA") and self.cfg.usable("peft_type"):
            self.findings.append(
                finding(
                    kinds.UNSUPPORTED_ADAPTER_TYPE,
                    f"the adapter's peft_type is {peft_type!r}: only LoRA's module names and shapes are known to"
                    " keyguard, so only the config, dtypes and values are checked",
                    examples=[],
                    ctx={"peft_type": peft_type},
                )
            )
        else:
            self._structure()
        self._dtypes()
        if check_values:
            self._values()
        if xlora:
            self._xlora()
        return self._report()

    # --------------------------------------------------------------------------------------- keys and modules
    def _sort_keys(self, keys: Iterable[str]) -> list[str]:
        """File the keys in PEFT form under what they name; return those that name nothing of the base."""
        assert self.base is not None
        weights = self.base.weights
        base_keys = self.base_keys.tensors
        unknown = []
        for key in keys:
            parts = split_key(key)
            if parts is None:
                unknown.append(key)
                continue
            module, role = parts
            if role in LORA_ROLES:
                if module in weights:
                    self.lora.setdefault(module, {})[role] = key
                    continue
            elif role == SAVED:
                if module in base_keys or (module.endswith(".weight") and module[:-7] in weights):
                    self.full[module] = key
                    continue
                if _wrapper_copy(module) in base_keys:
                    self.wrapper_copies.append(key)
                    continue
            else:
                inner = f"{module}.{role[len(BASE_LAYER) :]}"
                if inner in base_keys or (role == BASE_LAYER + "weight" and module in weights):
                    self.inner[inner] = key
                    continue
            unknown.append(key)
        return unknown

    def _structure(self) -> None:
        architecture = self.base_keys.architecture or self.cfg.base_class
        wanted = {"lm_head"} if any(".lm_head." in k or k.startswith("lm_head.") for k in self.adapter) else set()
        self.base = base = Base.of(self.base_keys, architecture=architecture, wanted=wanted)
        self.unknown = self._sort_keys(self.adapter)
        # every regex of the config under its budget: one that would hang PEFT is a finding, and its field invalid
        self.selection, self.ranks, slow = evaluate_patterns(self.cfg, base)
        selection = self.selection
        self.config = self.cfg.config
        self.findings.extend(slow)
        # invalid fields were replaced by their defaults; a selection made without a field it depends on is unknown
        target_fields = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "task_type")
        if not self.cfg.usable(*target_fields, "modules_to_save"):
            selection.targeted, selection.unmatched = None, []
        targeted = selection.targeted
        self.matching = sum(len(roles) for m, roles in self.lora.items() if targeted is None or m in targeted)
        declared = targeted if targeted is not None else set(self.lora)
        self._expect(declared)
        if self.unknown:
            self._explain_unknown(declared)
            if targeted is None:
                declared = set(self.lora)
                self._expect(declared)
        self._unmatched_targets()
        self._no_matching()
        self._modules(declared)
        self._saved(declared)

    def _expect(self, declared: set[str]) -> None:
        """Add the keys PEFT expects for ``declared`` modules (LoRA tensors, then full tensors) to ``expected``."""
        assert self.base is not None
        for module in self.base.weights:  # in the base's order, so that reports are reproducible
            if module in declared:
                for role in self._roles(module):
                    self.expected[join_key(module, role)] = None
        self.saved_expected = self._saved_expected(declared)
        self.expected.update(dict.fromkeys(self.saved_expected))

    def _roles(self, module: str) -> list[str]:
        """The LoRA roles PEFT saves for ``module``."""
        present = self.lora.get(module, {})
        embedding = EMBEDDING_A in present or EMBEDDING_B in present
        if not present:
            last = module.rpartition(".")[2]
            embedding = "embed" in last or last in ("wte", "wpe", "shared")
        roles = [EMBEDDING_A, EMBEDDING_B] if embedding else [LORA_A, LORA_B]
        if self.config.lora_bias and not embedding and self.cfg.usable("lora_bias"):
            roles.append(LORA_B_BIAS)
        if self.config.use_dora and self.cfg.usable("use_dora"):
            roles.append(MAGNITUDE)
        return roles

    def _saved_expected(self, declared: set[str]) -> list[str]:
        """Keys PEFT expects in full: every tensor of a ``modules_to_save`` module, and the biases ``bias`` asks for."""
        assert self.selection is not None
        out: list[str] = []
        wrapped = self.selection.saved_modules
        if wrapped:
            for key in self.base_keys.tensors:
                cut = key.rfind(".")
                while cut > 0:
                    if key[:cut] in wrapped:
                        out.append(PREFIX + key)
                        break
                    cut = key.rfind(".", 0, cut)
        bias = self.config.bias if self.cfg.usable("bias") else "none"
        if bias != "none":
            seen = set(out)
            for key in self.base_keys.tensors:
                if not key.endswith(".bias"):
                    continue
                module = key[:-5]
                if module in declared:
                    out.append(join_key(module, BASE_LAYER + "bias"))
                elif bias == "all" and PREFIX + key not in seen:
                    out.append(PREFIX + key)
        return out

    # ---------------------------------------------------------------------------------------------- the engine
    def _explain_unknown(self, declared: set[str]) -> None:
        """Run the engine on the adapter's keys against every key PEFT could expect, and keep what it explains."""
        assert self.base is not None
        roles = {LORA_A, LORA_B}
        for role in (role for module in declared for role in self._roles(module)):
            roles.add(role)
        text = " ".join(self.unknown)
        if "lora_embedding" in text:
            roles.update((EMBEDDING_A, EMBEDDING_B))
        if "lora_magnitude_vector" in text:
            roles.add(MAGNITUDE)
        if any("lora_B" in k and k.endswith(".bias") for k in self.unknown):
            roles.add(LORA_B_BIAS)
        unknown = set(self.unknown)
        lora: dict[str, tuple[str, str]] = {}  # candidate LoRA key -> (module, role)
        ordered_roles = sorted(roles)
        for module, info in self.base.weights.items():
            if info.shape is None or len(info.shape) >= 2:
                for role in ordered_roles:
                    lora[join_key(module, role)] = (module, role)
        fixed: dict[str, TensorInfo] = {}
        if any("lora_" not in k for k in self.unknown):
            # full tensors keep the base's shape, so a head of another size is not "renamed" onto another head
            fixed.update((PREFIX + k, TensorInfo(info.shape, None)) for k, info in self.base_keys.items())
        for key in self.saved_expected:
            fixed.setdefault(key, TensorInfo(None, None))
        fixed.update((k, info) for k, info in self.adapter.tensors.items() if k not in unknown)
        # first with the shapes PEFT would build (r from the config), so that a fix can be proven safe; when that
        # leaves keys unexplained (a rank the config gets wrong, say), again with the LoRA shapes left open
        ranks = self.ranks if self.cfg.usable("r", "rank_pattern") else None
        shaped = {key: TensorInfo(self._lora_shape(m, role, ranks), None) for key, (m, role) in lora.items()}
        report, renamed = self._engine_run({**shaped, **fixed})
        if len(renamed) < len(self.unknown) and any(info.shape is not None for info in shaped.values()):
            open_shapes = dict.fromkeys(lora, TensorInfo(None, None))
            second, more = self._engine_run({**open_shapes, **fixed})
            if len(more) > len(renamed):
                report, renamed = second, more
        self.engine, self.renamed = report, renamed
        self.unknown = [k for k in self.unknown if k not in self.renamed]
        # file the mapped keys under their new names, but keep pointing at the adapter's own key
        for key, new in self.renamed.items():
            if not self._sort_keys([new]):
                self._repoint(new, key)
        for f in report.findings:
            if f.code in _ENGINE_KINDS:
                self.findings.append(f)

    def _engine_run(self, candidates: dict[str, TensorInfo]) -> tuple[Report, dict[str, str]]:
        from keyguard.engine._pipeline import diagnose_keys
        from keyguard.sources._memory import read_mapping

        expected = read_mapping(candidates, location="keys PEFT expects")
        report = diagnose_keys(self.adapter, expected, align=False)
        plan = report.unsafe_plan
        renamed = {}
        for key in self.unknown:
            new = plan.rename_key(key)
            if new != key and new in candidates:
                renamed[key] = new
        return report, renamed

    def _lora_shape(self, module: str, role: str, ranks: Ranks | None) -> tuple[int, ...] | None:
        """The shape PEFT gives ``role`` on ``module``, when the base and the config say it unambiguously."""
        assert self.base is not None
        weight = self.base.weights[module].shape
        if weight is None or len(weight) != 2 or ranks is None:
            return None
        r = ranks.of(module)[0]
        if role in (EMBEDDING_A, EMBEDDING_B):
            return (r, weight[0]) if role == EMBEDDING_A else (weight[1], r)
        fan_in_fan_out = self.config.fan_in_fan_out if self.cfg.usable("fan_in_fan_out") else False
        layouts = {
            (weight[0], weight[1]) if conv else (weight[1], weight[0])
            for conv in self.base.conv1d(module, fan_in_fan_out)
        }
        if len(layouts) != 1:
            return None
        in_, out = layouts.pop()
        return {LORA_A: (r, in_), LORA_B: (out, r), LORA_B_BIAS: (out,), MAGNITUDE: (out,)}.get(role)

    def _repoint(self, new: str, original: str) -> None:
        parts = split_key(new)
        assert parts is not None
        module, role = parts
        if role in LORA_ROLES:
            self.lora[module][role] = original
        elif role == SAVED:
            self.full[module] = original
        else:
            self.inner[f"{module}.{role[len(BASE_LAYER) :]}"] = original

    # ------------------------------------------------------------------------------------------ the findings
    def _unmatched_targets(self) -> None:
        assert self.selection is not None
        unmatched = self.selection.unmatched
        if not unmatched:
            return
        entries = ", ".join(f"`{e}`" for e in unmatched)
        self.findings.append(
            finding(
                kinds.UNMATCHED_TARGET,
                f"target_modules {'entry' if len(unmatched) == 1 else 'entries'} {entries}"
                f" {'matches' if len(unmatched) == 1 else 'match'} no module of the"
                f" base model{self._trained_on()}",
                examples=[],
                pattern_keys=unmatched,
                count=len(unmatched),
                ctx={"entries": unmatched, "target_modules": self.config.target_modules},
            )
        )

    def _trained_on(self) -> str:
        trained = self.cfg.base_class
        base = self.base_keys.architecture
        if trained and base and trained != base:
            return f" (the adapter was trained on {trained}, the base is {base})"
        if trained:
            return f" (the adapter was trained on {trained})"
        return ""

    def _no_matching(self) -> None:
        if self.matching:
            return
        assert self.selection is not None
        lora_keys = sum(1 for k in self.adapter if "lora_" in k)
        if not self.adapter:
            why = "the adapter file holds no tensors"
        elif self.selection.targeted is not None and not self.selection.targeted:
            why = "target_modules selects no module of the base model, so PEFT refuses the adapter"
        else:
            why = (
                f"none of its {plural(lora_keys, 'LoRA tensor')} names a module of the base model that"
                " target_modules selects, under PEFT's naming (base_model.model.<module>.lora_A.weight)"
            )
        engine = self.engine
        fixable = 0 if engine is None else sum(1 for k in self.renamed if engine.plan.rename_key(k) != k)
        tail = f"; the safe plan maps {plural(fixable, 'key')}" if fixable else ""
        self.findings.append(
            finding(
                kinds.NO_MATCHING_MODULES,
                f"the adapter would change nothing: {why}{self._trained_on()}{tail}",
                examples=[],
                count=len(self.adapter),
                ctx={"tensors": len(self.adapter), "lora_tensors": lora_keys, "fixable": fixable},
            )
        )

    def _modules(self, declared: set[str]) -> None:
        assert self.base is not None and self.selection is not None
        absent = [m for m in self.base.weights if m in declared and m not in self.lora]
        if absent:
            note = " (all-linear: the module set is inferred from names and shapes)" if self.selection.inferred else ""
            missing_keys = [join_key(m, role) for m in absent for role in self._roles(m)]
            self.findings.append(
                finding(
                    kinds.TARGET_WITHOUT_WEIGHTS,
                    f"{plural(len(absent), 'module')} selected by target_modules have no LoRA tensors in the"
                    f" adapter; PEFT adds LoRA layers there and leaves them at their initialisation{note}",
                    expected_keys=missing_keys,
                    pattern_keys=absent,
                    count=len(absent),
                    examples=[Example(expected=join_key(m, self._roles(m)[0]), detail="absent") for m in absent],
                    ctx={"modules": len(absent), "inferred": self.selection.inferred},
                )
            )
        ranks = self.ranks if self.cfg.usable("r", "rank_pattern") else None
        undeclared: list[tuple[str, str]] = []
        incomplete_present: list[str] = []
        incomplete_missing: list[str] = []
        missing_roles: Counter[str] = Counter()
        rank_keys: list[str] = []
        rank_examples: list[Example] = []
        rank_kinds: Counter[str] = Counter()
        feature_keys: list[str] = []
        feature_examples: list[Example] = []
        dora = self.config.use_dora if self.cfg.usable("use_dora") else None
        lora_bias = self.config.lora_bias if self.cfg.usable("lora_bias") else None
        fan_in_fan_out = self.config.fan_in_fan_out if self.cfg.usable("fan_in_fan_out") else False
        info = self.adapter.tensors
        for module, roles in self.lora.items():
            if module not in declared:
                undeclared.extend((key, f"{module} is not selected by target_modules") for key in roles.values())
                continue
            embedding = EMBEDDING_A in roles or EMBEDDING_B in roles
            required = [EMBEDDING_A, EMBEDDING_B] if embedding else [LORA_A, LORA_B]
            if dora:
                required.append(MAGNITUDE)
            if lora_bias and not embedding:
                required.append(LORA_B_BIAS)
            if dora is False and MAGNITUDE in roles:
                undeclared.append((roles[MAGNITUDE], "a DoRA magnitude while use_dora is false"))
            if lora_bias is False and LORA_B_BIAS in roles:
                undeclared.append((roles[LORA_B_BIAS], "a lora_B bias while lora_bias is false"))
            gone = [role for role in required if role not in roles]
            if gone:
                incomplete_present.extend(roles.values())
                incomplete_missing.extend(join_key(module, role) for role in gone)
                missing_roles.update(gone)
            a_key, b_key = roles.get(required[0]), roles.get(required[1])
            if a_key is None or b_key is None:
                continue
            a, b = info[a_key].shape, info[b_key].shape
            if a is None or b is None or len(a) < 2 or len(b) < 2:
                continue
            keys = [a_key, b_key]
            if a[0] != b[1]:
                rank_keys.extend(keys)
                rank_kinds["lora_A and lora_B disagree"] += 1
                rank_examples.append(
                    Example(
                        checkpoint=a_key,
                        detail=f"lora_A {shape_text(a)} has rank {a[0]}, lora_B {shape_text(b)} rank {b[1]}",
                    )
                )
            elif ranks is not None:
                wanted, pattern = ranks.of(module)
                if a[0] != wanted:
                    rank_keys.extend(keys)
                    source = f"rank_pattern {pattern!r}" if pattern is not None else "r"
                    rank_kinds[f"config {source}={wanted}, tensors {a[0]}"] += 1
                    rank_examples.append(
                        Example(
                            checkpoint=a_key,
                            detail=f"config {source}={wanted}; lora_A {shape_text(a)}, lora_B {shape_text(b)}",
                        )
                    )
            problem = self._features(module, roles, a, b, embedding, fan_in_fan_out)
            if problem:
                feature_keys.extend(k for k in roles.values() if k not in feature_keys)
                feature_examples.append(Example(checkpoint=a_key, detail=problem))
        if undeclared:
            self._undeclared(undeclared)
        if incomplete_missing:
            what = ", ".join(f"{role} x{n}" for role, n in missing_roles.most_common())
            self.findings.append(
                finding(
                    kinds.INCOMPLETE_LORA_PAIR,
                    f"{plural(len(incomplete_missing), 'LoRA tensor')} missing from modules that have the others"
                    f" ({what}); PEFT leaves them at their initialisation without an error",
                    checkpoint_keys=incomplete_present,
                    expected_keys=incomplete_missing,
                    pattern_keys=incomplete_missing,
                    count=len(incomplete_missing),
                    examples=[Example(expected=k, detail="absent") for k in incomplete_missing],
                    ctx={"missing": dict(missing_roles)},
                )
            )
        if rank_keys:
            what = "; ".join(f"{text} x{n}" for text, n in rank_kinds.most_common(4))
            modules = len(rank_examples)
            self.findings.append(
                finding(
                    kinds.RANK_MISMATCH,
                    f"{plural(modules, 'LoRA module')} have another rank than the config gives them ({what}); PEFT"
                    " builds layers of the configured rank and the load fails with a size mismatch",
                    checkpoint_keys=rank_keys,
                    examples=rank_examples,
                    count=modules,
                    ctx={"modules": modules, "cases": dict(rank_kinds)},
                )
            )
        if feature_keys:
            modules = len(feature_examples)
            self.findings.append(
                finding(
                    kinds.LORA_FEATURE_MISMATCH,
                    f"{plural(modules, 'LoRA module')} do not fit the base module's weight; the load fails with a"
                    " size mismatch (was the adapter trained on a model of another size?)",
                    checkpoint_keys=feature_keys,
                    examples=feature_examples,
                    count=modules,
                    ctx={"modules": modules},
                )
            )

    def _features(
        self,
        module: str,
        roles: dict[str, str],
        a: tuple[int, ...],
        b: tuple[int, ...],
        embedding: bool,
        fan_in_fan_out: bool,
    ) -> str | None:
        """Why the LoRA tensors of ``module`` do not fit its base weight, or ``None``."""
        assert self.base is not None
        weight = self.base.weights[module].shape
        if weight is None or not weight:
            return None
        info = self.adapter.tensors
        extras = {role: info[roles[role]].shape for role in (LORA_B_BIAS, MAGNITUDE) if role in roles}
        if embedding:
            if len(weight) != 2:
                return None
            fits = a[1] == weight[0] and b[0] == weight[1]
            out = weight[1]
            layout = f"embedding [num_embeddings {weight[0]}, embedding_dim {weight[1]}]"
        elif len(weight) == 2:
            layouts = [
                (weight[0], weight[1], True) if conv else (weight[1], weight[0], False)
                for conv in self.base.conv1d(module, fan_in_fan_out)
            ]
            fitting = [(i, o, c) for i, o, c in layouts if a[1] == i and b[0] == o]
            in_, out, conv = (fitting or layouts)[0]
            fits = bool(fitting)
            layout = f"{'Conv1D [in, out]' if conv else 'nn.Linear [out, in]'}: in {in_}, out {out}"
        else:
            out = weight[0]
            fits = b[0] == out
            layout = f"{len(weight)}-D weight: out {out}"
        bad_extras = [
            role for role, shape in extras.items() if shape is not None and len(weight) == 2 and tuple(shape) != (out,)
        ]
        if fits and not bad_extras:
            return None
        parts = [f"lora_A {shape_text(a)}, lora_B {shape_text(b)}"]
        parts += [f"{role} {shape_text(extras[role])}" for role in bad_extras]
        return f"{', '.join(parts)} vs base weight {shape_text(weight)} ({layout})"

    def _undeclared(self, items: list[tuple[str, str]]) -> None:
        kinds_of = Counter(
            "modules target_modules does not select" if "target_modules" in why else why for _, why in items
        )
        what = "; ".join(f"{text} x{n}" for text, n in kinds_of.most_common(4))
        self.findings.append(
            finding(
                kinds.UNDECLARED_WEIGHTS,
                f"{plural(len(items), 'adapter tensor')} the config does not declare ({what}); PEFT builds no layer"
                " for them and skips them without an error",
                checkpoint_keys=[k for k, _ in items],
                examples=[Example(checkpoint=k, detail=why) for k, why in items],
                ctx={"tensors": len(items), "reasons": dict(kinds_of)},
            )
        )

    def _saved(self, declared: set[str]) -> None:
        """Full tensors: shapes against the base; those PEFT expects and does not find."""
        assert self.selection is not None
        base = self.base_keys.tensors
        info = self.adapter.tensors
        bad: list[str] = []
        examples: list[Example] = []
        undeclared: list[tuple[str, str]] = []
        saved = [(base_key, key, False) for base_key, key in self.full.items()]
        saved += [(base_key, key, True) for base_key, key in self.inner.items()]
        for base_key, key, inside in saved:
            module = base_key.rpartition(".")[0]
            if not inside and module in declared:
                undeclared.append((key, f"saved in full for a module with LoRA (PEFT expects {module}.base_layer.*)"))
                continue
            if inside and module not in declared:
                undeclared.append((key, f"a base_layer tensor of {module}, which has no LoRA"))
                continue
            theirs = base[base_key].shape if base_key in base else self._weight_shape(base_key)
            ours = info[key].shape
            if theirs is not None and ours is not None and tuple(ours) != tuple(theirs):
                bad.append(key)
                examples.append(
                    Example(checkpoint=key, detail=f"adapter {shape_text(ours)}, base {shape_text(theirs)}"),
                )
        if undeclared:
            self._undeclared(undeclared)
        if bad:
            self.findings.append(
                finding(
                    kinds.SAVED_TENSOR_MISMATCH,
                    f"{plural(len(bad), 'full tensor')} saved with the adapter (modules_to_save, biases, embeddings)"
                    " have another shape than the base model's; the load fails with a size mismatch",
                    checkpoint_keys=bad,
                    examples=examples,
                    ctx={"tensors": len(bad)},
                )
            )
        present = {join_key(k, SAVED) for k in self.full} | {
            join_key(k.rpartition(".")[0], BASE_LAYER + k.rpartition(".")[2]) for k in self.inner
        }
        missing = [k for k in self.saved_expected if k not in present]
        if missing:
            wrapped = sorted(self.selection.saved_modules)
            self.findings.append(
                finding(
                    kinds.SAVED_TENSOR_MISSING,
                    f"{plural(len(missing), 'tensor')} PEFT expects in full are not in the adapter"
                    f" (modules_to_save: {', '.join(wrapped) or '-'}; bias: {self.config.bias}); those modules keep"
                    " the base model's weights",
                    expected_keys=missing,
                    examples=[Example(expected=k, detail="absent") for k in missing],
                    ctx={"tensors": len(missing), "modules_to_save": wrapped, "bias": self.config.bias},
                )
            )

    def _weight_shape(self, base_key: str) -> tuple[int, ...] | None:
        assert self.base is not None
        found = self.base.weights.get(base_key[:-7]) if base_key.endswith(".weight") else None
        return None if found is None else found.shape

    def _dtypes(self) -> None:
        counts = Counter(info.dtype for info in self.adapter.tensors.values() if info.dtype is not None)
        if len(counts) < 2:
            return
        common = counts.most_common(1)[0][0]
        odd = [k for k, info in self.adapter.tensors.items() if info.dtype is not None and info.dtype != common]
        text = ", ".join(f"{dtype_label(d)} x{n:,}" for d, n in counts.most_common())
        self.findings.append(
            finding(
                kinds.MIXED_DTYPES,
                f"the adapter's tensors mix dtypes ({text}); {plural(len(odd), 'tensor')} differ from the most common"
                f" one, {dtype_label(common)}",
                checkpoint_keys=odd,
                examples=[Example(checkpoint=k, detail=dtype_label(self.adapter[k].dtype)) for k in odd],
                ctx={"dtypes": dict(counts), "most_common": common},
            )
        )

    def _values(self) -> None:
        from keyguard.adapter_checks._values import scan

        path = os.path.join(self.folder, self.adapter.files[0])
        facts = scan(path, list(self.adapter))
        bad = [k for k, v in facts.items() if v.nan or v.inf]
        if bad:
            self.findings.append(
                finding(
                    kinds.NONFINITE_VALUES,
                    f"{plural(len(bad), 'tensor')} {'holds' if len(bad) == 1 else 'hold'} NaN or infinite values;"
                    " every output through those modules"
                    " becomes NaN",
                    checkpoint_keys=bad,
                    examples=[
                        Example(
                            checkpoint=k,
                            detail=f"{facts[k].nan:,} NaN, {facts[k].inf:,} Inf of {facts[k].numel:,} values",
                        )
                        for k in bad
                    ],
                    ctx={"tensors": {k: {"nan": facts[k].nan, "inf": facts[k].inf} for k in bad[:50]}},
                )
            )
        factors = []
        for roles in self.lora.values():
            key = roles.get(LORA_B) or roles.get(EMBEDDING_A)  # the factor PEFT initialises to zero
            if key is not None:
                factors.append(key)
        zero = [k for k in factors if facts[k].all_zero]
        if zero:
            every = len(zero) == len(factors)
            tail = "the adapter changes nothing" if every else "those modules are unchanged"
            self.findings.append(
                finding(
                    kinds.UNTRAINED_LORA,
                    f"{len(zero):,} of {plural(len(factors), 'zero-initialised LoRA factor')} (lora_B, or"
                    f" lora_embedding_A for embeddings) are all zeros: {tail}; was the adapter trained?",
                    checkpoint_keys=zero,
                    examples=[Example(checkpoint=k, detail="all zeros") for k in zero],
                    ctx={"zero": len(zero), "factors": len(factors)},
                )
            )

    def _xlora(self) -> None:
        from keyguard.adapter_checks._xlora_check import xlora_findings

        unexplained = set(self.unknown)
        canonical: dict[str, str | None] = {}
        for key in self.adapter:
            if key in self.renamed:
                canonical[key] = self.renamed[key]
            else:
                canonical[key] = None if key in unexplained else key
        ok = self._loads_through_keyguard()
        self.findings.extend(xlora_findings(self.folder, self.base_keys, canonical, keyguard_ok=ok))

    def _loads_through_keyguard(self) -> bool:
        """No error is left once the safe plan has renamed what it can."""
        safe_plan_maps_all = not self.unknown and all(
            self.engine is None or self.engine.plan.rename_key(k) == new for k, new in self.renamed.items()
        )
        for f in self.findings:
            if not f.severity.at_least(kinds.Severity.error):
                continue
            if f.fix is not None and f.fix.applicability is Applicability.safe:
                continue
            if f.code == kinds.NO_MATCHING_MODULES.code and self.renamed and safe_plan_maps_all:
                continue
            return False
        return True

    # ---------------------------------------------------------------------------------------------- the report
    def _report(self) -> Report:
        expected = self.expected
        matched = sum(1 for k in self.adapter if k in expected)
        fixable = sum(1 for new in self.renamed.values() if new in expected)
        present = set(self.adapter) | set(self.renamed.values())
        missing = sum(1 for k in expected if k not in present)
        codes: Counter[str] = Counter()
        for f in self.findings:
            codes[f.code] += len(f.checkpoint_keys)
        unexpected = codes[kinds.UNDECLARED_WEIGHTS.code] + codes[kinds.UNEXPECTED.code]
        shape = sum(
            codes[k.code] for k in (kinds.RANK_MISMATCH, kinds.LORA_FEATURE_MISMATCH, kinds.SAVED_TENSOR_MISMATCH)
        )
        ambiguous = codes[kinds.AMBIGUOUS.code]
        summary = Summary.of(
            expected=len(expected),
            checkpoint=len(self.adapter),
            matched=matched,
            fixable=fixable,
            missing=missing,
            unexpected=unexpected,
            shape_mismatches=shape,
            ambiguous=ambiguous,
            empty=1.0 if not self.adapter else 0.0,
        )
        findings = sorted(self.findings, key=lambda f: (_ORDER[f.severity.value], f.code))
        engine = self.engine
        return Report(
            check="adapter-files",
            ok=not any(f.severity.at_least(kinds.Severity.error) for f in findings),
            checkpoint=SourceRef(location=self.folder, format="peft-adapter", tensors=len(self.adapter)),
            expected=SourceRef(
                location=self.base_keys.location, format=self.base_keys.format, tensors=len(self.base_keys)
            ),
            summary=summary,
            findings=findings,
            plan=engine.plan if engine is not None else Plan(),
            unsafe_plan=engine.unsafe_plan if engine is not None else Plan(),
        )
