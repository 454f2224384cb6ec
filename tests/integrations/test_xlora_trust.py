"""The X-LoRA guard where it used to break trust: adapters that carry the base embedding (PEFT's
``save_embedding_layers``), guards in several threads, the experts' order across save and reload, and a model left
exactly as it was after a refused or interrupted build."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

import peft.tuners.xlora.model as xlora_module  # noqa: E402
from _integration_models import assert_expert_equals_file, build, forward, xlora_config  # noqa: E402

from keyguard import KeyMismatchError  # noqa: E402
from keyguard.integrations import xlora  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing:FutureWarning",
    "ignore:.*save_embedding_layers.*:UserWarning",
    "ignore:.*copying from a non-meta parameter:UserWarning",
)
ORIGINAL = xlora_module._load_adapter_into_lora_model
EMBEDDING = "model.embed_tokens"


@pytest.fixture(autouse=True)
def _original_loader_is_back() -> Any:
    yield
    assert xlora_module._load_adapter_into_lora_model is ORIGINAL


def save_embedding_adapter(folder: Path, seed: int, base: Callable[[], Any] = lambda: build("llama")) -> Path:
    """A LoRA adapter on the token embedding, saved by PEFT with the embedding itself (``save_embedding_layers``)."""
    model = base()
    torch.manual_seed(seed)
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["embed_tokens"], init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def embedding_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embedding")

    def retrained() -> Any:  # a base whose embedding was changed (new tokens trained, say)
        model = build("llama")
        with torch.no_grad():
            model.get_input_embeddings().weight.add_(0.5)
        return model

    def resized() -> Any:
        model = build("llama")
        model.resize_token_embeddings(70)
        return model

    return {
        "a": save_embedding_adapter(root / "a", 1),
        "b": save_embedding_adapter(root / "b", 2),
        "retrained": save_embedding_adapter(root / "retrained", 3, retrained),
        "resized": save_embedding_adapter(root / "resized", 4, resized),
    }


def lora_model_of(model: Any) -> Any:
    return model.base_model.lora_model


def embedding_weight(model: Any) -> Any:
    return lora_model_of(model).model.get_input_embeddings().base_layer.weight


# -- adapters saved with the base embedding ---------------------------------------------------------------------------
def test_the_saved_embedding_is_in_the_file(embedding_adapters: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    keys = load_file(str(embedding_adapters["a"] / "adapter_model.safetensors"))
    assert f"base_model.model.{EMBEDDING}.base_layer.weight" in keys


def test_embedding_experts_load_like_stock_and_are_verified(embedding_adapters: dict[str, Path]) -> None:
    experts = {"0": embedding_adapters["a"], "1": embedding_adapters["b"]}
    torch.manual_seed(7)
    stock = peft.get_peft_model(build("llama"), xlora_config("llama", experts))
    config = xlora_config("llama", experts)
    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the file's embedding equals the model's: nothing to say
        with xlora.guard() as session:
            ours = peft.get_peft_model(build("llama"), config)
    assert [e.name for e in session.experts] == ["0", "1"] and session.findings == []
    for name in experts:
        held = lora_model_of(ours).state_dict()
        assert torch.equal(
            held[f"model.{EMBEDDING}.lora_embedding_A.{name}"],
            lora_model_of(stock).state_dict()[f"model.{EMBEDDING}.lora_embedding_A.{name}"],
        )
    assert torch.equal(forward(ours).logits, forward(stock).logits)  # the same model as stock PEFT builds
    report = xlora.verify(ours, config)
    assert report.ok and [f.code for f in report.findings] == ["KG563", "KG563"], report.render()
    assert report.findings[0].ctx["count"] == 3  # lora_embedding_A, lora_embedding_B and the embedding itself


def test_an_embedding_that_differs_is_loaded_as_peft_does_and_said(embedding_adapters: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    folder = embedding_adapters["retrained"]
    saved = load_file(str(folder / "adapter_model.safetensors"))[f"base_model.model.{EMBEDDING}.base_layer.weight"]
    stock = peft.get_peft_model(build("llama"), xlora_config("llama", {"0": folder}))
    assert torch.equal(embedding_weight(stock), saved)  # stock PEFT: the file's copy replaces the model's
    with pytest.warns(UserWarning, match="KG620 adapter_base_weight_replaced"), xlora.guard() as session:
        ours = peft.get_peft_model(build("llama"), xlora_config("llama", {"0": folder}))
    assert torch.equal(embedding_weight(ours), saved)
    (found,) = session.findings
    assert found.code == "KG620" and found.expected_keys == [f"model.{EMBEDDING}.base_layer.weight"]
    assert session.experts[0].findings == (found,)
    assert "save_embedding_layers=False" in (found.hint or "")


def test_an_embedding_that_does_not_fit_is_refused_naming_cause_and_way_out(
    embedding_adapters: dict[str, Path],
) -> None:
    with pytest.raises(KeyMismatchError) as caught:
        xlora.get_peft_model(build("llama"), xlora_config("llama", {"0": embedding_adapters["resized"]}))
    message = " ".join(str(caught.value).split())
    assert "KG301" in message and f"{EMBEDDING}.base_layer.weight" in message
    assert "save_embedding_layers" in message and "resize_token_embeddings" in message
    resized = build("llama")
    resized.resize_token_embeddings(70)
    resized.config.use_cache = False
    model = xlora.get_peft_model(resized, xlora_config("llama", {"0": embedding_adapters["resized"]}))
    assert xlora.verify(model, xlora_config("llama", {"0": embedding_adapters["resized"]})).ok


# -- threads -----------------------------------------------------------------------------------------------------------
def test_guards_in_two_threads_interleaved(adapters: dict[str, Path]) -> None:
    """A enters, B enters, A exits, then B builds: B's build goes through B's guard; after both, PEFT's own loader."""
    a_in, b_in, a_out, b_done = (threading.Event() for _ in range(4))
    sessions: dict[str, Any] = {}
    errors: list[BaseException] = []

    def thread_a() -> None:
        try:
            with xlora.guard() as session:
                sessions["a"] = session
                a_in.set()
                b_in.wait(30)
            a_out.set()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def thread_b() -> None:
        try:
            a_in.wait(30)
            with xlora.guard() as session:
                sessions["b"] = session
                b_in.set()
                a_out.wait(30)
                model = peft.get_peft_model(build("llama"), xlora_config("llama", {"math": adapters["llama"]}))
                sessions["model"] = model
            b_done.set()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert b_done.is_set()
    assert [e.name for e in sessions["b"].experts] == ["math"] and sessions["a"].experts == []
    assert_expert_equals_file(lora_model_of(sessions["model"]), "math", adapters["llama"])


