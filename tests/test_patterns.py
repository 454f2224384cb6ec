"""Numbered blocks collapsed into patterns: ``model.layers.{0..31}.mlp.up_proj.weight``."""

from __future__ import annotations

import itertools
import re

from hypothesis import example, given
from hypothesis import strategies as st

from keyguard._patterns import (
    HOLE,
    KeyGroup,
    collapse,
    pattern_of,
    render_numbers,
    summarize_patterns,
    template,
    templates,
)


def test_template_examples() -> None:
    assert template("model.layers.3.mlp.experts.17.w1") == (f"model.layers.{HOLE}.mlp.experts.{HOLE}.w1", (3, 17))
    assert template("lm_head.weight") == ("lm_head.weight", ())
    assert template("0.weight") == (f"{HOLE}.weight", (0,))
    assert template("blocks.12") == (f"blocks.{HOLE}", (12,))
    assert template("7") == (HOLE, (7,))
    # digits inside a name are not block numbers
    assert template("conv2d.weight") == ("conv2d.weight", ())
    assert template("layer1.0.conv1.weight") == (f"layer1.{HOLE}.conv1.weight", (0,))
    assert template("a.10b.3") == (f"a.10b.{HOLE}", (3,))
    assert template("h.0.1.w") == (f"h.{HOLE}.{HOLE}.w", (0, 1))


def test_template_keeps_zero_padded_segments() -> None:
    # "01" is a name, not the index 1: as an index it would be rendered back as "1", another key
    assert template("blocks.01.weight") == ("blocks.01.weight", ())
    assert template("blocks.00.weight") == ("blocks.00.weight", ())
    groups = collapse(["blocks.01.w", "blocks.1.w"])
    assert [g.pattern for g in groups] == ["blocks.01.w", "blocks.1.w"]


def test_render_numbers() -> None:
    assert render_numbers(range(32)) == "{0..31}"
    assert render_numbers([0, 2, 5, 6, 7, 8, 9]) == "{0,2,5..9}"
    assert render_numbers([9, 5, 7, 0, 8, 2, 6, 6]) == "{0,2,5..9}"  # any order, duplicates ignored
    assert render_numbers([4]) == "4"
    assert render_numbers([3, 4]) == "{3,4}"
    assert render_numbers([1, 3]) == "{1,3}"
    assert render_numbers([0, 1, 2]) == "{0..2}"
    assert render_numbers([]) == "{}"


def test_long_lists_are_summarised() -> None:
    assert render_numbers(range(0, 200, 2)) == "{0..198: 100 of 199}"
    missing_some = [i for i in range(256) if i not in (17, 99, 200)]
    assert render_numbers(missing_some) == "{0..255: 253 of 256}"
    assert len(render_numbers(range(0, 10**6, 3))) < 40
    assert render_numbers(missing_some, limit=100) == "{0..16,18..98,100..199,201..255}"


def expand(rendered: str) -> set[int]:
    """Parse a non-summarised rendering back into its numbers."""
    if not rendered.startswith("{"):
        return {int(rendered)}
    out: set[int] = set()
    for part in filter(None, rendered[1:-1].split(",")):
        low, _, high = part.partition("..")
        out.update(range(int(low), int(high or low) + 1))
    return out


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1, max_size=60))
def test_render_numbers_is_exact_or_says_it_summarises(values: set[int]) -> None:
    text = render_numbers(values, limit=10_000)
    assert expand(text) == values
    short = render_numbers(values)
    if ":" in short:
        assert short == f"{{{min(values)}..{max(values)}: {len(values)} of {max(values) - min(values) + 1}}}"
    else:
        assert expand(short) == values
        assert len(short) <= 24 + 2


def test_collapse_full_grid() -> None:
    keys = [f"model.layers.{i}.experts.{e}.w{k}" for i in range(4) for e in range(8) for k in (1, 2)]
    groups = collapse(keys)
    assert [g.pattern for g in groups] == [
        "model.layers.{0..3}.experts.{0..7}.w1",
        "model.layers.{0..3}.experts.{0..7}.w2",
    ]
    assert all(g.complete and g.count == 32 for g in groups)
    assert groups[0].keys == keys[0::2]


