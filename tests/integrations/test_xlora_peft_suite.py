"""PEFT's own X-LoRA test scenarios (``tests/test_xlora.py`` of huggingface/peft, the 0.20-0.21 series), rewritten
for tiny models built from configs and run offline: every scenario runs with stock PEFT and again with keyguard's
guard around the build, and must come out the same. A regression of the guard against PEFT's suite shows here.

PEFT's versions build ``facebook/opt-125m``-like models from the Hub and tokenise "Python is a"; here a tiny OPT (and
a tiny Gemma 3 for the scaled embedding) are built from configs, the prompt is three fixed token ids, and generation
runs its full length (``min_new_tokens``) so that the counts PEFT's tests check do not depend on an early EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import peft.tuners.xlora.model as xlora_module  # noqa: E402
from peft.tuners.xlora.layer import XLoraLayer  # noqa: E402

from keyguard.integrations import xlora  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing:FutureWarning",
    "ignore:.*save_embedding_layers.*:UserWarning",
    "ignore:.*generation flags are not valid.*:UserWarning",
)
NUM_LORAS = 4
PROMPT = [[5, 17, 9]]
ORIGINAL = xlora_module._load_adapter_into_lora_model


def opt() -> Any:
    """A tiny OPT causal LM, the same weights every time, with the cache off (X-LoRA requires it)."""
    config = transformers.OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
        use_cache=False,
    )
    torch.manual_seed(0)
    return transformers.OPTForCausalLM(config).eval()


def gemma3() -> Any:
    """A tiny Gemma 3 causal LM: its token embedding scales its output by ``embed_scale``."""
    config = transformers.Gemma3TextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=16,
        use_cache=False,
    )
    torch.manual_seed(0)
    return transformers.Gemma3ForCausalLM(config).eval()


def save_loras(root: Path, targets: list[list[str]], base: Callable[[], Any] = opt) -> list[Path]:
    folders = []
    for i, modules in enumerate(targets, start=1):
        torch.manual_seed(i)
        config = peft.LoraConfig(task_type="CAUSAL_LM", target_modules=modules, init_lora_weights=False)
        folder = root / f"checkpoint-{i}"
        peft.get_peft_model(base(), config).save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run thousands of small matrix products: one torch thread is several times faster than two that
    contend with the other test worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four LoRA adapters, the last one with other target modules (as in PEFT's suite)."""
    targets = [["q_proj", "v_proj"]] * (NUM_LORAS - 1) + [["k_proj", "q_proj", "v_proj"]]
    return save_loras(tmp_path_factory.mktemp("lora"), targets)


