"""Large numbered groups left doubtful: the report stays proportional to the keys (each key is offered a bounded
number of readings), and every expected key is still accounted for."""

from __future__ import annotations

from keyguard import diagnose
from keyguard.engine._doubts import _NEAREST
from keyguard.sources import TensorInfo


def _half_prefixed_half_renamed(blocks: int) -> tuple[dict[str, TensorInfo], dict[str, TensorInfo]]:
    """Odd blocks under an unknown prefix, even blocks with a segment renamed, all of one shape: the prefix lands
    half of a numbered group while the other half stays open on both sides (an offset cannot be ruled out)."""
    expected = {f"model.layers.{i // 10}.block.{i % 10}.attn.weight": TensorInfo((4, 4), "F32") for i in range(blocks)}
    checkpoint = {
        ("trunk." + key) if (i // 10) % 2 else key.replace(".attn.", ".attention."): info
        for i, (key, info) in enumerate(expected.items())
    }
    return checkpoint, expected


def test_a_doubtful_group_offers_each_key_the_nearest_blocks_only() -> None:
    checkpoint, expected = _half_prefixed_half_renamed(1000)
    report = diagnose(checkpoint, expected)
    offered = [
        readings for f in report.findings if f.code == "KG403" for readings in f.ctx.get("candidates", {}).values()
    ]
    assert offered, [f.code for f in report.findings]
    # the rule's own reading and the nearest open blocks: every open block offered to every key grew with the
    # square of the group (1,000 keys: 500 readings each)
    assert max(map(len, offered)) <= 1 + _NEAREST
    in_report = {k for f in report.findings for k in f.expected_keys} | {k for r in offered for k in r}
    assert in_report == set(expected)  # blocks offered to no key are reported, as missing
