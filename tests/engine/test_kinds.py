"""One focused test per finding kind (KG101..KG404), on the smallest real input that produces it.

Each test builds the checkpoint the way the real world breaks it (a wrapper's prefix, a legacy name, a resized
vocabulary...), so the true mapping is known from the construction, and checks: code, kind, severity, count, the
safe plan, applicability, that every key is accounted for exactly once, and that the message says the key facts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

import keyguard
from keyguard.fixes import (
    AddPrefix,
    Applicability,
    Fuse,
    Plan,
    Rename,
    ReplacePrefix,
    ShiftIndex,
    Split,
    StripPrefix,
    Transpose,
)
from keyguard.report import KINDS, Finding, Report, Severity
from keyguard.sources import TensorInfo, read_keys

torch = pytest.importorskip("torch")
nn = torch.nn

# -- helpers -----------------------------------------------------------------------------------------------------


def keys_of(source: Any) -> list[str]:
    return list(read_keys(source))


def check_accounting(report: Report, checkpoint: Any, expected: Any, ignore: Iterable[str] = ()) -> None:
    """Every checkpoint / expected key is in exactly one finding, or is an exact match (in at most one finding);
    ignored keys are nowhere; findings name no key that is not in the inputs."""
    patterns = [re.compile(p) for p in ignore]
    ck = [k for k in keys_of(checkpoint) if not any(p.search(k) for p in patterns)]
    ex = [k for k in keys_of(expected) if not any(p.search(k) for p in patterns)]
    exact = set(ck) & set(ex)
    seen_c = Counter(k for f in report.findings for k in f.checkpoint_keys)
    seen_e = Counter(k for f in report.findings for k in f.expected_keys)
    assert set(seen_c) <= set(ck), set(seen_c) - set(ck)
    assert set(seen_e) <= set(ex), set(seen_e) - set(ex)
    for side, keys, seen in (("checkpoint", ck, seen_c), ("expected", ex, seen_e)):
        for key in keys:
            assert seen[key] <= 1, f"{side} key {key!r} is in {seen[key]} findings"
            assert seen[key] == 1 or key in exact, f"{side} key {key!r} is in no finding and does not match"
    for finding in report.findings:
        assert finding.code in KINDS and KINDS[finding.code].kind == finding.kind
        assert finding.severity is KINDS[finding.code].severity
        assert finding.count == (len(finding.checkpoint_keys) or len(finding.expected_keys))


def check_never_suggests_strict_false(report: Report) -> None:
    """``strict=False`` is named only to say what it would do when nothing overlaps, never as a remedy."""
    for finding in report.findings:
        texts = [finding.benign, finding.hint, finding.fix.note if finding.fix else None]
        texts += [rule.describe() for rule in (finding.fix.rules if finding.fix else [])]
        for text in texts:
            assert "strict=False" not in (text or ""), (finding.code, text)
        if finding.kind == "no_overlap":
            assert "strict=False) would load nothing" in finding.message
        else:
            assert "strict=False" not in finding.message, finding.message
    table = " ".join(report.render("table").split())  # wrapped lines joined back
    assert "strict=False" not in table.replace("strict=False) would load nothing", "")


def check_plan_is_the_safe_findings(report: Report) -> None:
    """The safe plan holds exactly the rules of the findings whose fix is safe; nothing else is safe."""
    safe_rules = [
        r for f in report.findings if f.fix and f.fix.applicability is Applicability.safe for r in f.fix.rules
    ]
    assert Counter(r.model_dump_json() for r in report.plan.rules) == Counter(r.model_dump_json() for r in safe_rules)
    for rule in report.plan.rules:
        assert rule.applicability is Applicability.safe
    for finding in report.findings:
        if finding.fix is not None:
            assert all(r.applicability is finding.fix.applicability for r in finding.fix.rules)


def diagnose(checkpoint: Any, expected: Any, **kwargs: Any) -> Report:
    report = keyguard.diagnose(checkpoint, expected, **kwargs)
    check_accounting(report, checkpoint, expected, kwargs.get("ignore", ()))
    check_never_suggests_strict_false(report)
    check_plan_is_the_safe_findings(report)
    table = report.render("table")
    for finding in report.findings:
        assert finding.code in table
    return report


def only(report: Report, kind: str) -> Finding:
    found = [f for f in report.findings if f.kind == kind]
    assert len(found) == 1, [f.kind for f in report.findings]
    return found[0]


def kinds_of(report: Report) -> list[str]:
    return sorted(f.kind for f in report.findings)


def load_fixed(report: Report, state: Mapping[str, Any], model: Any, truth: Mapping[str, str]) -> None:
    """Apply the safe plan; the plan maps every key as the construction says; strict load; tensors unchanged."""
    mapping = report.plan.mapping(state)
    for original, target in truth.items():
        assert mapping[original] == target, original
    fixed = report.plan.apply(state)
    model.load_state_dict(fixed, strict=True)
    current = model.state_dict()
    for original, target in truth.items():
        assert fixed[target] is state[original]
        assert torch.equal(current[target], state[original]), target


def renamed(state: Mapping[str, Any], fn: Callable[[str], str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The state dict with every key renamed by ``fn`` and fresh random values (so a tensor loaded under the wrong
    name shows), and the truth: new key -> the model key it really is."""
    generator = torch.Generator().manual_seed(1234)
    out = {fn(k): torch.randn(v.shape, generator=generator).to(v.dtype) for k, v in state.items()}
    assert len(out) == len(state)
    return out, {fn(k): k for k in state}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