@pytest.fixture(scope="module")
def embedding_loras(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four LoRA adapters on the token embedding: PEFT saves the embedding with each (``save_embedding_layers``)."""
    return save_loras(tmp_path_factory.mktemp("lora_embedding"), [["embed_tokens"]] * NUM_LORAS)


@pytest.fixture(params=["stock", "keyguard"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each scenario runs twice: with stock PEFT, and with keyguard's guard around every X-LoRA build."""
    yield request.param
    assert xlora_module._load_adapter_into_lora_model is ORIGINAL


def guarded(mode: str) -> AbstractContextManager[Any]:
    return xlora.guard() if mode == "keyguard" else nullcontext()


def config_for(base: Any, folders: list[Path], **options: Any) -> Any:
    return peft.XLoraConfig(
        task_type="CAUSAL_LM",
        hidden_size=base.config.hidden_size,
        xlora_depth=8,
        adapters={str(i): str(folder) for i, folder in enumerate(folders)},
        **options,
    )


def xlora_model(mode: str, folders: list[Path], base: Callable[[], Any] = opt, **options: Any) -> Any:
    model = base()
    torch.manual_seed(42)  # the X-LoRA classifier's initialisation: the same in both modes
    with guarded(mode):
        return peft.get_peft_model(model, config_for(model, folders, **options))


def generate(model: Any, new_tokens: int = 32) -> Any:
    inputs = torch.tensor(PROMPT)
    with torch.no_grad():
        return model.generate(input_ids=inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def stock_outcome(scenario: Callable[[str], Any]) -> Any:
    """What a scenario gives with stock PEFT, to compare keyguard's run with."""
    return scenario("stock")


# -- the scenarios ----------------------------------------------------------------------------------------------------
def test_functional(mode: str, loras: list[Path]) -> None:
    def run(m: str) -> Any:
        model = xlora_model(m, loras)
        model.enable_scalings_logging()
        outputs = generate(model)
        assert torch.isfinite(outputs).all()
        return outputs

    assert torch.equal(run(mode), stock_outcome(run))


def test_forward_hooks_are_cleaned_up(mode: str, loras: list[Path]) -> None:
    model = xlora_model(mode, loras)
    generate(model, 10)
    first = len(model.base_model.model.model.decoder.layers[0].self_attn.k_proj._forward_pre_hooks)
    generate(model, 10)
    second = len(model.base_model.model.model.decoder.layers[0].self_attn.k_proj._forward_pre_hooks)
    assert first == second == 0


def test_scalings_logging_methods(mode: str, loras: list[Path]) -> None:
    model = xlora_model(mode, loras)
    model.enable_scalings_logging()
    assert torch.isfinite(generate(model)).all()
    assert model.get_latest_scalings() is not None
    assert 32 + 3 >= len(model.get_scalings_log()) > 0
    model.disable_scalings_logging()
    assert torch.isfinite(generate(model)).all()
    assert 32 >= len(model.get_scalings_log()) > 0
    bucketed = model.get_bucketed_scalings_log()
    assert len(bucketed) == 32  # one bucket per generated token: no cache
    for length, (positions, scalings) in bucketed.items():
        assert len(positions) == len(scalings) == 1 and positions[0] == length - len(PROMPT[0])
    model.clear_scalings_log()
    assert len(model.get_scalings_log()) == 0


def test_misc_methods(mode: str, loras: list[Path]) -> None:
    model = xlora_model(mode, loras)
    model.set_global_scaling_weight(1.5)
    assert model.internal_xlora_classifier.config.global_scaling_weight == 1.5
    assert model.get_global_scaling_weight() == 1.5
    assert torch.isfinite(generate(model)).all()
    assert str(model)


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pickle"])
def test_save_load_functional(mode: str, loras: list[Path], tmp_path: Path, safe_serialization: bool) -> None:
    model = xlora_model(mode, loras)
    before = generate(model)
    model.save_pretrained(tmp_path / "saved", safe_serialization=safe_serialization)
    del model
    with guarded(mode):
        reloaded = peft.PeftModel.from_pretrained(opt(), tmp_path / "saved", safe_serialization=safe_serialization)
    after = generate(reloaded)
    assert torch.isfinite(after).all() and torch.equal(after, before)


def test_topk_lora(mode: str, loras: list[Path]) -> None:
    model = xlora_model(mode, loras)
    model.set_topk_lora(2)
    assert model.internal_xlora_classifier.config.top_k_lora == 2
    assert torch.isfinite(generate(model)).all()


def test_softmax_topk(mode: str, loras: list[Path]) -> None:
    def run(m: str) -> Any:
        model = xlora_model(m, loras)
        classifier_config = model.internal_xlora_classifier.config
        classifier_config.top_k_lora = 2
        classifier_config.enable_softmax = False
        classifier_config.enable_softmax_topk = True
        outputs = generate(model)
        assert torch.isfinite(outputs).all()
        return outputs

    assert torch.equal(run(mode), stock_outcome(run))


def test_set_override_scaling_pass_value(mode: str, loras: list[Path]) -> None:
    model = xlora_model(mode, loras)
    classifier = model.internal_xlora_classifier
    assert classifier.override_scaling_pass_value == 0.0
    model.set_scaling_pass_value(2)
    assert classifier.override_scaling_pass_value == classifier.config.scaling_pass_value == 2
    model.set_scaling_pass_value(None)
    assert classifier.override_scaling_pass_value == classifier.config.scaling_pass_value == 1 / NUM_LORAS


def test_functional_layerwise(mode: str, loras: list[Path]) -> None:
    def run(m: str) -> Any:
        model = xlora_model(m, loras, layerwise_scalings=True)
        model.enable_scalings_logging()
        outputs = generate(model)
        assert torch.isfinite(outputs).all()
        return outputs

    assert torch.equal(run(mode), stock_outcome(run))


def test_disable_adapter(mode: str, loras: list[Path]) -> None:
    model = xlora_model(mode, loras)
    model.enable_scalings_logging()
    with model.disable_adapter():
        disabled = generate(model)
    enabled = generate(model)
    assert torch.isfinite(disabled).all() and torch.isfinite(enabled).all()
    assert not torch.equal(enabled, disabled)


def test_functional_embedding(mode: str, embedding_loras: list[Path]) -> None:
    def run(m: str) -> Any:
        outputs = generate(xlora_model(m, embedding_loras))
        assert torch.isfinite(outputs).all()
        return outputs

    assert torch.equal(run(mode), stock_outcome(run))


def test_disable_adapter_matches_base_model_embedding(mode: str, embedding_loras: list[Path]) -> None:
    """With the adapters disabled, the embedding experts' X-LoRA model computes what the base model computes."""
    base = opt()
    with torch.no_grad():
        expected = base(input_ids=torch.tensor(PROMPT)).logits
    model = xlora_model(mode, embedding_loras)
    with model.disable_adapter(), torch.no_grad():
        disabled = model(input_ids=torch.tensor(PROMPT)).logits
    with torch.no_grad():
        enabled = model(input_ids=torch.tensor(PROMPT)).logits
    assert torch.allclose(disabled, expected)
    assert not torch.allclose(enabled, expected)


def test_xlora_loading_valid(mode: str, loras: list[Path]) -> None:
    """Each expert's weights are the file's (PEFT's version loads the same adapter twice from the Hub)."""
    from safetensors.torch import load_file

    folders = [loras[0], loras[0]]
    model = xlora_model(mode, folders, xlora_size=2048, layerwise_scalings=True, xlora_dropout_p=0.2)
    stored = load_file(str(loras[0] / "adapter_model.safetensors"))
    held = model.base_model.lora_model.model.model.decoder.layers[0].self_attn.q_proj.lora_A["0"].weight
    assert torch.allclose(held, stored["base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight"])


def test_scalings_storage(mode: str, loras: list[Path]) -> None:
    model = xlora_model(mode, loras)
    model.enable_scalings_logging()
    generate(model, 10)
    latest = model.get_latest_scalings()
    assert isinstance(latest, torch.Tensor) and torch.isfinite(latest).all()


def test_per_token_normalization_with_softmax_topk(
    mode: str, loras: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = xlora_model(mode, loras)
    classifier_config = model.internal_xlora_classifier.config
    classifier_config.top_k_lora = 2
    classifier_config.enable_softmax = False
    classifier_config.enable_softmax_topk = True
    seen: list[Any] = []
    original = XLoraLayer.get_maybe_topk_scalings

    def observed(self: Any, scalings: Any) -> Any:
        result = original(self, scalings)
        if getattr(model, "internal_xlora_scalings", None) is not None:
            seen.append(result)
        return result

    monkeypatch.setattr(XLoraLayer, "get_maybe_topk_scalings", observed)
    model.enable_scalings_logging()
    generate(model, 1)
    assert seen
    for scaling in seen:
        sums = scaling.sum(dim=-1)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


def test_xlora_embed_scale_is_applied(mode: str, tmp_path: Path) -> None:
    """X-LoRA's embedding layer keeps the base embedding's ``embed_scale`` (Gemma 3 scales its embeddings)."""
    folders = save_loras(tmp_path, [["embed_tokens"]] * 2, base=gemma3)
    model = xlora_model(mode, folders, base=gemma3)
    original = model.base_model.lora_model.model.get_input_embeddings().get_base_layer()
    embedding = model.base_model.model.get_input_embeddings()
    tokens = torch.arange(10)
    with torch.no_grad():
        assert (embedding(tokens).abs().max(0)[0] < 100.0).all()
        original.embed_scale.fill_(10000.0)
        assert (embedding(tokens).abs().max(0)[0] > 100.0).all()
        original.embed_scale.fill_(0)
        assert (embedding(tokens) == 0.0).all()
