"""Remote sources (hf://, https://) against a real HTTP server on 127.0.0.1 that serves real files with Range
support, the way the Hub serves them; nothing here goes further than the loopback address."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("huggingface_hub")

from _http_server import serve  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import keyguard  # noqa: E402
from keyguard import SourceError  # noqa: E402


def _tensors(prefix: str = "") -> dict[str, Any]:
    torch.manual_seed(0)
    return {f"{prefix}layers.{i}.{name}": torch.randn(8, 8) for i in range(4) for name in ("q.weight", "k.weight")}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Hub-like server over ``tmp_path/hub`` (``org/<repo>/...``), with the environment pointing at it."""
    root = tmp_path / "hub"
    (root / "org").mkdir(parents=True)
    with serve(root, private={("org", "private")}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        import huggingface_hub.constants as constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        server.root_dir = root
        yield server


def _repo(hub: Any, name: str) -> Path:
    folder = Path(hub.root_dir) / "org" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_hf_repo_reads_only_the_header(hub: Any) -> None:
    repo = _repo(hub, "model")
    save_file(_tensors(), str(repo / "model.safetensors"))
    local = keyguard.read_keys(repo / "model.safetensors")
    keys = keyguard.read_keys("hf://org/model")
    assert dict(keys) == dict(local)
    assert keys.location == "hf://org/model/model.safetensors"
    header = 8 + int.from_bytes((repo / "model.safetensors").read_bytes()[:8], "little")
    assert hub.served.bytes == header  # the 8-byte length, then the header; no tensor byte
    assert f"read remotely: {header:,} bytes" in keys.notes[-1]


def test_hf_sharded_checkpoint_revision_and_subfolder(hub: Any, tmp_path: Path) -> None:
    repo = _repo(hub, "sharded") / "sub"
    repo.mkdir()
    tensors = _tensors("model.")
    names = sorted(tensors)
    index = {"metadata": {}, "weight_map": {}}
    for part, chunk in enumerate((names[:4], names[4:])):
        shard = f"model-0000{part + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in chunk}, str(repo / shard))
        index["weight_map"].update(dict.fromkeys(chunk, shard))
    (repo / "model.safetensors.index.json").write_text(json.dumps(index))
    keys = keyguard.read_keys("hf://org/sharded@v1.0/sub")
    assert keys.format == "safetensors-sharded"
    assert dict(keys) == dict(keyguard.read_keys(repo))
    assert keys.location == "hf://org/sharded@v1.0/sub/model.safetensors.index.json"
    total = sum(p.stat().st_size for p in repo.glob("*.safetensors"))
    assert hub.served.bytes < total / 2
    assert any("/resolve/v1.0/sub/model-00001-of-00002.safetensors" in p for p in hub.served.paths)


def test_https_urls_to_a_file_and_an_index(hub: Any) -> None:
    repo = _repo(hub, "plain")
    save_file(_tensors(), str(repo / "weights.safetensors"))
    (repo / "w.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(_tensors(), "weights.safetensors")}))
    direct = keyguard.read_keys(f"{hub.url}/org/plain/weights.safetensors")
    assert direct.location == f"{hub.url}/org/plain/weights.safetensors"
    via_index = keyguard.read_keys(f"{hub.url}/org/plain/w.index.json")
    assert dict(via_index) == dict(direct)


def test_a_server_that_ignores_ranges_is_not_read_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    tensors = {"big": torch.zeros(4096, 1024)}  # 16 MiB
    save_file(tensors, str(tmp_path / "big.safetensors"))
    with serve(tmp_path, hub=False, ranges=False) as server:
        keys = keyguard.read_keys(f"{server.url}/big.safetensors")
    assert keys["big"].shape == (4096, 1024)
    assert server.served.requests == 2
    received = int(keys.notes[-1].split()[2].replace(",", ""))  # "read remotely: N bytes ..."
    size = (tmp_path / "big.safetensors").stat().st_size
    assert received < size / 8  # each response cut off after the bytes asked for (plus at most a chunk)


def test_private_repo_needs_the_token_from_the_environment(hub: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(hub, "private")
    save_file(_tensors(), str(repo / "model.safetensors"))
    with pytest.raises(SourceError, match="access denied") as info:
        keyguard.read_keys("hf://org/private/model.safetensors")
    assert info.value.problem == "unauthorized"
    monkeypatch.setenv("HF_TOKEN", "secret")
    assert len(keyguard.read_keys("hf://org/private/model.safetensors")) == 8


def test_the_token_goes_to_the_hub_endpoint_only(hub: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from keyguard.sources._remote import _Client

    monkeypatch.setenv("HF_TOKEN", "secret")
    client = _Client("hf://org/model")
    sent = client._auth(f"{hub.url}/org/model/resolve/main/x")
    assert {k.lower(): v for k, v in sent.items()} == {"authorization": "Bearer secret"}
    assert client._auth("https://elsewhere.invalid/x") == {}


def test_offline_and_unreachable_are_clear_errors(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = cli("inspect", "hf://org/model")
    assert offline.code == 2
    assert "offline mode" in offline.err and "Traceback" not in offline.err
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    unreachable = cli("inspect", "hf://org/model")
    assert unreachable.code == 2
    assert "cannot be reached" in unreachable.err


def test_a_broken_remote_header_names_the_url(hub: Any) -> None:
    repo = _repo(hub, "broken")
    (repo / "model.safetensors").write_bytes((200).to_bytes(8, "little") + b"{not json" + b" " * 191)
    with pytest.raises(SourceError) as info:
        keyguard.read_keys("hf://org/broken")
    assert info.value.path == "hf://org/broken/model.safetensors"
    assert info.value.problem == "header-not-json"


def test_cli_inspect_diagnose_and_fix_on_remote_sources(cli: Any, hub: Any, tmp_path: Path) -> None:
    save_file(_tensors(), str(_repo(hub, "base") / "model.safetensors"))
    save_file(_tensors("module."), str(_repo(hub, "ddp") / "model.safetensors"))
    inspected = cli("inspect", "hf://org/base")
    assert inspected.code == 0 and "read remotely" in inspected.out
    diagnosed = cli("diagnose", "hf://org/ddp", "--expected", "hf://org/base")
    assert diagnosed.code == 1 and "KG101" in diagnosed.out
    refused = cli("fix", "hf://org/ddp", "--expected", "hf://org/base", "-o", tmp_path / "out.safetensors")
    assert refused.code == 2 and "download the checkpoint first" in refused.err


def test_check_adapter_where_the_adapters_live(cli: Any, hub: Any, tiny_llama: Any, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    base.save_pretrained(_repo(hub, "base"))
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(_repo(hub, "adapter"))
    result = cli("check-adapter", "hf://org/adapter", "--base", "hf://org/base", "--format", "json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["checkpoint"]["location"] == "hf://org/adapter"
    assert str(tmp_path) not in result.out and "keyguard-remote-" not in result.out
    total = sum(p.stat().st_size for p in Path(hub.root_dir).rglob("*") if p.is_file())
    assert hub.served.bytes < total / 4
    values = cli("check-adapter", "hf://org/adapter", "--base", "hf://org/base", "--check-values")
    assert values.code == 2 and "download the adapter" in values.err


def test_reading_a_remote_safetensors_does_not_import_torch(hub: Any, offline_env: dict[str, str]) -> None:
    save_file(_tensors(), str(_repo(hub, "light") / "model.safetensors"))
    env = {**offline_env, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub.url}
    code = (
        "import sys, keyguard; keys = keyguard.read_keys('hf://org/light'); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(len(keys))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "8"