def small_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(Block(), Block(), nn.Linear(4, 2))


# -- KG101 extra_prefix ------------------------------------------------------------------------------------------


class CompiledLike(nn.Module):
    """The attribute layout of torch.compile's OptimizedModule (``_orig_mod``), without starting dynamo."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


class SentenceTransformerLike(nn.Module):
    """sentence-transformers' ``Transformer`` module keeps the Hugging Face model as ``auto_model``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.auto_model = inner


WRAPPERS: dict[str, tuple[Callable[[nn.Module], nn.Module], str, tuple[str, ...]]] = {
    "ddp": (nn.DataParallel, "module.", ("DistributedDataParallel",)),
    "compile": (CompiledLike, "_orig_mod.", ("torch.compile",)),
    "ddp+compile": (lambda m: nn.DataParallel(CompiledLike(m)), "module._orig_mod.", ("Distributed", "torch.compile")),
    "compile+ddp": (lambda m: CompiledLike(nn.DataParallel(m)), "_orig_mod.module.", ("Distributed", "torch.compile")),
    "sentence-transformers": (lambda m: nn.Sequential(SentenceTransformerLike(m)), "0.auto_model.", ("sentence",)),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_extra_prefix_of_wrappers(wrapper: str) -> None:
    wrap, prefix, origin = WRAPPERS[wrapper]
    model = small_net()
    trained = small_net()
    checkpoint = wrap(trained).state_dict()
    assert all(k.startswith(prefix) for k in checkpoint)
    report = diagnose(checkpoint, model)
    finding = only(report, "extra_prefix")
    assert (finding.code, finding.severity) == ("KG101", Severity.error)
    assert finding.count == len(checkpoint)
    assert finding.fix is not None and finding.fix.applicability is Applicability.safe
    assert report.plan.rules == [StripPrefix(prefix=prefix, reason="KG101")]
    assert f"'{prefix}'" in finding.message
    for word in origin:
        assert word in finding.message
    assert kinds_of(report) == ["extra_prefix", "no_overlap"]
    assert report.summary.coverage_before == 0 and report.summary.coverage_after == 1
    load_fixed(report, checkpoint, model, {prefix + k: k for k in model.state_dict()})


def test_doubled_model_prefix_on_part_of_the_keys_is_narrowed(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama()
    # a loader prepended `model.` to the decoder layers only: embed_tokens, norm and lm_head are still right
    checkpoint, truth = renamed(model.state_dict(), lambda k: "model." + k if k.startswith("model.layers.") else k)
    doubled = [k for k in checkpoint if k.startswith("model.model.")]
    report = diagnose(checkpoint, model)
    finding = only(report, "extra_prefix")
    assert finding.count == len(doubled) == sum(1 for k in model.state_dict() if k.startswith("model.layers."))
    # stripping `model.` would also rename model.norm.weight / model.embed_tokens.weight, which already match
    assert report.plan.rules == [ReplacePrefix(old="model.model.", new="model.", reason="KG101")]
    assert finding.fix is not None and finding.fix.applicability is Applicability.safe
    assert "'model.'" in finding.message
    assert report.summary.matched == len(checkpoint) - len(doubled)
    assert kinds_of(report) == ["extra_prefix"]
    load_fixed(report, checkpoint, model, truth)


# -- KG102 missing_prefix ----------------------------------------------------------------------------------------


def test_missing_prefix_base_bert_into_sequence_classification(tiny_bert: Callable[..., Any]) -> None:
    model = tiny_bert()
    torch.manual_seed(7)
    base = tiny_bert().bert.state_dict()  # what BertModel.save_pretrained holds: no `bert.`, no classifier
    report = diagnose(base, model)
    finding = only(report, "missing_prefix")
    assert (finding.code, finding.severity, finding.count) == ("KG102", Severity.error, len(base))
    scope = sorted({k.split(".", 1)[0] for k in base})
    assert scope == ["embeddings", "encoder", "pooler"]
    assert report.plan.rules == [AddPrefix(prefix="bert.", only=scope, reason="KG102")]
    assert "'bert.'" in finding.message
    head = [k for k in model.state_dict() if not k.startswith("bert.")]
    assert head == ["classifier.weight", "classifier.bias"]
    missing = only(report, "missing")
    assert (missing.code, missing.count, missing.expected_keys) == ("KG401", 2, head)
    assert missing.benign and "task head" in missing.benign
    assert missing.ctx["category"] == "head"
    assert missing.fix is None
    assert report.summary.missing == 2 and report.summary.fixable == len(base)
    # the plan never touches the head; loading the rest leaves exactly the head missing
    fixed = report.plan.apply(base)
    result = model.load_state_dict(fixed, strict=False)
    assert sorted(result.missing_keys) == sorted(head) and not result.unexpected_keys
    for key, value in base.items():
        assert torch.equal(model.state_dict()["bert." + key], value)


# -- KG103 replaced_prefix ---------------------------------------------------------------------------------------


def test_replaced_prefix_transformer_vs_model(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama()
    checkpoint, truth = renamed(
        model.state_dict(), lambda k: "transformer." + k[len("model.") :] if k.startswith("model.") else k
    )
    report = diagnose(checkpoint, model)
    finding = only(report, "replaced_prefix")
    moved = [k for k in checkpoint if k.startswith("transformer.")]
    assert (finding.code, finding.severity, finding.count) == ("KG103", Severity.error, len(moved))
    assert report.plan.rules == [ReplacePrefix(old="transformer.", new="model.", reason="KG103")]
    assert "'transformer.'" in finding.message and "'model.'" in finding.message
    assert kinds_of(report) == ["replaced_prefix"]  # lm_head.weight matches as it stands
    load_fixed(report, checkpoint, model, truth)


def test_replaced_prefix_renested_language_model() -> None:
    """Vision-language checkpoints saved before transformers 4.52: `language_model.model.` vs
    `model.language_model.`."""
    w, b = TensorInfo((8, 8), "BF16"), TensorInfo((8,), "BF16")
    expected = {f"model.language_model.layers.{i}.{m}.weight": w for i in range(3) for m in ("q_proj", "o_proj")}
    expected |= {"model.language_model.norm.weight": b, "model.vision_tower.patch.weight": w, "lm_head.weight": w}
    checkpoint = {(k.replace("model.language_model.", "language_model.model.", 1)): v for k, v in expected.items()}
    report = diagnose(checkpoint, expected)
    finding = only(report, "replaced_prefix")
    assert finding.count == sum(1 for k in expected if k.startswith("model.language_model."))
    assert report.plan.rules == [
        ReplacePrefix(old="language_model.model.", new="model.language_model.", reason="KG103")
    ]
    assert "'language_model.model.'" in finding.message and "'model.language_model.'" in finding.message
    assert report.plan.mapping(checkpoint) == {
        k: k.replace("language_model.model.", "model.language_model.") for k in checkpoint
    }


# -- KG201 renamed -----------------------------------------------------------------------------------------------


def legacy_layernorm(key: str) -> str:
    return re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", key))


def test_renamed_gamma_beta(tiny_bert: Callable[..., Any]) -> None:
    model = tiny_bert().bert
    checkpoint, truth = renamed(model.state_dict(), legacy_layernorm)
    report = diagnose(checkpoint, model)
    found = {f.ctx["old"]: f for f in report.findings}
    assert sorted(found) == ["beta", "gamma"] and kinds_of(report) == ["renamed", "renamed"]
    for old, new in (("gamma", "weight"), ("beta", "bias")):
        finding = found[old]
        assert (finding.code, finding.severity) == ("KG201", Severity.error)
        assert finding.count == sum(1 for k in checkpoint if k.endswith("." + old))
        assert finding.ctx["new"] == new
        assert f"'{old}'" in finding.message and f"'{new}'" in finding.message
        assert finding.fix is not None and finding.fix.applicability is Applicability.safe
        assert [(r.op, r.old, r.new) for r in finding.fix.rules if isinstance(r, Rename)] == [("rename", old, new)]
    load_fixed(report, checkpoint, model, truth)


def test_renamed_block_list(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama()
    checkpoint, truth = renamed(model.state_dict(), lambda k: k.replace("model.layers.", "model.h."))
    report = diagnose(checkpoint, model)
    finding = only(report, "renamed")
    assert finding.count == sum(1 for k in checkpoint if ".h." in k)
    assert (finding.ctx["old"], finding.ctx["new"]) == ("h", "layers")
    assert "'h'" in finding.message and "'layers'" in finding.message
    assert finding.fix is not None and finding.fix.applicability is Applicability.safe
    load_fixed(report, checkpoint, model, truth)


@pytest.fixture
def lora_model(tiny_llama: Callable[..., Any]) -> Any:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return peft.get_peft_model(tiny_llama(), config)


def test_renamed_peft_adapter_name_missing(lora_model: Any) -> None:
    from peft import get_peft_model_state_dict

    adapter = get_peft_model_state_dict(lora_model)  # as saved: no adapter name
    non_lora = r"^(?!.*\.lora_)"
    report = diagnose(adapter, lora_model, ignore=[non_lora])
    finding = only(report, "renamed")
    assert finding.count == len(adapter)
    assert finding.ctx["new"] == "default" and not finding.ctx["old"]
    assert "'default'" in finding.message and "PEFT's adapter name" in finding.message
    assert report.summary.ignored == sum(1 for k in lora_model.state_dict() if ".lora_" not in k)
    assert report.summary.coverage_after == 1
    truth = {k: re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k) for k in adapter}
    assert report.plan.mapping(adapter) == truth
    result = lora_model.load_state_dict(report.plan.apply(adapter), strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(k for k in lora_model.state_dict() if ".lora_" not in k)


def test_renamed_peft_adapter_name_present(lora_model: Any) -> None:
    from peft import get_peft_model_state_dict

    with_name = {k: v for k, v in lora_model.state_dict().items() if ".lora_" in k}
    saved = get_peft_model_state_dict(lora_model)  # what PEFT's loader expects before it inserts the name
    report = diagnose(with_name, saved)
    finding = only(report, "renamed")
    assert finding.count == len(with_name) == len(saved)
    assert finding.ctx["old"] == "default" and not finding.ctx["new"]
    assert "PEFT's adapter name" in finding.message
    fixed = report.plan.apply(with_name)
    assert fixed.keys() == saved.keys()
    for key, value in fixed.items():
        assert torch.equal(value, saved[key])


# -- KG202 index_shift -------------------------------------------------------------------------------------------


def test_index_shift_pipeline_stage(tiny_llama: Callable[..., Any]) -> None:
    full = tiny_llama(num_hidden_layers=8)
    model = tiny_llama(num_hidden_layers=4)
    # the second pipeline stage holds layers 4..7 under their global numbers (plus the shared weights)
    checkpoint = {k: v for k, v in full.state_dict().items() if not re.match(r"model\.layers\.[0-3]\.", k)}
    report = diagnose(checkpoint, model)
    finding = only(report, "index_shift")
    layer_keys = [k for k in checkpoint if k.startswith("model.layers.")]
    assert (finding.code, finding.count) == ("KG202", len(layer_keys))
    assert report.plan.rules == [ShiftIndex(prefix="model.layers.", offset=-4, reason="KG202")]
    assert "'model.layers.'" in finding.message and "+4" in finding.message
    truth = {k: re.sub(r"^model\.layers\.(\d+)\.", lambda m: f"model.layers.{int(m[1]) - 4}.", k) for k in layer_keys}
    load_fixed(report, checkpoint, model, truth)


# -- KG301 shape_mismatch ----------------------------------------------------------------------------------------


def test_shape_mismatch_vocabulary_resized(tiny_llama: Callable[..., Any]) -> None:
    checkpoint = tiny_llama().state_dict()
    model = tiny_llama()
    model.resize_token_embeddings(67)  # three tokens added after the checkpoint was saved
    report = diagnose(checkpoint, model)
    finding = only(report, "shape_mismatch")
    resized = [k for k, v in model.state_dict().items() if v.shape != checkpoint[k].shape]
    assert sorted(resized) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert (finding.code, finding.count) == ("KG301", 2)
    assert sorted(finding.checkpoint_keys) == sorted(resized) == sorted(finding.expected_keys)
    assert "vocabulary resized by +3" in finding.message
    assert finding.fix is None and report.plan.empty
    assert finding.hint and "resize_token_embeddings" in finding.hint
    assert report.summary.shape_mismatches == 2 and report.summary.matched == len(checkpoint) - 2


def test_shape_mismatch_num_labels_changed(tiny_bert: Callable[..., Any]) -> None:
    checkpoint = tiny_bert(num_labels=2).state_dict()
    report = diagnose(checkpoint, tiny_bert(num_labels=5))
    finding = only(report, "shape_mismatch")
    assert finding.count == 2 and sorted(finding.checkpoint_keys) == ["classifier.bias", "classifier.weight"]
    assert "number of labels changed (2 -> 5)" in finding.message
    assert report.plan.empty and kinds_of(report) == ["shape_mismatch"]


# -- KG302 transposed --------------------------------------------------------------------------------------------


def test_transposed_gpt2_conv1d(tiny_gpt2: Callable[..., Any]) -> None:
    """GPT-2's Conv1D stores [in, out]; a port built on nn.Linear expects [out, in]."""
    state = tiny_gpt2().state_dict()
    conv1d = re.compile(r".*\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
    linear_port = {k: (v.T.contiguous() if conv1d.fullmatch(k) else v) for k, v in state.items()}
    report = diagnose(state, linear_port)
    finding = only(report, "transposed")
    # square weights (attn.c_proj, [16, 16]) cannot be told apart by shape: every non-square Conv1D sibling of their
    # kind is transposed, so they are flagged with them (unsafe), rather than loading the wrong way round silently
    flipped = sorted(k for k in state if conv1d.fullmatch(k))
    square = sorted(k for k in flipped if state[k].shape[0] == state[k].shape[1])
    assert len(flipped) == 4 * 2 and len(square) == 2
    assert (finding.code, finding.severity) == ("KG302", Severity.error)
    assert sorted(finding.checkpoint_keys) == flipped and finding.count == len(flipped)
    assert sorted(finding.ctx["square"]) == square and "square" in finding.message
    assert "transposed" in finding.message
    assert finding.fix is not None and finding.fix.applicability is Applicability.unsafe
    (rule,) = finding.fix.rules
    assert isinstance(rule, Transpose) and sorted(rule.keys) == flipped
    assert rule.applicability is Applicability.unsafe
    assert report.plan.empty and rule in report.unsafe_plan.rules
    # the unsafe rule, applied as documented, gives exactly what the port expects
    fixed = apply_data_rules(report.unsafe_plan, state)
    for key in flipped:
        assert torch.equal(fixed[key], linear_port[key])


def apply_data_rules(plan: Plan, state: Mapping[str, Any]) -> dict[str, Any]:
    """Renames, then transpose / split / fuse as ``keyguard.fixes`` documents them (on the renamed keys)."""
    out = plan.apply(state)
    for rule in plan.rules:
        if isinstance(rule, Transpose):
            for key in rule.keys:
                out[key] = out[key].T
        elif isinstance(rule, Split):
            parts = torch.split(out.pop(rule.source), rule.sizes, dim=rule.dim)
            out.update(zip(rule.targets, parts))
        elif isinstance(rule, Fuse):
            tensors = [out.pop(s) for s in rule.sources]
            if rule.stack:
                runs = [tensors[i : i + rule.parts] for i in range(0, len(tensors), rule.parts)]
                out[rule.target] = torch.stack([torch.cat(run, dim=rule.dim) for run in runs])
            else:
                out[rule.target] = torch.cat(tensors, dim=rule.dim)
    return out


# -- KG303 fused_split -------------------------------------------------------------------------------------------


def fuse_llama(state: Mapping[str, Any]) -> dict[str, Any]:
    """A Llama state dict in the fused (Phi-3) layout: qkv_proj and gate_up_proj."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.endswith(("k_proj.weight", "v_proj.weight", "up_proj.weight")):
            continue
        if key.endswith("q_proj.weight"):
            parts = [state[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[key.replace("q_proj", "qkv_proj")] = torch.cat(parts)
        elif key.endswith("gate_proj.weight"):
            parts = [state[key.replace("gate_proj", p)] for p in ("gate_proj", "up_proj")]
            out[key.replace("gate_proj", "gate_up_proj")] = torch.cat(parts)
        else:
            out[key] = value
    return out


def test_fused_split_qkv_and_gate_up_into_split_model(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama()
    state = model.state_dict()
    checkpoint = fuse_llama(state)
    report = diagnose(checkpoint, model)
    assert kinds_of(report) == ["fused_split", "fused_split"]
    layers = model.config.num_hidden_layers
    qkv = next(f for f in report.findings if "'qkv_proj'" in f.message)
    gate_up = next(f for f in report.findings if "'gate_up_proj'" in f.message)
    assert qkv.count == gate_up.count == layers
    assert "3 parts" in qkv.message and "2 parts" in gate_up.message
    for finding in (qkv, gate_up):
        assert finding.code == "KG303" and finding.fix is not None
        assert finding.fix.applicability is Applicability.unsafe
        assert all(isinstance(r, Split) for r in finding.fix.rules)
    split = next(r for r in qkv.fix.rules if isinstance(r, Split) and ".0." in r.source)  # type: ignore[union-attr]
    head = model.config.hidden_size // model.config.num_attention_heads
    kv = model.config.num_key_value_heads * head
    assert split.sizes == [model.config.hidden_size, kv, kv]  # grouped-query attention: uneven parts
    assert report.plan.empty
    fixed = apply_data_rules(report.unsafe_plan, checkpoint)
    assert fixed.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(fixed[key], value), key
    model.load_state_dict(fixed, strict=True)


def test_fused_split_separate_tensors_into_fused_model(tiny_llama: Callable[..., Any]) -> None:
    state = tiny_llama().state_dict()
    fused = fuse_llama(state)
    expected = {k: TensorInfo(tuple(v.shape), "F32") for k, v in fused.items()}
    report = diagnose(state, expected)
    assert kinds_of(report) == ["fused_split", "fused_split"]
    for finding in report.findings:
        assert finding.fix is not None and all(isinstance(r, Fuse) for r in finding.fix.rules)
        assert "make up" in finding.message
    q = next(r for r in report.unsafe_plan.rules if isinstance(r, Fuse) and r.target.endswith("qkv_proj.weight"))
    assert [s.split(".")[-2] for s in q.sources] == ["q_proj", "k_proj", "v_proj"]
    fixed = apply_data_rules(report.unsafe_plan, state)
    assert fixed.keys() == fused.keys()
    for key, value in fused.items():
        assert torch.equal(fixed[key], value), key


def legacy_mixtral(state: Mapping[str, Any]) -> dict[str, Any]:
    """transformers-5 Mixtral weights in the layout of checkpoints on the Hub: `block_sparse_moe`, one w1 / w2 /
    w3 per expert."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        match = re.fullmatch(r"(model\.layers\.\d+)\.mlp\.(.+)", key)
        if match is None:
            out[key] = value
            continue
        layer, rest = match.groups()
        moe = f"{layer}.block_sparse_moe"
        if rest == "experts.gate_up_proj":
            inter = value.shape[1] // 2
            for e in range(value.shape[0]):
                out[f"{moe}.experts.{e}.w1.weight"] = value[e, :inter]
                out[f"{moe}.experts.{e}.w3.weight"] = value[e, inter:]
        elif rest == "experts.down_proj":
            for e in range(value.shape[0]):
                out[f"{moe}.experts.{e}.w2.weight"] = value[e]
        else:
            out[f"{moe}.{rest}"] = value
    return out


def test_fused_split_mixtral_experts_into_stacked_experts() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    state = model.state_dict()
    assert "model.layers.0.mlp.experts.gate_up_proj" in state  # transformers 5 stacks the experts
    checkpoint = legacy_mixtral(state)
    report = diagnose(checkpoint, model)
    rename = only(report, "renamed")
    assert (rename.ctx["old"], rename.ctx["new"]) == ("block_sparse_moe", "mlp")
    assert rename.fix is not None and rename.fix.applicability is Applicability.safe
    assert sorted(rename.checkpoint_keys) == sorted(k for k in checkpoint if k.endswith("block_sparse_moe.gate.weight"))
    fused = [f for f in report.findings if f.kind == "fused_split"]
    assert len(fused) == 2  # gate_up_proj (w1 + w3) and down_proj (w2)
    experts = [k for k in checkpoint if ".experts." in k]
    assert sorted(k for f in fused for k in f.checkpoint_keys) == sorted(experts)
    for finding in fused:
        assert "stacked-expert" in finding.message and finding.fix is not None
        assert finding.fix.applicability is Applicability.unsafe
    gate_up = next(r for r in report.unsafe_plan.rules if isinstance(r, Fuse) and r.target.endswith("gate_up_proj"))
    assert gate_up.stack and gate_up.parts == 2
    assert [s.split(".")[-2] for s in gate_up.sources[:4]] == ["w1", "w3", "w1", "w3"]
    fixed = apply_data_rules(report.unsafe_plan, checkpoint)
    assert fixed.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(fixed[key], value), key


# -- KG304 dtype_mismatch ----------------------------------------------------------------------------------------


def test_dtype_mismatch_is_a_warning(
    tiny_llama: Callable[..., Any], save_st: Callable[..., Path], tmp_path: Path, cli: Callable[..., Any]
) -> None:
    model = tiny_llama()
    half = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    report = diagnose(half, model)
    finding = only(report, "dtype_mismatch")
    assert (finding.code, finding.severity, finding.count) == ("KG304", Severity.warning, len(half))
    assert "bf16 -> f32" in finding.message and "casts" in finding.message
    assert report.ok and report.exit_code("error") == 0 and report.exit_code("warning") == 1
    ck = save_st(tmp_path / "bf16.safetensors", half)
    ref = save_st(tmp_path / "f32.safetensors", model.state_dict())
    assert cli("diagnose", ck, "--expected", ref, "--fail-on", "error").code == 0
    assert cli("diagnose", ck, "--expected", ref, "--fail-on", "warning").code == 1


# -- KG401 missing -----------------------------------------------------------------------------------------------


def test_missing_tied_lm_head_is_benign(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama(tie_word_embeddings=True)
    checkpoint = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # as save_pretrained does
    report = diagnose(checkpoint, model)
    finding = only(report, "missing")
    assert (finding.code, finding.expected_keys, finding.count) == ("KG401", ["lm_head.weight"], 1)
    assert finding.ctx["category"] == "tied" and finding.benign and "tied" in finding.benign
    assert "(tied weights)" in finding.message
    assert not report.ok and report.plan.empty


def test_missing_genuinely(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama()
    lost = ["model.layers.1.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight"]
    checkpoint = {k: v for k, v in model.state_dict().items() if k not in lost}
    report = diagnose(checkpoint, model)
    finding = only(report, "missing")
    assert (finding.severity, finding.count, sorted(finding.expected_keys)) == (Severity.error, 2, sorted(lost))
    assert finding.benign is None and finding.ctx["category"] is None
    assert "2 expected key(s) are missing" in finding.message
    assert report.summary.missing == 2 and report.plan.empty


# -- KG402 unexpected --------------------------------------------------------------------------------------------


def test_unexpected_legacy_non_persistent_and_stray(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama()
    inv_freq = model.model.rotary_emb.inv_freq
    assert "model.rotary_emb.inv_freq" not in model.state_dict()  # registered with persistent=False
    checkpoint = dict(model.state_dict())
    checkpoint["model.rotary_emb.inv_freq"] = inv_freq  # saved by code that made the buffer persistent
    checkpoint["model.layers.0.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()  # transformers < 4.38 layout
    checkpoint["optimizer_state.step"] = torch.tensor([3.0])
    report = diagnose(checkpoint, model)
    by_category = {f.ctx["category"]: f for f in report.findings}
    assert kinds_of(report) == ["unexpected"] * 3
    assert by_category["non-persistent"].checkpoint_keys == ["model.rotary_emb.inv_freq"]
    assert by_category["legacy"].checkpoint_keys == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    assert by_category[None].checkpoint_keys == ["optimizer_state.step"]
    assert by_category["non-persistent"].benign and "non-persistent" in by_category["non-persistent"].benign
    assert by_category["legacy"].benign and "legacy" in by_category["legacy"].benign
    assert by_category[None].benign is None
    assert all(f.code == "KG402" and f.count == 1 for f in report.findings)
    assert report.summary.unexpected == 3
    benign = {k for f in report.findings if f.benign for k in f.checkpoint_keys}
    model.load_state_dict({k: v for k, v in checkpoint.items() if k not in benign | {"optimizer_state.step"}})


# -- KG403 ambiguous ---------------------------------------------------------------------------------------------


class Attn(nn.Module):
    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        for name in names:
            self.add_module(name, nn.Linear(4, 4, bias=False))


class Net(nn.Module):
    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.attn = Attn(names)
        self.norm = nn.LayerNorm(4)


def test_ambiguous_same_shaped_targets_are_display_only() -> None:
    # names that no convention relates: nothing can tell the two same-shaped projections apart
    checkpoint = Net(("alpha", "beta")).state_dict()
    model = Net(("left", "right"))
    report = diagnose(checkpoint, model)
    finding = only(report, "ambiguous")
    assert (finding.code, finding.severity, finding.count) == ("KG403", Severity.error, 2)
    assert sorted(finding.checkpoint_keys) == ["attn.alpha.weight", "attn.beta.weight"]
    assert sorted(finding.expected_keys) == ["attn.left.weight", "attn.right.weight"]
    assert finding.fix is None or finding.fix.applicability is Applicability.display_only
    for key in ("attn.alpha.weight", "attn.beta.weight"):
        assert sorted(finding.ctx["candidates"][key]) == ["attn.left.weight", "attn.right.weight"]
        # never in a plan, not even the unsafe one
        assert report.plan.rename_key(key) == key and report.unsafe_plan.rename_key(key) == key
    assert report.plan.empty and report.summary.ambiguous == 2 and report.summary.fixable == 0
    assert "several" in finding.message and finding.hint is not None and "--hint" in finding.hint


def test_names_break_a_tie_of_equal_shapes_as_an_unsafe_fix() -> None:
    # q/k and query/key are published names of the same projections: the names choose, never safely
    checkpoint = Net(("q", "k")).state_dict()
    report = diagnose(checkpoint, Net(("query", "key")))
    finding = only(report, "restructured")
    assert finding.fix is not None and finding.fix.applicability is Applicability.unsafe
    assert {e["kind"] for c in finding.ctx["changes"] for e in c["evidence"]} >= {"names"}
    truth = {"attn.q.weight": "attn.query.weight", "attn.k.weight": "attn.key.weight"}
    assert report.unsafe_plan.mapping(truth) == truth
    assert report.plan.mapping(truth) == {k: k for k in truth}


def test_a_hint_decides_a_tie_for_its_whole_group() -> None:
    checkpoint = Net(("alpha", "beta")).state_dict()
    report = diagnose(checkpoint, Net(("left", "right")), hints={"attn.alpha.weight": "attn.right.weight"})
    mapping = report.plan.mapping(checkpoint)
    assert mapping["attn.alpha.weight"] == "attn.right.weight"
    assert mapping["attn.beta.weight"] == "attn.left.weight"  # the only candidate left, forced by the shapes


def test_ambiguous_candidates_include_every_true_target() -> None:
    checkpoint = Net(("one", "two", "three")).state_dict()
    report = diagnose(checkpoint, Net(("first", "second", "third")))
    finding = only(report, "ambiguous")
    truth = {"attn.one.weight": "attn.first.weight", "attn.two.weight": "attn.second.weight"}
    truth["attn.three.weight"] = "attn.third.weight"
    for key, target in truth.items():
        assert target in finding.ctx["candidates"][key], (key, finding.ctx["candidates"][key])


# -- KG404 no_overlap --------------------------------------------------------------------------------------------


def test_no_overlap_is_fatal(tiny_llama: Callable[..., Any]) -> None:
    checkpoint = small_net().state_dict()  # a different network altogether
    model = tiny_llama()
    report = diagnose(checkpoint, model)
    finding = report.findings[0]
    assert (finding.code, finding.kind, finding.severity) == ("KG404", "no_overlap", Severity.fatal)
    assert finding.count == 0 and finding.checkpoint_keys == finding.expected_keys == []
    assert report.summary.coverage_before == 0 and report.summary.coverage_after == 0
    assert "no safe plan" in finding.message
    assert not report.ok and report.exit_code("error") == 1 and report.exit_code("never") == 0
    assert sum(f.count for f in report.findings if f.kind == "missing") == len(model.state_dict())
    assert sum(f.count for f in report.findings if f.kind == "unexpected") == len(checkpoint)


# -- combinations ------------------------------------------------------------------------------------------------


def test_ddp_prefix_plus_gamma_beta(tiny_bert: Callable[..., Any]) -> None:
    model = tiny_bert().bert
    checkpoint, truth = renamed(model.state_dict(), lambda k: "module." + legacy_layernorm(k))
    report = diagnose(checkpoint, model)
    assert kinds_of(report) == ["extra_prefix", "no_overlap", "renamed", "renamed"]
    ops = [r.op for r in report.plan.rules]
    assert ops[0] == "strip_prefix" and sorted(ops[1:]) == ["rename", "rename"]
    for finding in report.findings:
        if finding.kind == "renamed":
            assert "earlier rule" in finding.message
    assert report.summary.coverage_after == 1
    load_fixed(report, checkpoint, model, truth)


def test_ddp_prefix_plus_vocabulary_resize(tiny_llama: Callable[..., Any]) -> None:
    checkpoint, _ = renamed(tiny_llama().state_dict(), lambda k: "module." + k)
    model = tiny_llama()
    model.resize_token_embeddings(70)
    report = diagnose(checkpoint, model)
    assert kinds_of(report) == ["extra_prefix", "no_overlap", "shape_mismatch"]
    shape = only(report, "shape_mismatch")
    assert sorted(shape.checkpoint_keys) == ["module.lm_head.weight", "module.model.embed_tokens.weight"]
    assert sorted(shape.expected_keys) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert "vocabulary resized by +6" in shape.message
    prefix = only(report, "extra_prefix")
    assert prefix.count == len(checkpoint) - 2
    assert report.plan.rules == [StripPrefix(prefix="module.", reason="KG101")]
    assert report.summary.fixable == len(checkpoint) - 2
    fixed = report.plan.apply(checkpoint)
    result = model.load_state_dict({k: v for k, v in fixed.items() if k not in shape.expected_keys}, strict=False)
    assert sorted(result.missing_keys) == sorted(shape.expected_keys) and not result.unexpected_keys


def test_adapter_name_plus_doubled_peft_prefix_full_state(lora_model: Any) -> None:
    """A PeftModel's whole state dict saved through a second PEFT wrapper, adapter name dropped."""
    state = lora_model.state_dict()
    checkpoint, truth = renamed(state, lambda k: "base_model.model." + k.replace(".default.weight", ".weight"))
    report = diagnose(checkpoint, lora_model)
    assert kinds_of(report) == ["extra_prefix", "no_overlap", "renamed"]
    assert report.plan.rules[0] == StripPrefix(prefix="base_model.model.", reason="KG101")
    assert "PEFT" in only(report, "extra_prefix").message
    load_fixed(report, checkpoint, lora_model, truth)


def test_adapter_name_plus_doubled_peft_prefix_adapter_only(lora_model: Any) -> None:
    from peft import get_peft_model_state_dict

    adapter = get_peft_model_state_dict(lora_model)
    checkpoint = {"base_model.model." + k: v for k, v in adapter.items()}
    report = diagnose(checkpoint, lora_model, ignore=[r"^(?!.*\.lora_)"])
    assert report.summary.coverage_after == 1
    truth = {"base_model.model." + k: re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k) for k in adapter}
    assert report.plan.mapping(checkpoint) == truth


# -- ignore ------------------------------------------------------------------------------------------------------


def test_ignore_removes_keys_on_both_sides_and_counts_them(tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama()
    checkpoint, _ = renamed(model.state_dict(), lambda k: "module." + k)
    checkpoint["module.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    ignore = [r"rotary_emb", r"(^|\.)lm_head\."]
    report = diagnose(checkpoint, model, ignore=ignore)
    assert report.summary.ignored == 2 + 1  # lm_head on both sides, the legacy buffer in the checkpoint
    assert report.summary.checkpoint == len(checkpoint) - 2
    assert report.summary.expected == len(model.state_dict()) - 1
    mentioned = {k for f in report.findings for k in f.checkpoint_keys + f.expected_keys}
    assert not {k for k in mentioned if "lm_head" in k or "rotary" in k}
    assert kinds_of(report) == ["extra_prefix", "no_overlap"]
    assert "ignored" in report.render("table")
