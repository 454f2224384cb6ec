"""The built-in example behind ``make demo``: a checkpoint that does not load, and keyguard explaining why.

``python -m keyguard.demo FOLDER`` writes, without torch:

- ``FOLDER/expected.keys.json``: the keys a small Llama-style model expects (a keyguard manifest);
- ``FOLDER/checkpoint.safetensors``: the same weights saved from a DDP-wrapped, ``torch.compile``-d model, so every
  key carries ``module._orig_mod.``, plus the legacy ``rotary_emb.inv_freq`` buffers older code saved and without
  the ``lm_head.weight`` that is tied to the embeddings;

then runs ``keyguard inspect`` on the checkpoint and ``keyguard diagnose`` on the pair.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from keyguard._dtypes import nbytes_of
from keyguard._st_write import write_safetensors
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._manifest import write_manifest

HIDDEN, LAYERS, VOCAB, FFN = 64, 4, 256, 128


def expected_tensors() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the example model (what ``model.state_dict()`` holds)."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        block = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{block}.self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
        shapes[f"{block}.mlp.gate_proj.weight"] = (FFN, HIDDEN)
        shapes[f"{block}.mlp.up_proj.weight"] = (FFN, HIDDEN)
        shapes[f"{block}.mlp.down_proj.weight"] = (HIDDEN, FFN)
        shapes[f"{block}.input_layernorm.weight"] = (HIDDEN,)
        shapes[f"{block}.post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def write_example(folder: str) -> tuple[str, str]:
    """Write the example pair into ``folder``; returns (checkpoint path, expected manifest path)."""
    os.makedirs(folder, exist_ok=True)
    expected = expected_tensors()
    manifest = os.path.join(folder, "expected.keys.json")
    write_manifest(
        KeySet(
            tensors={k: TensorInfo(v, "BF16") for k, v in expected.items()},
            format="module",
            location="LlamaForCausalLM (keyguard demo)",
            architecture="LlamaForCausalLM",
            tied=(("model.embed_tokens.weight", "lm_head.weight"),),
        ),
        manifest,
    )
    saved: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for key, shape in expected.items():
        if key == "lm_head.weight":
            continue  # tied to the embeddings: left out on purpose
        saved[f"module._orig_mod.{key}"] = _tensor(shape)
    for i in range(LAYERS):
        saved[f"module._orig_mod.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = _tensor((HIDDEN // 8,), "F32")
    checkpoint = os.path.join(folder, "checkpoint.safetensors")
    write_safetensors(checkpoint, saved, metadata={"format": "pt"})
    return checkpoint, manifest


def _tensor(shape: tuple[int, ...], dtype: str = "BF16") -> tuple[str, tuple[int, ...], bytes]:
    numel = 1
    for dim in shape:
        numel *= dim
    return dtype, shape, bytes(nbytes_of(numel, dtype) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    from keyguard.cli import main as cli

    args = list(sys.argv[1:] if argv is None else argv)
    folder = args[0] if args else "demo"
    checkpoint, manifest = write_example(folder)
    print(f"$ keyguard inspect {checkpoint}\n", flush=True)
    cli(["inspect", checkpoint])
    print(f"\n$ keyguard diagnose {checkpoint} --expected {manifest}\n", flush=True)
    try:
        from keyguard.cli._diagnose import run as _  # noqa: F401
    except ImportError:
        print("(keyguard diagnose arrives with the diagnostics engine)")
        return 0
    cli(["diagnose", checkpoint, "--expected", manifest])
    return 0


if __name__ == "__main__":
    sys.exit(main())
