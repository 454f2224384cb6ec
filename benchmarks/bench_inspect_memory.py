"""Extra memory (peak RSS) of reading the keys of a checkpoint larger than 1 GB, safetensors and PyTorch pickle.

Target: reading keys costs memory in proportion to the number of tensors, not to the data -- the extra peak RSS
is small compared to the file size.

Each measurement is one fresh process; its peak RSS (VmHWM, from wait4) minus the peak RSS of a baseline process
doing the same imports without reading anything. Reading and baseline processes are interleaved over the rounds.
For scale, a reference is measured too: reading the whole safetensors file into one ``bytes``, ``torch.load`` of
the pickle without ``mmap``, and ``json.loads`` of the many-tensor header.

The two 1.17 GB files are real (written byte for byte, not sparse); a third case, a 94,000-tensor LoRA header on a
sparse file, shows that memory follows the number of tensors. All are deleted at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys

import _common as c

FULL_ROUNDS = 5
QUICK_ROUNDS = 2

N_TENSORS = 40
SHAPE = (7168, 2048)  # BF16: 29,360,128 bytes (28 MiB) each, 1.17 GB in all
NAMES = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(N_TENSORS)]

_WRITE_PICKLE = """\
import sys
import torch
path, shape, names = sys.argv[1], (int(sys.argv[2]), int(sys.argv[3])), sys.argv[4:]
pattern = torch.arange(-(1 << 19), 1 << 19, dtype=torch.int16)  # 2 MiB of varied bit patterns
state = {}
for name in names:
    flat = torch.empty(shape, dtype=torch.bfloat16).view(-1)
    bits = flat.view(torch.int16)
    for start in range(0, bits.numel(), pattern.numel()):
        piece = bits[start : start + pattern.numel()]
        piece.copy_(pattern[: piece.numel()])
    state[name] = flat.view(shape)