def test_a_build_without_a_guard_in_another_thread_is_stock(adapters: dict[str, Path]) -> None:
    entered, built = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def guarded() -> None:
        with xlora.guard() as session:
            results["session"] = session
            entered.set()
            built.wait(120)

    def unguarded() -> None:
        entered.wait(30)
        try:
            results["model"] = peft.get_peft_model(build("llama"), xlora_config("llama", {"math": adapters["llama"]}))
        finally:
            built.set()

    threads = [threading.Thread(target=guarded), threading.Thread(target=unguarded)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["session"].experts == []  # nothing went through the other thread's session
    assert "0" in lora_model_of(results["model"]).peft_config  # stock numbering: PEFT's own loader ran
    assert "math" not in lora_model_of(results["model"]).peft_config


def test_many_threads_entering_and_leaving_restore_the_loader() -> None:
    barrier = threading.Barrier(8)

    def churn(seed: int) -> None:
        barrier.wait(30)
        for i in range(50):
            with xlora.guard():
                if (seed + i) % 3 == 0:
                    with xlora.guard():
                        assert xlora_module._load_adapter_into_lora_model is not ORIGINAL

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert xlora_module._load_adapter_into_lora_model is ORIGINAL


# -- the experts' order across save and reload ---------------------------------------------------------------------
def test_a_saved_model_reloads_with_every_expert_on_its_classifier_output(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    experts = {"math": adapters["llama"], "code": adapters["llama_2"]}
    config = xlora_config("llama", experts)
    torch.manual_seed(3)
    model = xlora.get_peft_model(build("llama"), config)
    assert list(config.adapters) == ["code", "math"]  # the order PEFT saves
    expected = forward(model).logits
    model.save_pretrained(tmp_path / "saved")
    with xlora.guard():
        reloaded = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "saved")
    assert lora_model_of(reloaded).active_adapters == ["code", "math"]
    assert torch.equal(forward(reloaded).logits, expected)
    assert xlora.verify(reloaded, config).ok


def test_verify_catches_experts_paired_with_other_classifier_outputs(adapters: dict[str, Path], tmp_path: Path) -> None:
    experts = {"math": adapters["llama"], "code": adapters["llama_2"]}
    with pytest.warns(UserWarning, match="KG622"), xlora.guard():  # built in the user's order, as stock PEFT would
        model = peft.get_peft_model(build("llama"), xlora_config("llama", experts))
    assert xlora.verify(model, xlora_config("llama", experts)).errors() == []  # as built: fine, but see KG622
    model.save_pretrained(tmp_path / "saved")
    with xlora.guard():
        reloaded = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "saved")
    report = xlora.verify(reloaded, xlora_config("llama", experts))
    assert [f.code for f in report.errors()] == ["KG621"], report.render()
    assert report.errors()[0].ctx == {
        "adapter": None,
        "model_order": ["code", "math"],
        "config_order": ["math", "code"],
    }


