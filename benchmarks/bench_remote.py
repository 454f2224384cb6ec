"""Remote sources: what ``keyguard inspect|diagnose|check-adapter`` download for a multi-GB checkpoint on a Hub.

Inputs, served by a Hub-like HTTP server on 127.0.0.1 (``tests/_http_server.py``: resolve URLs redirected like the
Hub's CDN, Range support, every body byte counted):

- ``org/llama-8b``: a Llama-3-8B-shaped checkpoint (291 BF16 tensors, 16.1 GB) in 4 shards with its index, the data
  sparse holes on disk;
- ``org/llama-8b-ddp``: the same with every key prefixed by ``module.``;
- ``org/lora``: a rank-16 LoRA adapter of it (q/k/v/o projections, 256 tensors) with its ``adapter_config.json``.

Each command runs in a fresh process with ``HF_ENDPOINT`` pointing at the server; the figures are the bytes the
server sent for that command, its requests (redirect hops included), and the wall time (min of the rounds; the
machine is shared, so times are indicative only).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import _common as c

sys.path.insert(0, str(c.REPO / "tests"))
from _http_server import serve

LAYERS, HIDDEN, INTERMEDIATE, VOCAB, KV = 32, 4096, 14336, 128256, 1024
SHARDS = 4


def llama_entries(prefix: str = "") -> dict[str, tuple[str, tuple[int, ...]]]:
    entries: dict[str, tuple[str, tuple[int, ...]]] = {f"{prefix}model.embed_tokens.weight": ("BF16", (VOCAB, HIDDEN))}
    for i in range(LAYERS):
        layer = f"{prefix}model.layers.{i}"
        entries.update(
            {
                f"{layer}.self_attn.q_proj.weight": ("BF16", (HIDDEN, HIDDEN)),
                f"{layer}.self_attn.k_proj.weight": ("BF16", (KV, HIDDEN)),
                f"{layer}.self_attn.v_proj.weight": ("BF16", (KV, HIDDEN)),
                f"{layer}.self_attn.o_proj.weight": ("BF16", (HIDDEN, HIDDEN)),
                f"{layer}.mlp.gate_proj.weight": ("BF16", (INTERMEDIATE, HIDDEN)),
                f"{layer}.mlp.up_proj.weight": ("BF16", (INTERMEDIATE, HIDDEN)),
                f"{layer}.mlp.down_proj.weight": ("BF16", (HIDDEN, INTERMEDIATE)),
                f"{layer}.input_layernorm.weight": ("BF16", (HIDDEN,)),
                f"{layer}.post_attention_layernorm.weight": ("BF16", (HIDDEN,)),
            }
        )
    entries[f"{prefix}model.norm.weight"] = ("BF16", (HIDDEN,))
    entries[f"{prefix}lm_head.weight"] = ("BF16", (VOCAB, HIDDEN))
    return entries


def write_sharded(folder: Path, entries: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    folder.mkdir(parents=True)
    names = list(entries)
    per = -(-len(names) // SHARDS)
    weight_map: dict[str, str] = {}
    total = 0
    for part in range(SHARDS):
        shard = f"model-{part + 1:05d}-of-{SHARDS:05d}.safetensors"
        chunk = {k: entries[k] for k in names[part * per : (part + 1) * per]}
        total += c.write_sparse_safetensors(folder / shard, chunk)
        weight_map.update(dict.fromkeys(chunk, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return total


def write_lora(folder: Path) -> int:
    folder.mkdir(parents=True)
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i in range(LAYERS):
        for module, out in (("q_proj", HIDDEN), ("k_proj", KV), ("v_proj", KV), ("o_proj", HIDDEN)):
            base = f"base_model.model.model.layers.{i}.self_attn.{module}"
            entries[f"{base}.lora_A.weight"] = ("BF16", (16, HIDDEN))
            entries[f"{base}.lora_B.weight"] = ("BF16", (out, 16))
    config = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 32,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "base_model_name_or_path": "org/llama-8b",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return c.write_sparse_safetensors(folder / "adapter_model.safetensors", entries) + len(json.dumps(config))


def main() -> int:
    args = c.parse_args(__doc__ or "")
    rounds = 1 if args.quick else 3
    root = c.work_dir() / "remote"
    shutil.rmtree(root, ignore_errors=True)
    sizes = {
        "llama-8b": write_sharded(root / "org" / "llama-8b", llama_entries()),
        "llama-8b-ddp": write_sharded(root / "org" / "llama-8b-ddp", llama_entries("module.")),
        "lora": write_lora(root / "org" / "lora"),
    }
    commands = {
        "inspect hf://org/llama-8b": ["inspect", "hf://org/llama-8b"],
        "diagnose hf://org/llama-8b-ddp --expected hf://org/llama-8b": [
            "diagnose",
            "hf://org/llama-8b-ddp",
            "--expected",
            "hf://org/llama-8b",
        ],
        "check-adapter hf://org/lora --base hf://org/llama-8b": [
            "check-adapter",
            "hf://org/lora",
            "--base",
            "hf://org/llama-8b",
        ],
    }
    rows = []
    figures = {}
    with serve(root) as server:
        env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
        for label, argv in commands.items():
            walls = []
            served = (0, 0)
            for _ in range(rounds):
                before = (server.served.bytes, server.served.requests)
                start = time.perf_counter()
                measured = c.measure_command([c.KEYGUARD_CLI, *argv], env=env, check=False)
                walls.append(time.perf_counter() - start)
                if measured.returncode not in (0, 1):
                    raise RuntimeError(f"{label}: exit {measured.returncode}\n{measured.stderr[-2000:]}")
                served = (server.served.bytes - before[0], server.served.requests - before[1])
            read = [s for name, s in sizes.items() if f"org/{name}" in " ".join(argv)]
            total = sum(read)
            rows.append(
                [
                    label,
                    f"{served[0]:,}",
                    f"{total / 1e9:,.1f}",
                    f"{served[0] / total:.2e}",
                    served[1],
                    f"{min(walls):.2f}",
                ]
            )
            figures[label] = {
                "bytes": served[0],
                "requests": served[1],
                "checkpoint_bytes": total,
                "seconds_min": min(walls),
            }
    print(__doc__.splitlines()[0])
    print()
    print(c.table(["command", "bytes downloaded", "GB of files", "fraction", "requests", "wall s (min)"], rows))
    c.write_json(args.json, figures)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
