"""A report does not depend on ``PYTHONHASHSEED``: sets of keys (same-name keys held for a shape mismatch, exact
matches, open model keys, keys two rules read differently) are walked in the order of their side, not in the order
of their string hashes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

CASE = {  # two keys of the same name with other shapes (held), a fused-looking pair, an unprefixed extra
    "c": {"embed.weight": [[12, 8], "F32"], "layers.0.mlp.fc2.weight": [[8, 16], "F32"], "weight": [[12, 8], "F32"]},
    "e": {
        "embed.weight": [[13, 9], "F32"],
        "layers.0.attn.k_proj.weight": [[8, 8], "F32"],
        "layers.0.attn.k_proj.bias": [[8], "F32"],
        "layers.0.mlp.fc1.weight": [[8, 16], "F32"],
        "layers.0.mlp.fc2.weight": [[9, 17], "F32"],
    },
}

# two prefix rules that each explain keys of their own read three keys differently (``module.`` -> ``model.`` or
# stripped): the keys both rules claim were walked as a set
CONTESTED = {
    "c": {
        "module.layers.1.attn.q_proj.bias": [[8], "F32"],
        "module.layers.0.mlp.fc1.weight": [[16, 8], "F32"],
        "module.layers.0.mlp.fc2.weight": [[8, 16], "F32"],
        "module.layers.0.attn.k_proj.bias": [[8], "F32"],
        "module.layers.1.attn.o_proj.bias": [[8], "F32"],
        "module.layers.1.mlp.fc2.weight": [[8, 16], "F32"],
        "module.layers.0.attn.v_proj.weight": [[8, 8], "F32"],
        "module.layers.1.mlp.fc1.weight": [[16, 8], "F32"],
        "module.layers.1.attn.o_proj.weight": [[8, 8], "F32"],
        "module.layers.0.attn.q_proj.bias": [[8], "F32"],
        "module.layers.0.attn.k_proj.weight": [[8, 8], "F32"],
        "module.layers.1.attn.v_proj.weight": [[8, 8], "F32"],
        "module.layers.1.attn.q_proj.weight": [[8, 8], "F32"],
        "module.layers.0.attn.q_proj.weight": [[8, 8], "F32"],
        "module.layers.1.attn.k_proj.weight": [[8, 8], "F32"],
        "module.embed.weight": [[10, 8], "F32"],
    },
    "e": {
        "model.embed.weight": [[10, 8], "F32"],
        "model.layers.0.attn.q_proj.weight": [[8, 8], "F32"],
        "model.layers.0.attn.q_proj.bias": [[8], "F32"],
        "model.layers.0.attn.v_proj.weight": [[8, 8], "F32"],
        "model.layers.0.attn.k_proj.weight": [[8, 8], "F32"],
        "layers.0.attn.k_proj.bias": [[8], "F32"],
        "model.layers.0.mlp.fc1.weight": [[8, 16], "F32"],
        "model.layers.0.mlp.fc2.weight": [[8, 16], "F32"],
        "model.layers.1.attn.v_proj.weight": [[8, 8], "F32"],
        "model.layers.0.attn.o_proj.weight": [[8, 8], "F32"],
        "model.layers.0.attn.o_proj.bias": [[8], "F32"],
        "layers.0.attn.k_proj.weight": [[8, 8], "F32"],
        "model.layers.1.attn.q_proj.weight": [[8, 8], "F32"],
        "model.layers.1.attn.q_proj.bias": [[8], "F32"],
        "layers.0.mlp.fc1.weight": [[16, 8], "F32"],
        "layers.0.mlp.fc2.weight": [[8, 16], "F32"],
    },
}

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import keyguard
    from keyguard.sources import TensorInfo
    case = json.loads(sys.argv[1])
    side = lambda keys: {k: TensorInfo(tuple(shape), dtype) for k, (shape, dtype) in keys.items()}
    print(keyguard.diagnose(side(case["c"]), side(case["e"])).model_dump_json())
    """
)


@pytest.mark.parametrize(("case", "code"), [(CASE, "KG301"), (CONTESTED, "KG403")], ids=["held", "contested"])
def test_the_report_is_the_same_under_every_hash_seed(
    case: dict[str, Any], code: str, offline_env: dict[str, str], tmp_path: Path
) -> None:
    reports = set()
    for seed in ("1", "2", "3", "4", "5", "6"):
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, json.dumps(case)],
            env={**offline_env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
            check=True,
        )
        reports.add(done.stdout)
    assert len(reports) == 1, "the report changes with PYTHONHASHSEED"
    report = json.loads(reports.pop())
    assert code in {f["code"] for f in report["findings"]}  # the held keys, the contested ones, were reported