# -- a failed build leaves the model as it was -----------------------------------------------------------------------
def fingerprint(model: Any) -> dict[str, Any]:
    """Everything a build may change: the module tree (with each module's identity), attributes, flags, tensors."""
    return {
        "modules": [(name, type(m).__name__, id(m)) for name, m in model.named_modules()],
        "attributes": sorted(vars(model)),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "training": [m.training for m in model.modules()],
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["modules"] == before["modules"]
    assert after["attributes"] == before["attributes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] and after["training"] == before["training"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key


def test_a_refused_later_expert_leaves_the_model_as_it_was(adapters: dict[str, Path]) -> None:
    model = build("llama")
    before = fingerprint(model)
    experts = {"a": adapters["llama"], "b": adapters["llama_missing"]}  # the second one lacks a lora_B
    with pytest.raises(KeyMismatchError, match="KG401"):
        xlora.get_peft_model(model, xlora_config("llama", experts))
    assert_same(before, fingerprint(model))
    assert not hasattr(model, "peft_config")
    assert torch.equal(forward(model).logits, forward(build("llama")).logits)


def test_a_refused_embedding_expert_puts_the_embedding_back(embedding_adapters: dict[str, Path], adapters: Any) -> None:
    model = build("llama")
    before = fingerprint(model)
    experts = {"a": embedding_adapters["retrained"], "b": adapters["llama_missing"]}
    with pytest.raises(KeyMismatchError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xlora.get_peft_model(model, xlora_config("llama", experts))
    assert_same(before, fingerprint(model))


def test_ctrl_c_in_a_build_leaves_the_model_as_it_was(adapters: dict[str, Path]) -> None:
    model = build("llama")
    before = fingerprint(model)
    layer = model.model.layers[1].self_attn.v_proj

    def interrupt(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    handle = layer.register_load_state_dict_pre_hook(interrupt)  # fires while PEFT loads an expert into the layer
    before = fingerprint(model)
    with pytest.raises(KeyboardInterrupt):
        xlora.get_peft_model(model, xlora_config("llama", {"a": adapters["llama"], "b": adapters["llama_2"]}))
    assert_same(before, fingerprint(model))
    handle.remove()


def test_a_guard_around_peft_removes_what_it_loaded(adapters: dict[str, Path]) -> None:
    from peft.tuners.lora import LoraLayer

    model = build("llama")
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyMismatchError), xlora.guard():
        peft.get_peft_model(model, xlora_config("llama", {"a": adapters["llama"], "b": adapters["llama_missing"]}))
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert model.state_dict().keys() == tensors.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())
