"""The structural checks of an adapter: modules declared and present, pairs, ranks, shapes, saved tensors."""

from __future__ import annotations

from collections import Counter

from keyguard.adapter_checks._adapter_keys import AdapterKeys
from keyguard.adapter_checks._config_read import evaluate_patterns
from keyguard.adapter_checks._findings import finding, plural, shape_text
from keyguard.adapter_checks._peft_conventions import (
    BASE_LAYER,
    EMBEDDING_A,
    EMBEDDING_B,
    LORA_A,
    LORA_B,
    LORA_B_BIAS,
    MAGNITUDE,
    SAVED,
    Base,
    join_key,
)
from keyguard.report import _kinds as kinds
from keyguard.report._model import Example


class StructureChecks(AdapterKeys):
    """The findings on the adapter's keys and modules against the config and the base."""

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