def test_collapse_partial_grid() -> None:
    keys = [f"layers.{i}.experts.{e}.w" for i in range(3) for e in range(4) if (i, e) != (1, 2)]
    (group,) = collapse(keys)
    assert group.pattern == "layers.{0..2}.experts.{0..3}.w"
    assert group.count == 11
    assert not group.complete
    # a diagonal: every number appears, few combinations do
    (diagonal,) = collapse([f"a.{i}.b.{i}" for i in range(5)])
    assert diagonal.pattern == "a.{0..4}.b.{0..4}"
    assert not diagonal.complete


def test_collapse_by_extra_value() -> None:
    shapes = {"l.0.w": (4, 4), "l.1.w": (4, 4), "l.2.w": (8, 4), "head": (2,)}
    groups = collapse(shapes, shapes.__getitem__)
    assert [(g.pattern, g.extra, g.count) for g in groups] == [
        ("l.{0,1}.w", (4, 4), 2),
        ("l.2.w", (8, 4), 1),
        ("head", (2,), 1),
    ]
    assert all(isinstance(g, KeyGroup) for g in groups)


def test_collapse_keeps_first_appearance_order() -> None:
    keys = ["b.1", "a.0", "b.0", "c", "a.1"]
    assert [g.pattern for g in collapse(keys)] == ["b.{0,1}", "a.{0,1}", "c"]


def test_collapse_nothing() -> None:
    assert collapse([]) == []
    assert pattern_of([]) == ""


def test_pattern_of() -> None:
    assert pattern_of([f"h.{i}.attn.c_attn.weight" for i in range(12)]) == "h.{0..11}.attn.c_attn.weight"
    assert pattern_of(["a.0.b", "a.1.b", "x"]) == "a.{0,1}.b (+1 more patterns)"


grid_keys = st.builds(
    lambda layers, experts, drop: [
        f"m.layers.{i}.experts.{e}.w"
        for n, (i, e) in enumerate(itertools.product(sorted(layers), sorted(experts)))
        if n not in drop
    ],
    st.sets(st.integers(0, 40), min_size=1, max_size=6),
    st.sets(st.integers(0, 300), min_size=1, max_size=6),
    st.sets(st.integers(0, 35), max_size=5),
)


@given(grid_keys)
def test_collapse_properties(keys: list[str]) -> None:
    groups = collapse(keys)
    if not keys:
        assert groups == []
        return
    (group,) = groups
    assert group.keys == keys
    layers = {int(re.search(r"layers\.(\d+)", k).group(1)) for k in keys}  # type: ignore[union-attr]
    experts = {int(re.search(r"experts\.(\d+)", k).group(1)) for k in keys}  # type: ignore[union-attr]
    assert group.numbers == [layers, experts]
    assert group.complete == (len(keys) == len(layers) * len(experts))
    assert group.pattern == f"m.layers.{render_numbers(layers)}.experts.{render_numbers(experts)}.w"


@given(st.lists(st.from_regex(r"[a-z]{1,3}(\.(0|[1-9][0-9]{0,2}|[a-z_]{1,4}))*", fullmatch=True), max_size=30))
def test_every_key_lands_in_exactly_one_group(keys: list[str]) -> None:
    unique = list(dict.fromkeys(keys))
    groups = collapse(unique)
    assert sorted(k for g in groups for k in g.keys) == sorted(unique)
    for g in groups:
        for key in g.keys:
            shape, numbers = template(key)
            assert shape == g.template
            assert all(n in values for n, values in zip(numbers, g.numbers))


KEYS = st.from_regex(r"[a-z]{1,3}(\.(0|[1-9][0-9]{0,2}|0[0-9]|[a-z_]{1,4}))*", fullmatch=True)


@given(st.lists(st.one_of(KEYS, st.text(st.sampled_from("a.01\n\x00"), max_size=6)), max_size=40), st.integers(0, 8))
@example(keys=[f"m.{i}.w" for i in range(5)] + ["x", "m.a.w", "m.7.w"], limit=1)
@example(keys=["a.1\nb", "a.2\nb", "c.3"], limit=2)
def test_summarize_patterns_is_collapse_cut_short(keys: list[str], limit: int) -> None:
    """What a finding shows (the first patterns and the number of groups) is what ``collapse`` gives."""
    keys = list(dict.fromkeys(keys))
    groups = collapse(keys)
    assert summarize_patterns(keys, limit) == ([g.pattern for g in groups[:limit]], len(groups))


