"""check-adapter speed: a 94,000-key LoRA adapter against a manifest of its base, compared with ``keyguard diagnose``.

Inputs: the DeepSeek-V3-style adapter of ``bench_header.py`` (94,000 BF16 tensors, rank 16, data a sparse hole) saved
as a PEFT adapter folder with an ``adapter_config.json`` naming its eight target projections, and a
``keyguard.keys/v1`` manifest of the base model it fits (the 47,000 weights of the modules it adapts).

1. End to end, in fresh processes: ``keyguard check-adapter ADAPTER --base MANIFEST`` against ``keyguard diagnose
   ADAPTER --expected MANIFEST`` (same inputs; both table output). Target: at most 1.5x.
2. In process: ``keyguard.check_adapter`` against ``keyguard.diagnose`` on the same paths.
3. The same adapter exported with ``base_model.model.`` stripped (the engine explains it: one safe fix), in
   process.
4. ``keyguard check-adapter`` on the safetensors adapter and the manifest does not import torch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import _common as c

PREFIX = "base_model.model."
TARGETS = ["down_proj", "gate_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "q_a_proj", "q_b_proj", "up_proj"]


def inputs(work: str) -> tuple[str, str, str]:
    """The adapter folder, the same adapter with its prefix stripped, and the base manifest."""
    from keyguard.sources import KeySet, TensorInfo, write_manifest

    entries = c.deepseek_lora_entries()
    config = {"peft_type": "LORA", "r": c.LORA_RANK, "lora_alpha": 2 * c.LORA_RANK, "target_modules": TARGETS}
    folders = []
    for name, rename in (("adapter", lambda k: k), ("stripped", lambda k: k.removeprefix(PREFIX))):
        folder = os.path.join(work, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        c.write_sparse_safetensors(f"{folder}/adapter_model.safetensors", {rename(k): v for k, v in entries.items()})
        with open(f"{folder}/adapter_config.json", "w") as f:
            json.dump(config, f)
        folders.append(folder)
    weights: dict[str, list[int]] = {}  # module -> [out, in], from lora_B [out, r] and lora_A [r, in]
    for key, (_, shape) in entries.items():
        module, role = key[len(PREFIX) :].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        pair = weights.setdefault(module, [0, 0])
        if role == "lora_A":
            pair[1] = shape[1]
        else:
            pair[0] = shape[0]
    manifest = os.path.join(work, "base-keys.json")
    tensors = {f"{m}.weight": TensorInfo((o, i), "BF16") for m, (o, i) in weights.items()}
    write_manifest(KeySet(tensors=tensors, format="shapes", location="DeepSeek-V3-style base"), manifest)
    return folders[0], folders[1], manifest


def end_to_end(adapter: str, manifest: str, rounds: int) -> dict[str, list[c.Measured]]:
    return c.interleaved_commands(
        {
            "keyguard check-adapter": [c.KEYGUARD_CLI, "check-adapter", adapter, "--base", manifest],
            "keyguard diagnose": [c.KEYGUARD_CLI, "diagnose", adapter, "--expected", manifest, "--fail-on", "never"],
        },
        rounds,
    )


def in_process(adapter: str, stripped: str, manifest: str, rounds: int) -> dict[str, c.Stats]:
    import keyguard

    def check(folder: str) -> Any:
        report = keyguard.check_adapter(folder, manifest)
        assert report.summary.coverage_after == 1.0, report.summary
        return report

    return c.interleaved(
        {
            "keyguard.check_adapter": lambda: check(adapter),
            "keyguard.diagnose": lambda: keyguard.diagnose(adapter, manifest),
            "keyguard.check_adapter, prefix stripped": lambda: check(stripped),
        },
        rounds,
    )


def torch_free(adapter: str, manifest: str) -> bool:
    code = f"from keyguard.cli import main; main(['check-adapter', {adapter!r}, '--base', {manifest!r}])"
    return "torch" not in c.imported_modules(["-c", code])


def main(argv: list[str] | None = None) -> int:
    args = c.parse_args(__doc__ or "", argv)
    rounds = 3 if args.quick else 7
    print(c.code_version())
    print(c.environment())
    before = c.code_snapshot()
    work = os.path.join(str(c.work_dir()), "check_adapter")
    os.makedirs(work, exist_ok=True)
    figures: dict[str, Any] = {}
    try:
        adapter, stripped, manifest = inputs(work)
        e2e = end_to_end(adapter, manifest, rounds)
        base = min(m.wall for m in e2e["keyguard diagnose"])
        rows = []
        for name, runs in e2e.items():
            walls = [m.wall for m in runs]
            best, median = min(walls), c.Stats(walls).median
            rows.append([name, c.ms(best), c.ms(median), f"{best / base:.2f}x", c.mb(max(m.peak_rss for m in runs))])
        assert all(m.returncode == 0 for m in e2e["keyguard check-adapter"]), "the clean adapter must pass"
        print("\nEnd to end, fresh processes (wall time, includes interpreter start-up):")
        print(c.table(["contender", "min ms", "median ms", "ratio (min)", "peak RSS MB"], rows))
        figures["end_to_end"] = rows

        stats = in_process(adapter, stripped, manifest, rounds)
        base_s = stats["keyguard.diagnose"].min
        rows = [[name, c.ms(s.min), c.ms(s.median), f"{s.min / base_s:.2f}x"] for name, s in stats.items()]
        print("\nIn process (reading both inputs included):")
        print(c.table(["contender", "min ms", "median ms", "ratio (min)"], rows))
        figures["in_process"] = rows

        ratio = min(m.wall for m in e2e["keyguard check-adapter"]) / base
        print(f"\ncheck-adapter / diagnose, end to end: {ratio:.2f}x (target: at most 1.5x)")
        figures["ratio"] = ratio
        no_torch = torch_free(adapter, manifest)
        answer = "no" if no_torch else "YES"
        print(f"keyguard check-adapter on a safetensors adapter and a manifest imports torch: {answer}")
        figures["imports_torch"] = not no_torch
    finally:
        shutil.rmtree(work, ignore_errors=True)
        c.warn_if_code_changed(before)
    c.write_json(args.json, figures)
    return 0 if figures.get("ratio", 9) <= 1.5 and not figures.get("imports_torch", True) else 1


if __name__ == "__main__":
    sys.exit(main())
