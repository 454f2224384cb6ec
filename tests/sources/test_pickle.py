"""PyTorch pickles: read with ``weights_only=True`` only, containers unwrapped, code execution refused."""

from __future__ import annotations

import builtins
import os
import random
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from keyguard import SourceError, UnsafePickleError  # noqa: E402
from keyguard.sources import read_keys, read_pickle  # noqa: E402

FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


def save(obj: Any, path: Path, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def small_state() -> OrderedDict[str, Any]:
    return OrderedDict(
        [
            ("encoder.weight", torch.randn(6, 4)),
            ("encoder.bias", torch.zeros(6, dtype=torch.float16)),
            ("steps", torch.tensor(3, dtype=torch.int64)),
            ("mask", torch.ones(2, 2, dtype=torch.bool)),
        ]
    )


@FORMATS
def test_plain_state_dict(tmp_path: Path, legacy: bool) -> None:
    path = save(small_state(), tmp_path / "weights.pt", legacy)
    keys = read_keys(path)
    assert keys.format == "torch-pickle"
    assert keys.location == str(path)
    assert keys.unwrapped is None
    assert keys.files == ("weights.pt",)
    assert list(keys) == ["encoder.weight", "encoder.bias", "steps", "mask"]
    assert {k: (v.shape, v.dtype) for k, v in keys.items()} == {
        "encoder.weight": ((6, 4), "F32"),
        "encoder.bias": ((6,), "F16"),
        "steps": ((), "I64"),
        "mask": ((2, 2), "BOOL"),
    }
    assert all(info.file == "weights.pt" for info in keys.values())
    assert keys.notes == ()
    assert keys.tied == ()


@FORMATS
def test_real_model_state_dict_with_tied_weights(tmp_path: Path, tiny_gpt2: Callable[..., Any], legacy: bool) -> None:
    model = tiny_gpt2()
    path = save(model.state_dict(), tmp_path / "pytorch_model.bin", legacy)
    keys = read_keys(tmp_path)  # found by its conventional name
    assert list(keys) == list(model.state_dict())
    assert [set(group) for group in keys.tied] == [{"transformer.wte.weight", "lm_head.weight"}]
    assert keys.location == str(path)


@FORMATS
def test_same_tensor_under_two_names_is_tied(tmp_path: Path, legacy: bool) -> None:
    shared = torch.randn(5, 3)
    other = torch.randn(5, 3)
    state = {"a": shared, "b": other, "c": shared, "view": shared[1:]}
    keys = read_keys(save(state, tmp_path / "t.pt", legacy))
    assert keys.tied == (("a", "c"),)
    assert keys.tied_to() == {"c": "a"}
    assert keys["view"].shape == (4, 3)


LIGHTNING = {
    "epoch": 3,
    "global_step": 1200,
    "pytorch-lightning_version": "2.4.0",
    "state_dict": None,  # filled per test
    "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 3}}}},
    "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
    "optimizer_states": [
        {
            "state": {0: {"step": torch.tensor(1200.0), "exp_avg": torch.zeros(6, 4)}},
            "param_groups": [{"lr": 1e-3, "params": [0, 1]}],
        }
    ],
    "lr_schedulers": [{"last_epoch": 3}],
    "hparams_name": "kwargs",
    "hyper_parameters": {"hidden": 4, "name": "tiny"},
}


@FORMATS
def test_lightning_checkpoint(tmp_path: Path, legacy: bool) -> None:
    ckpt = dict(LIGHTNING, state_dict=small_state())
    keys = read_keys(save(ckpt, tmp_path / "last.ckpt", legacy))
    assert keys.unwrapped == "state_dict"
    assert list(keys) == list(small_state())
    assert "PyTorch Lightning checkpoint" in keys.notes


@pytest.mark.parametrize("name", ["model", "module", "model_state_dict", "net"])
def test_single_container_is_unwrapped(tmp_path: Path, name: str) -> None:
    keys = read_keys(save({name: small_state(), "epoch": 7, "args": {"lr": 0.1}}, tmp_path / "c.pth"))
    assert keys.unwrapped == name
    assert list(keys) == list(small_state())


def test_model_and_ema_prefers_model_and_notes_the_other(tmp_path: Path) -> None:
    ema = OrderedDict((k, torch.zeros(1, *v.shape)) for k, v in small_state().items())
    path = save({"model": small_state(), "model_ema": ema, "epoch": 1}, tmp_path / "c.pt")
    keys = read_keys(path)
    assert keys.unwrapped == "model"
    assert keys["encoder.weight"].shape == (6, 4)
    assert any("'model_ema'" in note and "--container" in note for note in keys.notes)

    chosen = read_keys(path, container="model_ema")
    assert chosen.unwrapped == "model_ema"
    assert chosen["encoder.weight"].shape == (1, 6, 4)
    assert read_pickle(path, container="model_ema").tensors == chosen.tensors


@FORMATS
def test_nested_containers_are_unwrapped(tmp_path: Path, legacy: bool) -> None:
    path = save({"model": {"module": small_state()}, "optimizer": {"lr": 0.1}}, tmp_path / "ds.pt", legacy)
    keys = read_keys(path)
    assert keys.unwrapped == "model/module"
    assert list(keys) == list(small_state())
    assert read_keys(path, container="model/module").tensors == keys.tensors


def test_three_levels_deep(tmp_path: Path) -> None:
    path = save({"state_dict": {"model": {"module": small_state()}}}, tmp_path / "deep.pt")
    keys = read_keys(path)
    assert keys.unwrapped == "state_dict/model/module"
    assert len(keys) == 4


def test_container_argument_errors(tmp_path: Path) -> None:
    path = save({"model": small_state(), "meta": {"name": "x"}}, tmp_path / "c.pt")
    with pytest.raises(SourceError) as info:
        read_keys(path, container="model_ema")
    assert info.value.problem == "no-such-container"
    with pytest.raises(SourceError) as info:
        read_keys(path, container="meta")
    assert info.value.problem == "no-such-container"
    assert "does not hold tensors" in str(info.value)
    with pytest.raises(SourceError) as info:
        read_keys(path, container="model/deeper")
    assert info.value.problem == "no-such-container"


def test_top_level_tensors_win_over_containers(tmp_path: Path) -> None:
    state = small_state()
    state["model"] = {"inner": torch.zeros(1)}  # a plain state dict that happens to have a key named "model"
    keys = read_keys(save(dict(state), tmp_path / "sd.pt"))
    assert keys.unwrapped is None
    assert "encoder.weight" in keys
    assert any("ignored 1 non-tensor entry: 'model'" in note for note in keys.notes)


def test_non_tensor_entries_are_ignored_with_a_note(tmp_path: Path) -> None:
    state = dict(small_state(), version=2, name="tiny", config={"a": 1}, extra=[1, 2])
    keys = read_keys(save(state, tmp_path / "mixed.pt"))
    assert set(keys) == set(small_state())
    (note,) = keys.notes
    assert note.startswith("ignored 4 non-tensor entries: 'version', 'name', 'config' and 1 more")


def test_extra_state_entries_stay_keys(tmp_path: Path) -> None:
    # torch saves whatever Module.get_extra_state() returns under "<prefix>_extra_state", and a strict load
    # requires that key back; it is a key with an unknown shape, not junk to ignore
    state = {"layer.weight": torch.zeros(2, 2), "layer._extra_state": {"scale": 1.5}}
    keys = read_keys(save(state, tmp_path / "x.pt"))
    assert set(keys) == {"layer.weight", "layer._extra_state"}
    assert keys["layer._extra_state"].shape is None
    assert keys.notes == ()


def test_no_state_dict_anywhere(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read_keys(save({"weights": {"a": torch.zeros(1)}, "epoch": 1}, tmp_path / "odd.pt"))
    assert info.value.problem == "no-state-dict"
    assert "'weights'" in str(info.value)
    assert "--container" in str(info.value)
    # ...but naming it works
    assert read_keys(tmp_path / "odd.pt", container="weights").unwrapped == "weights"


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read_keys(save([torch.zeros(1)], tmp_path / "list.pt"))
    assert info.value.problem == "not-a-state-dict"
    assert "list" in str(info.value)


def test_only_non_tensors(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read_keys(save({"model": {"a": 1}, "b": 2}, tmp_path / "none.pt"))
    assert info.value.problem == "no-state-dict"


# -- refusing code ------------------------------------------------------------------------------------------------


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class WritesFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@FORMATS
@pytest.mark.parametrize(("payload", "wanted"), [(RunsShell, "system"), (WritesFile, "exec")])
def test_code_execution_pickle_is_refused(tmp_path: Path, legacy: bool, payload: type, wanted: str) -> None:
    marker = tmp_path / "PWNED"
    path = save({"weight": torch.zeros(2), "evil": payload(marker)}, tmp_path / "evil.pt", legacy)
    with pytest.raises(UnsafePickleError) as info:
        read_keys(path)
    assert info.value.problem == "unsafe-pickle"
    assert info.value.path == str(path)
    assert wanted in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_inst_opcode_pickle_is_refused(tmp_path: Path) -> None:
    # protocol 0's INST opcode imports and calls in one instruction, without GLOBAL or REDUCE
    marker = tmp_path / "PWNED"
    path = tmp_path / "inst.pt"
    path.write_bytes(b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.")
    with pytest.raises(UnsafePickleError) as info:
        read_keys(path)
    assert info.value.problem == "unsafe-pickle"
    assert "'os.system'" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(6))
def test_hand_made_pickles_of_every_protocol_are_refused(tmp_path: Path, protocol: int) -> None:
    # weights_only stops at protocol 0's text instructions and protocol 4's FRAME before it sees the import:
    # the refusal must still say that the file asks for code, not that it is merely broken
    import pickle

    marker = tmp_path / "PWNED"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"weight": RunsShell(marker)}, protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
        read_keys(path)
    assert info.value.ctx["global_name"] in {"posix.system", "nt.system", "os.system"}
    assert not marker.exists()


def test_zip_checkpoint_with_a_protocol_4_payload(tmp_path: Path) -> None:
    import pickle
    import zipfile

    marker = tmp_path / "PWNED"
    path = save(small_state(), tmp_path / "ok.pt")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    (pkl,) = [name for name in members if name.endswith("data.pkl")]
    members[pkl] = pickle.dumps({"weight": RunsShell(marker)}, protocol=4)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(UnsafePickleError):
        read_keys(evil)
    assert not marker.exists()


# -- broken files -------------------------------------------------------------------------------------------------


@FORMATS
def test_truncated_pickle(tmp_path: Path, legacy: bool) -> None:
    whole = save(small_state(), tmp_path / "whole.pt", legacy).read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceError) as info:
        read_keys(path)
    assert type(info.value) is SourceError
    assert info.value.problem == "corrupted-pickle"
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content",
    # seeded: about 1 in 20 random byte strings starts with an opcode that asks for code (an unsafe-pickle refusal)
    [random.Random(0).randbytes(300), b"this is a text file, not a checkpoint\n" * 4, b"PK\x03\x04" + b"\x00" * 60],
    ids=["random", "text", "zip-magic"],
)
def test_garbage_with_a_checkpoint_suffix(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(SourceError) as info:
        read_keys(path)
    # broken bytes are not a refused request for code
    assert type(info.value) is SourceError, info.value
    assert info.value.problem == "corrupted-pickle"
    assert str(info.value).startswith(f"{path}: is not a readable PyTorch checkpoint")


@FORMATS
def test_damaged_files_fail_cleanly(tmp_path: Path, legacy: bool) -> None:
    import random

    rng = random.Random(1234)
    whole = save(small_state(), tmp_path / "whole.pt", legacy=legacy).read_bytes()
    for i in range(40):
        data = bytearray(whole)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / f"flip{i}.pt"
        path.write_bytes(bytes(data[: rng.randint(1, len(data))]))
        try:
            read_keys(path)
        except SourceError as exc:
            assert exc.path == str(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.touch()
    with pytest.raises(SourceError) as info:
        read_keys(path)
    assert info.value.problem == "empty-file"
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)  # found as the folder's pytorch_model.bin
    assert info.value.problem == "empty-file"


def test_directory_named_like_a_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "x.pt"
    folder.mkdir()
    with pytest.raises(SourceError) as info:
        read_pickle(folder)
    assert info.value.problem == "is-a-directory"
    with pytest.raises(SourceError) as info:
        read_keys(folder)
    assert info.value.problem == "is-a-directory"
    assert str(folder) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read_pickle(tmp_path / "nope.bin")
    assert info.value.problem == "not-found"


def test_reading_does_not_modify_the_file(tmp_path: Path, hashes: Callable[..., Any]) -> None:
    path = save(dict(LIGHTNING, state_dict=small_state()), tmp_path / "last.ckpt")
    before = hashes(tmp_path)
    read_keys(path)
    assert hashes(tmp_path) == before
