"""``write_fixed``: every rule type on real files, the fast and slow paths, sharded and pickle input, refusals and
verification. Every written checkpoint is re-read with the safetensors library and compared tensor by tensor."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

import keyguard  # noqa: E402
from keyguard import PlanError  # noqa: E402
from keyguard.fixes import (  # noqa: E402
    AddPrefix,
    Drop,
    Fuse,
    MapKeys,
    Plan,
    Rename,
    ReplacePrefix,
    ShiftIndex,
    Split,
    StripPrefix,
    Transpose,
    WriteError,
    write_fixed,
)
from keyguard.fixes._file_write import METADATA_KEY  # noqa: E402
from keyguard.fixes._write_verify import verify_written  # noqa: E402

# -- helpers -----------------------------------------------------------------------------------------------------


def parts(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, bytes]:
    """``(header JSON, header length, data section)`` of a safetensors file, read byte by byte."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), n, raw[8 + n :]


def assert_tensors(path: str | os.PathLike[str], expected: Mapping[str, Any]) -> None:
    """The file holds exactly ``expected``: same names, dtypes, shapes and values (bit for bit)."""
    got = load_file(os.fspath(path))
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def assert_valid_layout(path: str | os.PathLike[str]) -> None:
    """Header padded to 8 bytes; offsets contiguous from 0, each the size of its tensor, covering the data."""
    header, n, data = parts(path)
    assert n % 8 == 0
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "BOOL": 1, "U8": 1, "I8": 1, "F64": 8, "I16": 2}
    spans = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
    position = 0
    for (start, end), name in spans:
        assert start == position, name
        numel = 1
        for d in header[name]["shape"]:
            numel *= d
        assert end - start == numel * sizes[header[name]["dtype"]], name
        position = end
    assert position == len(data)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders keyguard may have left beside its outputs."""
    return sorted(p.name for p in folder.iterdir() if ".keyguard-" in p.name)


def mixed_tensors(prefix: str = "") -> dict[str, Any]:
    """Tensors of every interesting kind: several dtypes, a 0-element tensor, a scalar, 2-D and 3-D."""
    g = torch.Generator().manual_seed(0)
    return {
        f"{prefix}encoder.layers.0.attn.weight": torch.randn(6, 4, generator=g),
        f"{prefix}encoder.layers.1.attn.weight": torch.randn(6, 4, generator=g),
        f"{prefix}encoder.layers.0.norm.gamma": torch.randn(4, generator=g).to(torch.bfloat16),
        f"{prefix}encoder.layers.1.norm.gamma": torch.randn(4, generator=g).to(torch.float16),
        f"{prefix}encoder.position_ids": torch.arange(7, dtype=torch.int64).view(1, 7),
        f"{prefix}encoder.mask": torch.tensor([True, False, True]),
        f"{prefix}encoder.empty": torch.zeros(0, 5),
        f"{prefix}encoder.scale": torch.tensor(2.5),
        f"{prefix}head.weight": torch.randn(2, 3, 4, generator=g),
    }


@pytest.fixture
def source(tmp_path: Path, save_st: Callable[..., Path]) -> Callable[..., tuple[Path, dict[str, Any]]]:
    def make(tensors: Mapping[str, Any] | None = None, *, name: str = "in.safetensors", **meta: str) -> Any:
        tensors = dict(tensors if tensors is not None else mixed_tensors("module."))
        path = save_st(tmp_path / name, tensors, metadata=meta or {"format": "pt", "origin": "a test"})
        return path, tensors

    return make


# -- renaming rules: the fast path -------------------------------------------------------------------------------

RENAMES = [
    pytest.param(StripPrefix(prefix="module."), lambda k: k.removeprefix("module."), id="strip_prefix"),
    pytest.param(AddPrefix(prefix="model."), lambda k: "model." + k, id="add_prefix"),
    pytest.param(
        AddPrefix(prefix="model.", only=["module"]),
        lambda k: "model." + k if k.startswith("module.") else k,
        id="add_prefix_only",
    ),
    pytest.param(ReplacePrefix(old="module.encoder.", new="bert.encoder."), None, id="replace_prefix"),
    pytest.param(
        Rename(pattern=r"(.*)\.gamma", replacement=r"\1.weight", old="gamma", new="weight"),
        lambda k: k[: -len("gamma")] + "weight" if k.endswith(".gamma") else k,
        id="rename_regex",
    ),
    pytest.param(
        ShiftIndex(prefix="module.encoder.layers.", offset=4),
        lambda k: k.replace("layers.0.", "layers.4.").replace("layers.1.", "layers.5."),
        id="shift_index",
    ),
    pytest.param(
        MapKeys(mapping={"module.head.weight": "classifier.weight", "module.encoder.scale": "scale"}),
        lambda k: {"module.head.weight": "classifier.weight", "module.encoder.scale": "scale"}.get(k, k),
        id="map",
    ),
]


@pytest.mark.parametrize(("rule", "expect"), RENAMES)
def test_renaming_rule_rewrites_the_header_and_copies_the_data_section(
    tmp_path: Path, source: Callable[..., Any], rule: Any, expect: Callable[[str], str] | None
) -> None:
    src, tensors = source()
    if expect is None:  # replace_prefix
        expect = lambda k: "bert.encoder." + k[len("module.encoder.") :] if k.startswith("module.encoder.") else k  # noqa: E731
    out = tmp_path / "out.safetensors"
    result = write_fixed(keyguard.read_keys(src), Plan(rules=[rule]), out, progress=False)

    renamed = {expect(k): v for k, v in tensors.items()}
    assert len(renamed) == len(tensors)
    assert_tensors(out, renamed)
    assert result.files == [str(out)] and result.bytes_written == out.stat().st_size
    assert {c.source: c.targets for c in result.changes} == {k: [expect(k)] for k in tensors}
    assert result.count("renamed") == sum(1 for k in tensors if expect(k) != k)
    assert result.count("kept") == sum(1 for k in tensors if expect(k) == k)
    # fast path: the data section is the source's, byte for byte, and every tensor keeps its offsets
    src_header, _, src_data = parts(src)
    out_header, n, out_data = parts(out)
    assert out_data == src_data
    assert n % 8 == 0
    for old, info in src_header.items():
        if old != "__metadata__":
            assert out_header[expect(old)]["data_offsets"] == info["data_offsets"]
    # metadata kept, plus a line saying what keyguard did
    meta = out_header["__metadata__"]
    assert meta["origin"] == "a test" and meta["format"] == "pt"
    assert meta[METADATA_KEY].startswith(f"keys rewritten by keyguard {keyguard.__version__}")
    assert leftovers(tmp_path) == []


def test_the_fast_path_keeps_a_non_canonical_layout(tmp_path: Path) -> None:
    """A file whose data is not in the library's order (written by hand) keeps its own layout and bytes."""
    from keyguard._st_write import encode_header

    a = torch.arange(6, dtype=torch.float32)
    b = torch.arange(3, dtype=torch.int64)
    rows = [("module.b", "I64", (3,), 0, 24), ("module.a", "F32", (6,), 24, 48)]  # name order would put a first
    src = tmp_path / "hand.safetensors"
    src.write_bytes(encode_header(rows) + b.numpy().tobytes() + a.numpy().tobytes())
    out = tmp_path / "out.safetensors"
    write_fixed(keyguard.read_keys(src), Plan(rules=[StripPrefix(prefix="module.")]), out, progress=False)
    assert_tensors(out, {"a": a, "b": b})
    assert parts(out)[2] == parts(src)[2]
    assert parts(out)[0]["b"]["data_offsets"] == [0, 24]


