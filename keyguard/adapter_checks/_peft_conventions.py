"""PEFT's LoRA conventions, reproduced from the files alone (peft is never imported).

- how ``save_pretrained`` names adapter tensors (``base_model.model.<module>.lora_A.weight``, ...);
- which modules ``target_modules`` selects: peft 0.21's ``check_target_module_exists`` (a list entry matches a
  module path equal to it or ending with ``"." + entry``; a string must match the whole path; ``exclude_modules``,
  ``layers_to_transform`` / ``layers_pattern`` and the ``modules_to_save`` exclusion as peft applies them);
- which rank a module gets: ``get_pattern_key`` over ``rank_pattern`` (first entry whose regex matches the end of the
  path), else ``r``;
- which modules ``modules_to_save`` wraps: ``_set_trainable`` (the module path ends with the entry, as a string).

Everything that can be a dict or set lookup is one: a list of target names is matched through the last segments of
each path, never through a regular expression per module. A regular expression of the config is evaluated once over
all the base's module paths, with ``re`` as PEFT does, under a time budget (``keyguard._regex_budget``): one that
backtracks without end raises ``SlowPattern`` naming its field instead of hanging.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from keyguard._regex_budget import Mode, PatternTimeout, match_all
from keyguard.sources._adapter import AdapterConfig
from keyguard.sources._keyset import KeySet, TensorInfo

PREFIX: Final = "base_model.model."
_CUT: Final = len(PREFIX)

LORA_A: Final = "lora_A.weight"
LORA_B: Final = "lora_B.weight"
LORA_B_BIAS: Final = "lora_B.bias"
EMBEDDING_A: Final = "lora_embedding_A"
EMBEDDING_B: Final = "lora_embedding_B"
MAGNITUDE: Final = "lora_magnitude_vector"
#: Roles of LoRA tensors; a saved key is ``PREFIX + module + "." + role``.
LORA_ROLES: Final = frozenset({LORA_A, LORA_B, LORA_B_BIAS, EMBEDDING_A, EMBEDDING_B, MAGNITUDE})
_LAST_SEGMENT_ROLES: Final = frozenset({EMBEDDING_A, EMBEDDING_B, MAGNITUDE})
BASE_LAYER: Final = "base_layer."  # role prefix of a base tensor saved from inside a LoRA-wrapped module
SAVED: Final = ""  # role of a full base tensor (modules_to_save, bias, embeddings): the "module" is the base key

ALL_LINEAR: Final = "all-linear"
# GPT-2 and its relatives store these projections as transformers' Conv1D: weight [in, out]
_CONV1D_NAMES: Final = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})
_CONV1D_ARCHITECTURES: Final = ("GPT2", "OpenAIGPT", "ImageGPT", "DecisionTransformer")
# names of modules that are embeddings or output heads, not linear layers (for "all-linear", which peft resolves by
# module type; keyguard only sees names and shapes)
_EMBEDDING_NAMES: Final = frozenset(
    {"wte", "wpe", "shared", "relative_attention_bias", "embed_in", "embed_out", "lm_head", "embeddings"}
)
_SEQ_CLS_HEADS: Final = ("score", "classifier")
_TIED_INPUT_EMBEDDINGS: Final = ("embed_tokens", "wte", "word_embeddings", "embed_in")


def split_key(key: str) -> tuple[str, str] | None:
    """``(module, role)`` of an adapter key in PEFT's saved form, or ``None`` without the ``base_model.model.`` prefix.

    The role is one of ``LORA_ROLES``, ``"base_layer.<param>"``, or ``SAVED`` (then ``module`` is the base key).
    """
    if not key.startswith(PREFIX):
        return None
    rest = key[_CUT:]
    head, _, last = rest.rpartition(".")
    if last in _LAST_SEGMENT_ROLES:
        return head, last
    if last == "weight" or last == "bias":
        module, _, segment = head.rpartition(".")
        if segment == "lora_A" or segment == "lora_B":
            return module, f"{segment}.{last}"
        if segment == "base_layer":
            return module, BASE_LAYER + last
    return rest, SAVED


def join_key(module: str, role: str) -> str:
    """The saved key of ``role`` on ``module`` (inverse of ``split_key``)."""
    if role == SAVED:
        return PREFIX + module
    return f"{PREFIX}{module}.{role}" if module else f"{PREFIX}{role}"


@dataclass
class Base:
    """The base model as check-adapter sees it: its keys, and the modules that own a ``weight``."""

    keys: KeySet
    weights: dict[str, TensorInfo] = field(default_factory=dict)  # module path -> its weight
    architecture: str | None = None
    inferred: dict[str, str] = field(default_factory=dict)  # module -> why it was added without a key of its own

    @classmethod
    def of(cls, keys: KeySet, *, architecture: str | None = None, wanted: Collection[str] = ()) -> Base:
        """``wanted``: module paths the adapter refers to; a tied ``lm_head`` absent from the file is added for them."""
        weights = {key[:-7]: info for key, info in keys.tensors.items() if key.endswith(".weight")}
        base = cls(keys, weights, architecture or keys.architecture)
        if "lm_head" in wanted and "lm_head" not in weights:
            # checkpoints leave a tied output embedding out; the module still exists and has the embedding's shape
            inputs = [m for m in weights if m.rpartition(".")[2] in _TIED_INPUT_EMBEDDINGS]
            if len(inputs) == 1:
                weights["lm_head"] = weights[inputs[0]]
                base.inferred["lm_head"] = f"tied to {inputs[0]}.weight (absent from the base file)"
        return base

    def conv1d(self, module: str, fan_in_fan_out: bool) -> tuple[bool, ...]:
        """Orientations to accept for ``module``'s weight: ``(False,)`` for ``[out, in]`` (nn.Linear), ``(True,)`` for
        ``[in, out]`` (Conv1D), both when the files cannot tell (peft decides by the module's class, not by the
        config's ``fan_in_fan_out``)."""
        named = module.rpartition(".")[2] in _CONV1D_NAMES
        if self.architecture is not None:
            return (named and self.architecture.startswith(_CONV1D_ARCHITECTURES),)
        return (False, True) if named or fan_in_fan_out else (False,)


class SlowPattern(Exception):
    """A regular expression of the config did not finish matching the base's module paths within its budget."""

    def __init__(self, field: str, pattern: str, seconds: float, names: int) -> None:
        self.field = field
        self.pattern = pattern
        self.seconds = seconds
        self.names = names
        super().__init__(f"{field}: {pattern!r} did not finish matching {names} module paths within {seconds:g} s")


def _matching(
    field: str, pattern: str, names: Sequence[str], mode: Mode = "match", *, entry: str | None = None
) -> dict[str, tuple[str | None, ...]]:
    """The names ``pattern`` matches, each with its groups; ``re.error`` when it does not compile, ``SlowPattern``
    (naming ``entry``, the config's own text, when ``pattern`` wraps it) when it overruns its budget."""
    try:
        results = match_all(pattern, names, mode=mode)
    except PatternTimeout as exc:
        raise SlowPattern(field, pattern if entry is None else entry, exc.seconds, len(names)) from None
    return {name: groups for name, groups in zip(names, results) if groups is not None}


def _group(pattern: str, groups: tuple[str | None, ...], name: str) -> str | None:
    return groups[re.compile(pattern).groupindex[name] - 1]


# -- which modules a config selects -----------------------------------------------------------------------------
def _suffix(path: str, segments: int) -> str | None:
    """The last ``segments`` dotted segments of ``path``, when it has more than that many."""
    end = len(path)
    cut = end
    for _ in range(segments):
        cut = path.rfind(".", 0, cut)
        if cut < 0:
            return None
    return path[cut + 1 : end]


def _name_matcher(names: Iterable[str]) -> tuple[frozenset[str], dict[int, frozenset[str]]]:
    names = frozenset(names)
    by_length: dict[int, set[str]] = {}
    for name in names:
        by_length.setdefault(name.count(".") + 1, set()).add(name)
    return names, {n: frozenset(group) for n, group in by_length.items()}


def _matches_name(path: str, exact: frozenset[str], by_length: Mapping[int, frozenset[str]]) -> bool:
    """peft's list rule: ``path in names or any(path.endswith("." + name))``, by set lookups."""
    if path in exact:
        return True
    return any(_suffix(path, n) in group for n, group in by_length.items())


def _mts_excluder(names: Iterable[str]) -> tuple[frozenset[str], list[tuple[str, str]]]:
    """peft excludes modules matching ``(^|.*\\.){name}($|\\..*)`` (``name`` as a regex) from LoRA targeting."""
    plain: set[str] = set()
    patterns: list[tuple[str, str]] = []
    for name in names:
        if re.fullmatch(r"\w+", name):
            plain.add(name)  # a plain identifier: the rule means "one of the path's segments"
        else:
            pattern = rf"(^|.*\.){name}($|\..*)"
            try:
                re.compile(pattern)
            except re.error:
                continue  # peft itself would raise; the config check reports the entry
            patterns.append((name, pattern))
    return frozenset(plain), patterns


def _layer_indexes(config: AdapterConfig, modules: Sequence[str]) -> dict[str, int]:
    """peft's layer index of each module path that has one (the first ``layers_pattern`` entry that matches)."""
    patterns = config.layers_pattern
    if patterns is None or len(patterns) == 0:
        wrapped = [("", r".*?\.[^.]*\.(?P<idx>\d+)\.")]
    else:
        entries = [patterns] if isinstance(patterns, str) else patterns
        wrapped = [(p, rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.") for p in entries]
    out: dict[str, int] = {}
    for entry, pattern in wrapped:
        try:
            found = _matching("layers_pattern", pattern, [m for m in modules if m not in out], entry=entry)
        except re.error:
            continue  # the config check reports it
        for module, groups in found.items():
            index = _group(pattern, groups, "idx")
            if index is not None:
                out[module] = int(index)
    return out


@dataclass
class Selection:
    """The modules a config selects, and what could not be matched."""

    #: ``None`` when ``target_modules`` is absent: peft then uses its per-architecture default, which the files do
    #: not name, so every module with LoRA weights counts as declared
    targeted: set[str] | None
    #: ``target_modules`` list entries (or the regex string) that match no module of the base
    unmatched: list[str] = field(default_factory=list)
    #: modules ``modules_to_save`` wraps (every module path, not only those with a weight)
    saved_modules: set[str] = field(default_factory=set)
    inferred: bool = False  # "all-linear": the set comes from names and shapes, not module classes


def select(config: AdapterConfig, base: Base) -> Selection:
    """The base modules ``config`` puts LoRA on, and those ``modules_to_save`` wraps, by peft's rules."""
    target = config.target_modules
    modules = list(base.weights)
    saved_modules = _modules_to_save(config, base)
    if target is None:
        return Selection(None, [], saved_modules)
    excluded = _excluded(config, modules)
    if isinstance(target, str):
        if target.lower() == ALL_LINEAR:
            chosen = _all_linear(config, base)
            return Selection(chosen - excluded, [], saved_modules, inferred=True)
        try:
            chosen = set(_matching("target_modules", target, modules, "fullmatch"))
        except re.error:
            return Selection(set(), [target], saved_modules)
        return Selection(chosen - excluded, [] if chosen else [target], saved_modules)
    exact, by_length = _name_matcher(target)
    layers = config.layers_to_transform
    use_layers = layers is not None and (len(layers) != 0 if isinstance(layers, list) else True)
    wanted_layers = {layers} if isinstance(layers, int) else set(layers or ())
    chosen = set()
    seen_names: set[str] = set()
    indexes = _layer_indexes(config, modules) if use_layers else {}
    for module in modules:
        if module in exact:
            chosen.add(module)  # named in full: peft skips the layer filter
            seen_names.add(module)
            continue
        hit = next((s for n, group in by_length.items() if (s := _suffix(module, n)) in group), None)
        if hit is None:
            continue
        seen_names.add(hit)
        if use_layers:
            index = indexes.get(module)
            if index is None or index not in wanted_layers:
                continue
        chosen.add(module)
    unmatched = [name for name in target if name not in seen_names]
    return Selection(chosen - excluded, unmatched, saved_modules)


def _excluded(config: AdapterConfig, modules: list[str]) -> set[str]:
    out: set[str] = set()
    exclude = config.exclude_modules
    if exclude:
        if isinstance(exclude, str):
            with contextlib.suppress(re.error):  # the config check reports it
                out.update(_matching("exclude_modules", exclude, modules, "fullmatch"))
        else:
            exact, by_length = _name_matcher(exclude)
            out.update(m for m in modules if _matches_name(m, exact, by_length))
    if config.modules_to_save:
        plain, patterns = _mts_excluder(config.modules_to_save)
        if plain:
            out.update(m for m in modules if not plain.isdisjoint(m.split(".")))
        for name, pattern in patterns:
            out.update(_matching("modules_to_save", pattern, modules, entry=name))
    return out


def _modules_to_save(config: AdapterConfig, base: Base) -> set[str]:
    """peft's ``_set_trainable``: every module path (containers included) that ends with an entry, as a string."""
    names = tuple(config.modules_to_save or ())
    if not names:
        return set()
    paths: set[str] = set()
    for key in base.keys.tensors:
        cut = key.rfind(".")
        while cut > 0:
            path = key[:cut]
            if path in paths:
                break
            paths.add(path)
            cut = key.rfind(".", 0, cut)
    chosen = {p for p in paths if p.endswith(names)}
    # a wrapped module's children are saved with it: keep the outermost
    return {p for p in chosen if not any(p.startswith(q + ".") for q in chosen if q != p)}


def _all_linear(config: AdapterConfig, base: Base) -> set[str]:
    """peft resolves "all-linear" to every nn.Linear / Conv1D except the output layer; from names and shapes that is
    every module with a 2-D weight that is not named like an embedding or an output head."""
    out = set()
    for module, info in base.weights.items():
        if info.shape is not None and len(info.shape) != 2:
            continue
        last = module.rpartition(".")[2]
        if last in _EMBEDDING_NAMES or "embed" in last or module == "cls.predictions.decoder":
            continue
        if config.task_type == "SEQ_CLS" and module in _SEQ_CLS_HEADS:
            continue
        out.add(module)
    return out


# -- ranks ------------------------------------------------------------------------------------------------------
class Ranks:
    """The rank peft gives each module: the first ``rank_pattern`` entry whose regex matches the end of the module
    path (``get_pattern_key``: ``re.match(rf"(.*\\.)?({key})$", path)``), else ``r``.

    The entries are evaluated once over ``modules`` (the base's module paths), under the budget; another path is
    evaluated when asked for.

    Raises:
        SlowPattern: an entry backtracks without end (field ``rank_pattern``).
    """

    def __init__(self, config: AdapterConfig, modules: Sequence[str] = ()) -> None:
        self.r = config.r
        self.patterns = dict(config.rank_pattern)
        self._first = FirstMatch("rank_pattern", list(self.patterns), modules)

    def of(self, module: str) -> tuple[int, str | None]:
        """``(rank, rank_pattern entry that gave it or None)``."""
        key = self._first.of(module)
        return (self.r, None) if key is None else (self.patterns[key], key)


class FirstMatch:
    """peft's ``get_pattern_key`` over a config's pattern dict (``rank_pattern``, ``alpha_pattern``): for each path,
    the first entry ``key`` in order for which ``re.match(rf"(.*\\.)?({key})$", path)`` matches."""

    def __init__(self, field: str, keys: list[str], modules: Sequence[str]) -> None:
        self.field = field
        self.keys = keys
        self._table: dict[str, str | None] = {}
        self._evaluate(list(dict.fromkeys(modules)))

    def of(self, module: str) -> str | None:
        if module not in self._table:
            self._evaluate([module])
        return self._table[module]

    def _evaluate(self, modules: list[str]) -> None:
        self._table.update(dict.fromkeys(modules))
        if not self.keys or not modules:
            return
        # one regex for all entries: at the start of the path alternatives are tried in order, so the first entry
        # that matches wins, as in peft's loop
        combined = "|".join(f"(?:(?:.*\\.)?(?P<p{i}>{key})$)" for i, key in enumerate(self.keys))
        try:
            found = _matching(self.field, combined, modules)
        except (re.error, SlowPattern):  # a broken or slow entry: each on its own, in order (naming the slow one)
            self._evaluate_each(modules)
            return
        index = re.compile(combined).groupindex
        for module, groups in found.items():
            self._table[module] = next(k for i, k in enumerate(self.keys) if groups[index[f"p{i}"] - 1] is not None)

    def _evaluate_each(self, modules: list[str]) -> None:
        left = list(modules)
        for key in self.keys:
            try:
                found = _matching(self.field, rf"(.*\.)?({key})$", left, entry=key)
            except re.error:
                continue  # peft itself would raise; the config check reports the entry
            for module in found:
                self._table[module] = key
            left = [m for m in left if m not in found]
