"""What each key of an adapter names under PEFT's naming, which keys PEFT expects, and what the engine explains.

``AdapterKeys`` holds the state of one check (``_check._Check`` is built on it): the adapter's keys filed under the
base module or tensor they name, the keys PEFT would expect from the config, and, for keys that name nothing, the
engine's reading of them against those expected keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from keyguard.adapter_checks._config_read import ConfigRead
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
from keyguard.report._model import Finding, Report
from keyguard.sources._keyset import KeySet, TensorInfo

#: engine kinds kept in an adapter report: naming problems and what stays unexplained. Missing keys are re-derived
#: module by module (declared without weights, incomplete pairs), and the expected side has no shapes.
_ENGINE_KINDS: Final = frozenset({"KG101", "KG102", "KG103", "KG201", "KG202", "KG402", "KG403"})


def _wrapper_copy(key: str) -> str | None:
    """The base key of a ``<module>.modules_to_save.<param>`` / ``<module>.original_module.<param>`` key."""
    for infix in (".modules_to_save.", ".original_module."):
        module, found, param = key.partition(infix)
        if found:
            return f"{module}.{param}"
    return None


class AdapterKeys:
    """The state of one adapter check, and how the adapter's keys are filed and PEFT's expected keys derived."""

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