def test_a_plan_that_changes_nothing_still_writes_a_verified_copy(tmp_path: Path, source: Callable[..., Any]) -> None:
    src, tensors = source()
    out = tmp_path / "out.safetensors"
    result = write_fixed(keyguard.read_keys(src), Plan(), out, progress=False)
    assert result.count("kept") == len(tensors)
    assert_tensors(out, tensors)
    assert parts(out)[2] == parts(src)[2]


# -- the slow path: drops and data rules -------------------------------------------------------------------------


def test_drop_streams_every_tensor_into_a_compact_layout(tmp_path: Path, source: Callable[..., Any]) -> None:
    src, tensors = source()
    out = tmp_path / "out.safetensors"
    plan = Plan(rules=[StripPrefix(prefix="module."), Drop(keys=["encoder.position_ids"])])
    result = write_fixed(keyguard.read_keys(src), plan, out, drop=["module.encoder.mask"], progress=False)
    expected = {k.removeprefix("module."): v for k, v in tensors.items()}
    del expected["encoder.position_ids"], expected["encoder.mask"]
    assert_tensors(out, expected)
    assert_valid_layout(out)
    assert sorted(c.source for c in result.changes if c.action == "dropped") == [
        "module.encoder.mask",
        "module.encoder.position_ids",
    ]
    assert len(parts(out)[2]) < len(parts(src)[2])
    assert parts(out)[0]["__metadata__"]["origin"] == "a test"
    assert "2 dropped" in parts(out)[0]["__metadata__"][METADATA_KEY]


def test_transpose_really_transposes_the_data(tmp_path: Path, source: Callable[..., Any]) -> None:
    src, tensors = source()
    out = tmp_path / "out.safetensors"
    plan = Plan(rules=[StripPrefix(prefix="module."), Transpose(keys=["encoder.layers.1.attn.weight"])])
    result = write_fixed(keyguard.read_keys(src), plan, out, progress=False)
    expected = {k.removeprefix("module."): v for k, v in tensors.items()}
    expected["encoder.layers.1.attn.weight"] = tensors["module.encoder.layers.1.attn.weight"].t().contiguous()
    assert_tensors(out, expected)
    assert_valid_layout(out)
    assert load_file(str(out))["encoder.layers.1.attn.weight"].shape == (4, 6)
    assert [c.source for c in result.changes if c.action == "transposed"] == ["module.encoder.layers.1.attn.weight"]