torch.save(state, path)
"""

_READ = "import sys, keyguard{extra}; keys = keyguard.read_keys(sys.argv[1]); print(len(keys))"
_BASE = "import keyguard{extra}"
_CLI_BASE = "import keyguard.cli{extra}"


def write_pickle(path: str) -> None:
    """torch.save a 40-tensor state dict in a separate process (it holds the 1.17 GB while saving)."""
    subprocess.run(
        [c.PYTHON, "-c", _WRITE_PICKLE, path, str(SHAPE[0]), str(SHAPE[1]), *NAMES],
        check=True,
        cwd=c.REPO,
    )


def commands(path: str, *, torch: bool, scale: tuple[str, str]) -> dict[str, list[str]]:
    """The processes to measure, in order: baseline, read_keys, CLI baseline, CLI, a reference for scale."""
    extra = ", torch" if torch else ""
    label, code = scale
    return {
        "baseline: " + _BASE.format(extra=extra): c.python_command(_BASE.format(extra=extra)),
        "keyguard.read_keys(path)": c.python_command(_READ.format(extra=extra), path),
        "baseline: " + _CLI_BASE.format(extra=extra): c.python_command(_CLI_BASE.format(extra=extra)),
        "keyguard inspect path": [c.KEYGUARD_CLI, "inspect", path],
        "for scale: " + label: c.python_command(code, path),
    }


# References, with the same imports as the first baseline so that the extra is the reading alone.
SCALE_READ_FILE = (
    "read the whole file",
    f"import sys, keyguard\ndata = open(sys.argv[1], 'rb').read()\nprint(len(data), 'bytes,', {N_TENSORS}, 'tensors')",
)
SCALE_TORCH_LOAD = (
    "torch.load, no mmap",
    "import sys, keyguard, torch\nstate = torch.load(sys.argv[1], weights_only=True)\nprint(len(state))",
)
SCALE_JSON_HEADER = (
    "json.loads of the header",
    "import sys, json, keyguard\nwith open(sys.argv[1], 'rb') as f:\n"
    "    header = json.loads(f.read(int.from_bytes(f.read(8), 'little')))\nprint(len(header))",
)


def report(
    title: str, size: int, runs: dict[str, list[c.Measured]], *, tensors: int = N_TENSORS
) -> list[dict[str, object]]:
    _check_output(runs, tensors)
    names = list(runs)
    # Pairs: (measurement, its baseline). The reference for scale has the read_keys baseline's imports.
    baseline_of = {names[1]: names[0], names[3]: names[2], names[4]: names[0]}
    rows: list[list[str]] = []
    figures: list[dict[str, object]] = []
    for name in names:
        peaks = c.Stats([float(m.peak_rss) for m in runs[name]])
        walls = c.Stats([m.wall for m in runs[name]])
        base_name = baseline_of.get(name)
        if base_name is None:
            rows.append([name, c.mb(peaks.min), c.mb(peaks.median), "", "", "", c.ms(walls.median)])
            figures.append({"name": name, "peak_min": peaks.min, "peak_median": peaks.median})
            continue
        base = c.Stats([float(m.peak_rss) for m in runs[base_name]])
        extra_median = peaks.median - base.median
        extra_min = peaks.min - base.min
        rows.append(
            [
                name,
                c.mb(peaks.min),
                c.mb(peaks.median),
                c.mb(extra_min),
                c.mb(extra_median),
                f"{extra_median / size * 100:.2f}%",
                c.ms(walls.median),
            ]
        )
        figures.append(
            {
                "name": name,
                "peak_min": peaks.min,
                "peak_median": peaks.median,
                "extra_min": extra_min,
                "extra_median": extra_median,
                "file_size": size,
            }
        )
    print(f"\n{title}: {size / 1e9:.2f} GB, {tensors:,} tensors")
    headers = ["process", "peak min MB", "peak median MB", "extra min MB", "extra median MB", "of file", "wall ms"]
    print(c.table(headers, rows))
    return figures


def _check_output(runs: dict[str, list[c.Measured]], tensors: int) -> None:
    """Every reading process must have found all the tensors (a failed read would look cheap)."""
    for name in (n for n in runs if not n.startswith("baseline")):
        for m in runs[name]:
            if str(tensors) not in m.stdout and f"{tensors:,}" not in m.stdout:
                raise AssertionError(f"{name}: expected {tensors} tensors in the output, got:\n{m.stdout[:500]}")


def main(argv: list[str] | None = None) -> int:
    args = c.parse_args(__doc__.splitlines()[0], argv)
    rounds = QUICK_ROUNDS if args.quick else FULL_ROUNDS
    work = c.work_dir()
    st_path = str(work / "memory_1p1gb.safetensors")
    pt_path = str(work / "memory_1p1gb.pt")
    lora_path = str(work / "memory_lora_many_tensors.safetensors")
    print(f"== bench_inspect_memory: peak RSS of reading keys ({c.environment()}, quick={args.quick})")
    snapshot = c.code_snapshot()
    print(c.code_version())
    floor = c.measure_command(["/bin/true"]).peak_rss
    print(f"(RSS floor of the measuring wrapper, /bin/true: {c.mb(floor)} MB; all processes here are far above it)")
    figures: dict[str, object] = {}
    try:
        size = c.write_filled_safetensors(st_path, dict.fromkeys(NAMES, ("BF16", SHAPE)))
        if c.disk_usage(st_path) < size - 4096:
            raise AssertionError("the safetensors file came out sparse")
        runs = c.interleaved_commands(commands(st_path, torch=False, scale=SCALE_READ_FILE), rounds)
        figures["safetensors"] = report("(a) safetensors", size, runs)
        os.unlink(st_path)

        write_pickle(pt_path)
        size = os.path.getsize(pt_path)
        runs = c.interleaved_commands(commands(pt_path, torch=True, scale=SCALE_TORCH_LOAD), rounds)
        figures["pickle"] = report("(b) PyTorch zip pickle (torch.save)", size, runs)

        # Memory grows with the number of tensors, not the data: the many-tensor case, on a sparse file.
        size = c.write_sparse_safetensors(lora_path, c.deepseek_lora_entries())
        runs = c.interleaved_commands(commands(lora_path, torch=False, scale=SCALE_JSON_HEADER), rounds)
        figures["many_tensors"] = report(
            f"(c) {c.DEEPSEEK_LORA_TENSORS:,}-tensor DeepSeek-V3 LoRA safetensors (sparse file,"
            f" {c.header_length(lora_path) / 1e6:.1f} MB header)",
            size,
            runs,
            tensors=c.DEEPSEEK_LORA_TENSORS,
        )
        print(f"\n({rounds} interleaved rounds; extra = peak minus the peak of the baseline process above it)")
        c.warn_if_code_changed(snapshot)
        c.write_json(args.json, figures)
    finally:
        for path in (st_path, pt_path, lora_path):
            if os.path.exists(path):
                os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