def test_keys_holding_a_nul_are_grouped_alone() -> None:
    # a NUL is what a template uses for a numbered segment: such a key must not be taken for one
    keys = ["a\x00", "a.5", "a.6", "a.\x00", "\x00", "0", "1"]
    groups = collapse(keys)
    assert [g.pattern for g in groups] == ["a\x00", "a.{5,6}", "a.\x00", "\x00", "{0,1}"]
    assert [g.keys for g in groups] == [["a\x00"], ["a.5", "a.6"], ["a.\x00"], ["\x00"], ["0", "1"]]
    assert summarize_patterns(keys, 3) == (["a\x00", "a.{5,6}", "a.\x00"], 5)


@given(
    st.lists(st.one_of(KEYS, st.text(st.sampled_from("a.01\n\x00"), max_size=6)), max_size=40),
    st.integers(0, 8),
    st.integers(1, 7),
)
@example(keys=["a.1", "b", "a.2", "c", "a.3", "b.4"], limit=2, chunk=2)
def test_summarize_patterns_read_in_chunks_agrees(keys: list[str], limit: int, chunk: int) -> None:
    """Reading the keys a few at a time (as for a million keys) shows the same patterns in the same order."""
    keys = list(dict.fromkeys(keys))
    groups = collapse(keys)
    assert summarize_patterns(keys, limit, chunk=chunk) == ([g.pattern for g in groups[:limit]], len(groups))


@given(st.lists(st.one_of(KEYS, st.text(st.sampled_from("a.01\n\x00"), max_size=6)), max_size=40), st.integers(1, 7))
@example(keys=["a.1", "b\x00.2", "c.3\n.4", "d.05.6"], chunk=2)
def test_templates_in_bulk_are_template_one_by_one(keys: list[str], chunk: int) -> None:
    assert templates(keys, chunk=chunk) == [template(k)[0] for k in keys]


def _collapse_one_by_one(keys: list[str]) -> list[tuple[str, list[str], list[set[int]]]]:
    """``collapse`` written the slow, obvious way: ``template`` on each key, groups in order of first appearance."""
    groups: dict[str, tuple[list[str], list[set[int]]]] = {}
    for key in keys:
        shape, numbers = template(key)
        if HOLE in key:
            shape, numbers = "\x00\x00" + key, ()
        members, values = groups.setdefault(shape, ([], [set() for _ in numbers]))
        members.append(key)
        for seen, number in zip(values, numbers):
            seen.add(number)
    return [(shape.removeprefix("\x00\x00"), members, values) for shape, (members, values) in groups.items()]


# names with digits inside ("fc1"), zero-padded and non-ASCII digits, and the characters the bulk paths reserve
MIXED_KEYS = st.one_of(
    KEYS,
    st.lists(
        st.sampled_from(["a", ".", "0", "1", "7", "12", "fc1", "05", "\u0663", "é", "\x01", "\x02"]), max_size=8
    ).map("".join),
    st.text(st.sampled_from("a.01\n\x00"), max_size=6),
)


@given(st.lists(MIXED_KEYS, max_size=40), st.integers(1, 9))
@example(keys=["m.3.fc1.w", "m.12.fc1.w", "m.3.fc2.w", "m.05.w", "m.0.w", "0.a", "a.10", "x.1a.y"], chunk=9)
@example(keys=["a.\x01.b", "a.1.b", "a.\x02", "a.0"], chunk=9)
@example(keys=["l.\u0663.w", "l.3.w", "é.1", "é.2"], chunk=9)
def test_collapse_is_template_one_by_one(keys: list[str], chunk: int) -> None:
    """The bulk paths (digit classes, the regex split, the digit runs) agree with ``template`` key by key."""
    keys = list(dict.fromkeys(keys))
    expected = _collapse_one_by_one(keys)
    assert [(g.template, g.keys, g.numbers) for g in collapse(keys)] == expected
    assert summarize_patterns(keys, 3, chunk=chunk)[1] == len(expected)
    assert templates(keys, chunk=chunk) == [template(k)[0] for k in keys]