def test_transpose_refuses_a_tensor_that_is_not_2d(tmp_path: Path, source: Callable[..., Any]) -> None:
    src, _ = source()
    out = tmp_path / "out.safetensors"
    with pytest.raises(PlanError, match=r"'module.head.weight' is not 2-D"):
        write_fixed(keyguard.read_keys(src), Plan(rules=[Transpose(keys=["module.head.weight"])]), out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_split_qkv_into_q_k_v(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(16, 8, generator=g).to(torch.bfloat16)
    bias = torch.randn(16, generator=g)
    src = save_st(tmp_path / "in.safetensors", {"attn.qkv_proj.weight": qkv, "attn.qkv_proj.bias": bias})
    out = tmp_path / "out.safetensors"
    plan = Plan(
        rules=[
            Split(source="attn.qkv_proj.weight", targets=[f"attn.{p}_proj.weight" for p in "qkv"], sizes=[8, 4, 4]),
            Split(source="attn.qkv_proj.bias", targets=[f"attn.{p}_proj.bias" for p in "qkv"], sizes=[8, 4, 4]),
        ]
    )
    result = write_fixed(keyguard.read_keys(src), plan, out, progress=False)
    assert_tensors(
        out,
        {
            "attn.q_proj.weight": qkv[:8],
            "attn.k_proj.weight": qkv[8:12],
            "attn.v_proj.weight": qkv[12:],
            "attn.q_proj.bias": bias[:8],
            "attn.k_proj.bias": bias[8:12],
            "attn.v_proj.bias": bias[12:],
        },
    )
    assert_valid_layout(out)
    assert {c.source: c.targets for c in result.changes if c.action == "split"} == {
        "attn.qkv_proj.weight": ["attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"],
        "attn.qkv_proj.bias": ["attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias"],
    }


def test_split_along_dim_1_after_a_rename(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    w = torch.arange(24, dtype=torch.float32).view(4, 6)
    src = save_st(tmp_path / "in.safetensors", {"module.fused": w})
    out = tmp_path / "out.safetensors"
    plan = Plan(rules=[StripPrefix(prefix="module."), Split(source="fused", targets=["a", "b"], sizes=[2, 4], dim=1)])
    write_fixed(keyguard.read_keys(src), plan, out, progress=False)
    assert_tensors(out, {"a": w[:, :2], "b": w[:, 2:]})


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (Split(source="fused", targets=["a", "b"], sizes=[2, 3]), r"cannot be split into sizes \[2, 3\] along dim 0"),
        (Split(source="fused", targets=["a", "b"], sizes=[2, 2], dim=2), r"along dim 2"),
        (Split(source="fused", targets=["a"], sizes=[2, 2]), r"names 1 target\(s\) for 2 size\(s\)"),
        (Split(source="nothing", targets=["a", "b"], sizes=[2, 2]), r"which the checkpoint does not hold"),
    ],
)
def test_a_split_that_does_not_fit_is_refused(
    tmp_path: Path, save_st: Callable[..., Path], split: Split, message: str
) -> None:
    src = save_st(tmp_path / "in.safetensors", {"fused": torch.zeros(4, 6)})
    out = tmp_path / "out.safetensors"
    with pytest.raises(PlanError, match=message):
        write_fixed(keyguard.read_keys(src), Plan(rules=[split]), out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_fuse_concatenates(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    g = torch.Generator().manual_seed(2)
    gate, up = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    other = torch.ones(2, dtype=torch.int64)
    src = save_st(tmp_path / "in.safetensors", {"mlp.gate_proj.weight": gate, "mlp.up_proj.weight": up, "n": other})
    out = tmp_path / "out.safetensors"
    plan = Plan(rules=[Fuse(sources=["mlp.gate_proj.weight", "mlp.up_proj.weight"], target="mlp.gate_up_proj.weight")])
    result = write_fixed(keyguard.read_keys(src), plan, out, progress=False)
    assert_tensors(out, {"mlp.gate_up_proj.weight": torch.cat([gate, up]), "n": other})
    assert_valid_layout(out)
    assert result.count("fused") == 2


@pytest.mark.parametrize(
    ("tensors", "fuse", "message"),
    [
        ({"a": torch.zeros(2, 3), "b": torch.zeros(2, 4)}, Fuse(sources=["a", "b"], target="t"), "differ outside"),
        (
            {"a": torch.zeros(2, 3), "b": torch.zeros(2, 3, dtype=torch.float16)},
            Fuse(sources=["a", "b"], target="t"),
            "one dtype",
        ),
        (
            {"a": torch.zeros(2, 3), "b": torch.zeros(2, 3), "c": torch.zeros(2, 3)},
            Fuse(sources=["a", "b", "c"], target="t", stack=True, parts=2),
            "in groups of 2",
        ),
        (
            {"a": torch.zeros(2, 3), "b": torch.zeros(2, 3), "c": torch.zeros(1, 3), "d": torch.zeros(2, 3)},
            Fuse(sources=["a", "b", "c", "d"], target="t", stack=True, parts=2),
            "different sizes",
        ),
        ({"a": torch.zeros(2, 3)}, Fuse(sources=["a", "zz"], target="t"), "the checkpoint does not hold"),
    ],
)
def test_a_fuse_that_torch_could_not_do_is_refused_before_writing(
    tmp_path: Path, save_st: Callable[..., Path], tensors: dict[str, Any], fuse: Fuse, message: str
) -> None:
    src = save_st(tmp_path / "in.safetensors", tensors)
    out = tmp_path / "out.safetensors"
    with pytest.raises(PlanError, match=message):
        write_fixed(keyguard.read_keys(src), Plan(rules=[fuse]), out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_stacked_experts_match_transformers_mixtral(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    """Per-expert w1/w3 -> ``experts.gate_up_proj`` [E, 2I, H] and w2 -> ``experts.down_proj`` [E, H, I]: the
    fused checkpoint loads strictly into transformers 5's Mixtral and gives the model it came from; transformers'
    own converter, loading the legacy checkpoint, agrees."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=3,
        num_experts_per_tok=2,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).eval()
    state = model.state_dict()
    n_exp, inter = config.num_local_experts, config.intermediate_size
    assert state["model.layers.0.mlp.experts.gate_up_proj"].shape == (n_exp, 2 * inter, config.hidden_size)

    legacy: dict[str, Any] = {}
    for key, value in state.items():
        layer_key = key.replace(".mlp.", ".block_sparse_moe.")
        if key.endswith("experts.gate_up_proj"):
            base = layer_key.removesuffix("gate_up_proj")
            for e in range(n_exp):
                legacy[f"{base}{e}.w1.weight"] = value[e, :inter]
                legacy[f"{base}{e}.w3.weight"] = value[e, inter:]
        elif key.endswith("experts.down_proj"):
            base = layer_key.removesuffix("down_proj")
            for e in range(n_exp):
                legacy[f"{base}{e}.w2.weight"] = value[e]
        else:
            legacy[layer_key] = value
    folder = tmp_path / "legacy"
    save_st(folder / "model.safetensors", legacy, metadata={"format": "pt"})
    config.save_pretrained(folder)

    rules: list[Any] = [Rename(pattern=r"(.*)\.block_sparse_moe\.(.*)", replacement=r"\1.mlp.\2")]
    for layer in range(config.num_hidden_layers):
        base = f"model.layers.{layer}.mlp.experts"
        w13 = [f"{base}.{e}.{w}.weight" for e in range(n_exp) for w in ("w1", "w3")]
        w2 = [f"{base}.{e}.w2.weight" for e in range(n_exp)]
        rules.append(Fuse(sources=w13, target=f"{base}.gate_up_proj", stack=True, parts=2))
        rules.append(Fuse(sources=w2, target=f"{base}.down_proj", stack=True, parts=1))
    out = tmp_path / "fixed.safetensors"
    write_fixed(keyguard.read_keys(folder / "model.safetensors"), Plan(rules=rules), out, progress=False)

    fixed = load_file(str(out))
    assert sorted(fixed) == sorted(state)
    for key, value in state.items():
        assert torch.equal(fixed[key], value), key
    assert_valid_layout(out)
    fresh = MixtralForCausalLM(config)
    fresh.load_state_dict(fixed, strict=True)
    ids = torch.tensor([[1, 5, 7, 3]])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(ids).logits, model(ids).logits)
    # transformers' converter reads the legacy layout the same way keyguard fused it
    converted = MixtralForCausalLM.from_pretrained(folder).state_dict()
    for key in (k for k in state if "experts" in k):
        assert torch.equal(converted[key], fixed[key]), key


# -- large tensors: kernel copy, the buffered fallback, checksums across chunk boundaries ----------------------------


def big_tensors() -> dict[str, Any]:
    """About 21 MB: tensors larger than the writer's 8 MiB buffers and smaller ones, so chunks end mid-tensor."""
    g = torch.Generator().manual_seed(5)
    return {
        "module.a.weight": torch.randn(1280, 1024, generator=g),  # 5 MiB
        "module.b.weight": torch.randn(2304, 1024, generator=g),  # 9 MiB
        "module.c.bias": torch.randn(1000, generator=g),
        "module.d.weight": torch.randn(768, 1024, generator=g).to(torch.bfloat16),
        "module.e.weight": torch.randn(1536, 1024, generator=g),  # 6 MiB
    }


def _other_device_folder(tmp_path: Path) -> Path:
    """A folder on another file system than ``tmp_path`` (where ``copy_file_range`` declines), or skip."""
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to copy across")
    return Path(tempfile.mkdtemp(dir=shm, prefix="keyguard-test-"))


@pytest.mark.parametrize("across", [False, True], ids=["same-file-system", "across-file-systems"])
@pytest.mark.parametrize("drop", [False, True], ids=["fast-path", "slow-path"])
def test_large_tensors_are_copied_exactly(
    tmp_path: Path, save_st: Callable[..., Path], across: bool, drop: bool
) -> None:
    tensors = big_tensors()
    folder = _other_device_folder(tmp_path) if across else tmp_path
    try:
        src = save_st(folder / "big.safetensors", tensors, metadata={"format": "pt"})
        out = tmp_path / "out.safetensors"
        plan = Plan(rules=[StripPrefix(prefix="module."), *([Drop(keys=["c.bias"])] if drop else [])])
        write_fixed(keyguard.read_keys(src), plan, out, progress=False)
        expected = {k.removeprefix("module."): v for k, v in tensors.items() if not (drop and k == "module.c.bias")}
        assert_tensors(out, expected)
        assert_valid_layout(out)
        if not drop:
            assert parts(out)[2] == parts(src)[2]
        assert leftovers(tmp_path) == []
    finally:
        if across:
            shutil.rmtree(folder)


def _rows_and_checks(
    path: Path,
) -> tuple[list[tuple[str, str, tuple[int, ...], int, int]], dict[str, int], dict[str, str], int]:
    """A written file's layout rows, every tensor's checksum, its metadata and its header length."""
    from keyguard.fixes._checksum import digest

    header, n, data = parts(path)
    meta = header.pop("__metadata__", {})
    rows = sorted(
        ((k, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in header.items()), key=lambda r: r[3]
    )
    return rows, {name: digest(data[start:end]) for name, _, _, start, end in rows}, meta, n


def test_verification_of_a_large_file_catches_one_flipped_byte_past_the_first_chunk(
    tmp_path: Path, save_st: Callable[..., Path]
) -> None:
    from keyguard.fixes._block_copy import CHUNK

    src = save_st(tmp_path / "big.safetensors", big_tensors())
    rows, checks, meta, n = _rows_and_checks(src)
    verify_written(str(src), rows, checks, meta)
    position = CHUNK + 12345  # inside the second buffer's worth of data
    victim = next(name for name, _, _, start, end in rows if start <= position < end)
    raw = bytearray(src.read_bytes())
    raw[8 + n + position] ^= 0x01
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(WriteError, match=f"the bytes of {victim!r} differ"):
        verify_written(str(corrupt), rows, checks, meta)


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="the kernel copy is Linux's")
@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read-into-a-buffer"])
def test_the_kernel_copy_reads_the_output_back_as_it_is_written(
    tmp_path: Path, save_st: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, mapped: bool
) -> None:
    """The fast path checksums each tensor of the output, read back from the file right after the kernel wrote it,
    and verification compares those with the source's (the data is not read a third time)."""
    import mmap

    from keyguard.fixes import _file_write
    from keyguard.fixes._checksum import digest

    if not mapped:  # where the output cannot be mapped, it is read into a buffer

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OSError("no mmap here")

        monkeypatch.setattr(mmap, "mmap", refuse)

    seen: list[Any] = []

    def recording(path: str, rows: Any, checks: Any, meta: Any, stream: Any, bar: Any, readback: Any) -> None:
        seen.append((dict(readback.crcs), dict(readback.positions), dict(checks)))
        verify_written(path, rows, checks, meta, stream, bar, readback)

    monkeypatch.setattr(_file_write, "verify_written", recording)
    src = save_st(tmp_path / "big.safetensors", big_tensors())
    out = tmp_path / "out.safetensors"
    write_fixed(keyguard.read_keys(src), Plan(rules=[StripPrefix(prefix="module.")]), out, progress=False)
    ((crcs, positions, checks),) = seen
    header, n, data = parts(out)
    header.pop("__metadata__", None)
    assert crcs == checks and sorted(crcs) == sorted(header)
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        assert positions[name] == (8 + n + start, 8 + n + end)
        assert crcs[name] == digest(data[start:end])


def test_read_back_checksums_are_compared_and_used_only_where_the_header_confirms_them(
    tmp_path: Path, save_st: Callable[..., Path]
) -> None:
    from keyguard.fixes._block_copy import ReadBack

    src = save_st(tmp_path / "big.safetensors", big_tensors())
    rows, checks, meta, n = _rows_and_checks(src)
    at = {name: (8 + n + start, 8 + n + end) for name, _, _, start, end in rows}
    victim = rows[1][0]
    wrong = ReadBack()
    wrong.add({**checks, victim: checks[victim] ^ 1}, at)
    with pytest.raises(WriteError, match=f"the bytes of {victim!r} differ"):
        verify_written(str(src), rows, checks, meta, readback=wrong)
    elsewhere = ReadBack()  # read back at other positions than the header gives: not trusted, the file is re-read
    elsewhere.add({**checks, victim: checks[victim] ^ 1}, {**at, victim: (at[victim][0] + 1, at[victim][1] + 1)})
    verify_written(str(src), rows, checks, meta, readback=elsewhere)
    partial = ReadBack()  # a tensor not read back: the file is re-read
    partial.add({name: 0 for name in checks if name != victim}, {name: at[name] for name in checks if name != victim})
    verify_written(str(src), rows, checks, meta, readback=partial)


# -- collisions --------------------------------------------------------------------------------------------------


def test_a_rename_collision_is_refused_naming_both_keys_and_nothing_is_written(
    tmp_path: Path, save_st: Callable[..., Path]
) -> None:
    src = save_st(tmp_path / "in.safetensors", {"module.a": torch.zeros(2), "a": torch.ones(2)})
    out = tmp_path / "out.safetensors"
    with pytest.raises(PlanError, match=r"'module\.a' and 'a' would both become 'a'|'a' and 'module\.a'"):
        write_fixed(keyguard.read_keys(src), Plan(rules=[StripPrefix(prefix="module.")]), out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_split_target_that_collides_with_a_kept_key_is_refused(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    src = save_st(tmp_path / "in.safetensors", {"qkv": torch.zeros(6, 2), "k": torch.ones(2, 2)})
    out = tmp_path / "out.safetensors"
    plan = Plan(rules=[Split(source="qkv", targets=["q", "k", "v"], sizes=[2, 2, 2])])
    with pytest.raises(PlanError, match=r"'qkv' and 'k' would both be written as 'k'"):
        write_fixed(keyguard.read_keys(src), plan, out)
    assert not out.exists() and leftovers(tmp_path) == []


# -- in place ----------------------------------------------------------------------------------------------------


def test_in_place_replaces_the_file_atomically(tmp_path: Path, source: Callable[..., Any]) -> None:
    src, tensors = source()
    os.chmod(src, 0o640)
    inode = src.stat().st_ino
    write_fixed(keyguard.read_keys(src), Plan(rules=[StripPrefix(prefix="module.")]), src, progress=False)
    assert src.stat().st_ino != inode  # a new file was renamed over it, not rewritten in place
    assert src.stat().st_mode & 0o777 == 0o640  # and it keeps the permissions of the file it replaced
    assert_tensors(src, {k.removeprefix("module."): v for k, v in tensors.items()})
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_a_new_output_keeps_the_permissions_of_its_source(
    tmp_path: Path, source: Callable[..., Any], mode: int
) -> None:
    """As ``cp`` does: the source's permissions less the umask (a private checkpoint stays private)."""
    src, _ = source()
    os.chmod(src, mode)
    out = tmp_path / "out.safetensors"
    umask = os.umask(0o022)
    try:
        write_fixed(keyguard.read_keys(src), Plan(), out, progress=False)
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == mode & ~0o022


# -- verification ------------------------------------------------------------------------------------------------


def _truncate(path: Path, by: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - by)


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0" * 8)


def _grow_header(path: Path) -> None:
    """Rewrite the file with the same tensors and a longer header: every data offset moves."""
    header, _, data = parts(path)
    header["__metadata__"] = {**header.get("__metadata__", {}), "padding": "x" * 64}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


@pytest.mark.parametrize(
    ("change", "plan"),
    [
        pytest.param(lambda p: _truncate(p, 4), Plan(rules=[StripPrefix(prefix="module.")]), id="truncated-fast"),
        pytest.param(lambda p: _truncate(p, 4), Plan(rules=[Drop(keys=["module.encoder.mask"])]), id="truncated-slow"),
        pytest.param(_append, Plan(rules=[StripPrefix(prefix="module.")]), id="grown"),
        pytest.param(_grow_header, Plan(rules=[StripPrefix(prefix="module.")]), id="header-rewritten"),
    ],
)
def test_a_source_changed_after_reading_its_keys_fails_and_leaves_nothing(
    tmp_path: Path, source: Callable[..., Any], change: Callable[[Path], object], plan: Plan
) -> None:
    src, _ = source()
    keys = keyguard.read_keys(src)
    change(src)
    out = tmp_path / "out.safetensors"
    with pytest.raises(WriteError, match=r"changed|ended early|ends early"):
        write_fixed(keys, plan, out, progress=False)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_a_tensor_read_through_torch_from_a_truncated_source_fails_and_leaves_nothing(
    tmp_path: Path, save_st: Callable[..., Path]
) -> None:
    src = save_st(tmp_path / "in.safetensors", {"w": torch.randn(6, 4)})
    keys = keyguard.read_keys(src)
    _truncate(src, 40)
    out = tmp_path / "out.safetensors"
    with pytest.raises(WriteError, match=r"changed"):
        write_fixed(keys, Plan(rules=[Transpose(keys=["w"])]), out, progress=False)
    assert not out.exists() and leftovers(tmp_path) == []


def test_verification_catches_a_corrupted_byte_and_a_wrong_header(tmp_path: Path, source: Callable[..., Any]) -> None:
    """``verify_written`` runs on the temporary file before the rename: check it on real files."""
    src, _ = source()
    out = tmp_path / "out.safetensors"
    write_fixed(keyguard.read_keys(src), Plan(), out, progress=False)
    header, n, data = parts(out)
    meta = header.pop("__metadata__")
    rows = sorted(
        ((k, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in header.items()), key=lambda r: r[3]
    )
    from keyguard.fixes._checksum import digest

    checks = {name: digest(data[start:end]) for name, _, _, start, end in rows}
    verify_written(str(out), rows, checks, meta)  # the genuine file verifies

    corrupt = tmp_path / "corrupt.safetensors"
    raw = bytearray(out.read_bytes())
    raw[8 + n + header["module.encoder.layers.1.attn.weight"]["data_offsets"][0] + 3] ^= 0x40
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(WriteError, match=r"the bytes of 'module.encoder.layers.1.attn.weight' differ"):
        verify_written(str(corrupt), rows, checks, meta)
    with pytest.raises(WriteError, match=r"header differs from the plan"):
        verify_written(str(out), [*rows[:-1], (rows[-1][0] + ".x", *rows[-1][1:])], checks, meta)
    with pytest.raises(WriteError, match=r"metadata differs"):
        verify_written(str(out), rows, checks, {**meta, "origin": "elsewhere"})
    short = tmp_path / "short.safetensors"
    short.write_bytes(out.read_bytes()[:-8])
    with pytest.raises(WriteError, match=r"not valid safetensors"):
        verify_written(str(short), rows, checks, meta)


def test_a_failed_verification_leaves_no_file_behind(tmp_path: Path) -> None:
    from keyguard._atomic import atomic_output

    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def refuse(path: str) -> None:
        assert Path(path).read_bytes() == b"new"  # the temporary file holds the new bytes, fsynced
        raise WriteError("verification failed: on purpose")

    with pytest.raises(WriteError, match="on purpose"), atomic_output(target, verify=refuse) as f:
        f.write(b"new")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_an_unwritable_target_is_a_write_error(tmp_path: Path, source: Callable[..., Any]) -> None:
    src, _ = source()
    with pytest.raises(WriteError, match="writing failed"):
        write_fixed(keyguard.read_keys(src), Plan(), tmp_path / "no" / "such" / "dir" / "out.safetensors")


# -- progress ----------------------------------------------------------------------------------------------------


def test_progress_bar_only_when_asked(
    tmp_path: Path, source: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = source()
    keys = keyguard.read_keys(src)
    write_fixed(keys, Plan(), tmp_path / "a.safetensors", progress=True)
    drawn = capsys.readouterr().err
    assert "writing" in drawn and "verifying" in drawn and "100%" in drawn
    write_fixed(keys, Plan(), tmp_path / "b.safetensors", progress=False)
    write_fixed(keys, Plan(), tmp_path / "c.safetensors")  # default: stderr is not a terminal here
    assert capsys.readouterr().err == ""


# -- pickles -----------------------------------------------------------------------------------------------------


def _pickle_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    shared = torch.randn(8, 4, generator=g)
    return {
        "module.embed.weight": shared,
        "module.lm_head.weight": shared,  # tied: one storage under two names
        "module.proj.weight": torch.randn(4, 6, generator=g).t(),  # a non-contiguous view
        "module.steps": torch.tensor(7, dtype=torch.int64),
        "module.half": torch.randn(3, generator=g).to(torch.bfloat16),
        "module.flags": torch.tensor([True, False]),
        "module.empty": torch.zeros(0),
    }


@pytest.mark.parametrize(
    ("how", "container"),
    [("zip", None), ("legacy", None), ("zip", "state_dict")],
    ids=["zip", "legacy-torch-save", "lightning-container"],
)
def test_a_pickle_becomes_safetensors(tmp_path: Path, how: str, container: str | None) -> None:
    state = _pickle_state()
    obj: Any = {"state_dict": state, "epoch": 3, "optimizer_states": [{"lr": 0.1}]} if container else state
    src = tmp_path / "in.ckpt"
    torch.save(obj, src, _use_new_zipfile_serialization=how == "zip")
    before = src.read_bytes()
    keys = keyguard.read_keys(src)
    assert keys.format == "torch-pickle" and keys.unwrapped == container
    out = tmp_path / "out.safetensors"
    result = write_fixed(keys, Plan(rules=[StripPrefix(prefix="module.")]), out, progress=False)
    expected = {k.removeprefix("module."): v.contiguous() for k, v in state.items()}
    assert_tensors(out, expected)  # tied tensors written under each name, views written as their values
    assert_valid_layout(out)
    assert result.count("renamed") == len(state)
    assert parts(out)[0]["__metadata__"]["format"] == "pt"
    assert src.read_bytes() == before


def test_a_pickle_rewritten_at_the_same_path_is_read_again(tmp_path: Path) -> None:
    """No tensor of a pickle is kept between two writes (a stale copy would be written and 'verified')."""
    src = tmp_path / "in.pt"
    torch.save({"w": torch.zeros(3)}, src)
    write_fixed(keyguard.read_keys(src), Plan(), tmp_path / "a.safetensors", progress=False)
    torch.save({"w": torch.ones(3)}, src)
    write_fixed(keyguard.read_keys(src), Plan(), tmp_path / "b.safetensors", progress=False)
    assert_tensors(tmp_path / "b.safetensors", {"w": torch.ones(3)})


# -- sharded -----------------------------------------------------------------------------------------------------


@pytest.fixture
def sharded_ddp(tmp_path: Path, tiny_llama: Callable[..., Any]) -> tuple[Path, Any]:
    """A tiny Llama saved with ``save_pretrained(max_shard_size=...)``, then every key given a DDP ``module.``
    prefix by rewriting each shard and the index (as a DDP-wrapped save would have named them)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = tiny_llama()
    folder = tmp_path / "ddp"
    model.save_pretrained(folder, max_shard_size="6KB")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    for shard in shards:
        with safe_open(str(folder / shard), "pt") as f:
            meta = f.metadata()
            tensors = {"module." + k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        save_file(tensors, str(folder / shard), metadata=meta)
    index["weight_map"] = {"module." + k: v for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index, indent=2))
    (folder / "README.md").write_text("model card\n")
    return folder, model


def _shard_tensor_bytes(folder: Path, shards: list[str]) -> int:
    return sum(len(parts(folder / s)[2]) for s in shards)


def test_sharded_in_sharded_out(tmp_path: Path, sharded_ddp: tuple[Path, Any], hashes: Callable[..., Any]) -> None:
    from transformers import LlamaForCausalLM

    folder, model = sharded_ddp
    before = hashes(folder)
    index_in = json.loads((folder / "model.safetensors.index.json").read_text())
    out = tmp_path / "fixed"
    result = write_fixed(keyguard.read_keys(folder), Plan(rules=[StripPrefix(prefix="module.")]), out, progress=False)

    assert hashes(folder) == before
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {k.removeprefix("module."): v for k, v in index_in["weight_map"].items()}
    shards = sorted(set(index["weight_map"].values()))
    assert shards == sorted(set(index_in["weight_map"].values()))  # same shard names
    assert sorted(result.files) == sorted(str(out / s) for s in shards)
    assert index["metadata"]["total_size"] == _shard_tensor_bytes(out, shards)
    assert index["metadata"]["total_parameters"] == index_in["metadata"]["total_parameters"]  # kept
    assert METADATA_KEY in index["metadata"]
    assert (out / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    assert (out / "generation_config.json").exists() and (out / "README.md").exists()
    for shard in shards:  # per shard: fast path, the source shard's bytes and metadata
        assert parts(out / shard)[2] == parts(folder / shard)[2]
        assert parts(out / shard)[0]["__metadata__"]["format"] == "pt"
        assert METADATA_KEY in parts(out / shard)[0]["__metadata__"]
    state = model.state_dict()
    for shard in shards:
        for key, value in load_file(str(out / shard)).items():
            assert torch.equal(value, state[key]), key
    loaded = LlamaForCausalLM.from_pretrained(out)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert leftovers(tmp_path) == []


def test_sharded_drop_leaves_a_consistent_index(tmp_path: Path, sharded_ddp: tuple[Path, Any]) -> None:
    folder, model = sharded_ddp
    out = tmp_path / "fixed"
    drop = "model.layers.1.mlp.down_proj.weight"
    write_fixed(
        keyguard.read_keys(folder), Plan(rules=[StripPrefix(prefix="module."), Drop(keys=[drop])]), out, progress=False
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert drop not in index["weight_map"]
    shards = sorted(set(index["weight_map"].values()))
    assert index["metadata"]["total_size"] == _shard_tensor_bytes(out, shards)
    state = model.state_dict()
    found = {}
    for shard in shards:
        assert_valid_layout(out / shard)
        found.update(load_file(str(out / shard)))
    assert sorted(found) == sorted(k for k in state if k != drop)
    assert all(torch.equal(found[k], state[k]) for k in found)


def test_sharded_output_that_exists_is_refused(tmp_path: Path, sharded_ddp: tuple[Path, Any]) -> None:
    folder, _ = sharded_ddp
    out = tmp_path / "fixed"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(WriteError, match="already exists"):
        write_fixed(keyguard.read_keys(folder), Plan(rules=[StripPrefix(prefix="module.")]), out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == []


def test_sharded_in_place_keeps_everything_else_in_the_folder(tmp_path: Path, sharded_ddp: tuple[Path, Any]) -> None:
    folder, model = sharded_ddp
    (folder / "training_args.bin").write_bytes(b"\x80\x04 not really a pickle")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    write_fixed(keyguard.read_keys(folder), Plan(rules=[StripPrefix(prefix="module.")]), folder, progress=False)
    assert (folder / "training_args.bin").read_bytes() == b"\x80\x04 not really a pickle"
    assert (folder / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    keys = keyguard.read_keys(folder)
    assert sorted(keys) == sorted(model.state_dict())
    assert leftovers(tmp_path) == []


def test_a_sharded_source_changed_meanwhile_leaves_no_staging_folder(
    tmp_path: Path, sharded_ddp: tuple[Path, Any]
) -> None:
    folder, _ = sharded_ddp
    keys = keyguard.read_keys(folder)
    shard = folder / keys.files[-1]
    _truncate(shard, 8)
    out = tmp_path / "fixed"
    with pytest.raises(WriteError):
        write_fixed(keys, Plan(rules=[StripPrefix(prefix="module.")]), out, progress=False)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_sharded_output_in_a_missing_folder_is_a_write_error(tmp_path: Path, sharded_ddp: tuple[Path, Any]) -> None:
    folder, _ = sharded_ddp
    with pytest.raises(WriteError, match="writing failed"):
        write_fixed(keyguard.read_keys(folder), Plan(), tmp_path / "no" / "fixed", progress=False)
    assert not (tmp_path / "no").exists()


def test_sharded_output_companions_are_copies_not_links(tmp_path: Path, sharded_ddp: tuple[Path, Any]) -> None:
    """A new output folder gets copies of config.json & co.: editing them never touches the source's."""
    folder, _ = sharded_ddp
    out = tmp_path / "fixed"
    write_fixed(keyguard.read_keys(folder), Plan(rules=[StripPrefix(prefix="module.")]), out, progress=False)
    for name in ("config.json", "generation_config.json", "README.md"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
        assert (out / name).stat().st_ino != (folder / name).stat().st_ino
