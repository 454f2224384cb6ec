"""What a source holds, summarised for people (``keyguard inspect``): counts, sizes, dtypes, grouped keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyguard._dtypes import dtype_label
from keyguard._patterns import collapse
from keyguard._printable import printable
from keyguard._record import Record
from keyguard.sources._keyset import KeySet


@dataclass(frozen=True, kw_only=True)
class KeyGroupSummary(Record):
    """Keys sharing a pattern, a shape and a dtype."""

    pattern: str
    shape: list[int] | None
    dtype: str | None
    count: int
    complete: bool


@dataclass(frozen=True, kw_only=True)
class SourceSummary(Record):
    """The result of ``keyguard.summarize``; ``keyguard inspect --format json`` prints it."""

    format: str = "keyguard.inspect/v1"
    source: str | None
    source_format: str
    tensors: int
    parameters: int
    bytes: int
    shapes_known: bool
    dtypes: dict[str, int]
    files: list[str]
    metadata: dict[str, str]
    unwrapped: str | None
    architecture: str | None
    tied: list[list[str]]
    non_persistent: list[str]
    notes: list[str]
    adapter_config: dict[str, Any] | None
    groups: list[KeyGroupSummary]


def summarize(keys: KeySet) -> SourceSummary:
    """Summarise a ``KeySet``: totals, dtypes and the keys grouped with numbered blocks collapsed."""
    groups = collapse(keys, lambda key: (keys[key].shape, keys[key].dtype))
    return SourceSummary(
        source=None if keys.location is None else printable(keys.location),
        source_format=keys.format,
        tensors=len(keys),
        parameters=keys.num_parameters,
        bytes=keys.total_bytes,
        shapes_known=keys.shapes_known,
        dtypes={dtype_label(k): v for k, v in keys.dtype_counts().most_common()},
        files=[printable(name) for name in keys.files],
        metadata=dict(keys.metadata),
        unwrapped=keys.unwrapped,
        architecture=keys.architecture,
        tied=[list(g) for g in keys.tied],
        non_persistent=sorted(keys.non_persistent),
        notes=list(keys.notes),
        adapter_config=keys.adapter.model_dump(mode="json", exclude_defaults=True)
        if keys.adapter is not None
        else None,
        groups=[
            KeyGroupSummary(
                pattern=g.pattern,
                shape=list(g.extra[0]) if g.extra[0] is not None else None,
                dtype=g.extra[1],
                count=g.count,
                complete=g.complete,
            )
            for g in groups
        ],
    )


def human_count(n: int) -> str:
    """``1234567`` -> ``1.23M``."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """``2147483648`` -> ``2.00 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def render_summary(summary: SourceSummary, *, max_groups: int | None = 40, width: int = 100) -> str:
    """Render a summary as a readable screen: a header block, then one row per key group, fitting ``width``."""
    head: list[tuple[str, str]] = [
        ("Source", f"{summary.source} ({summary.source_format})"),
        ("Tensors", f"{summary.tensors:,}" + (f" in {len(summary.files)} files" if len(summary.files) > 1 else "")),
    ]
    if summary.shapes_known:
        head.append(("Parameters", f"{human_count(summary.parameters)} ({summary.parameters:,})"))
        head.append(("Data", human_bytes(summary.bytes)))
    head.append(("Dtypes", ", ".join(f"{k} x{v:,}" for k, v in summary.dtypes.items())))
    if summary.architecture:
        head.append(("Architecture", summary.architecture))
    if summary.unwrapped:
        head.append(("Unwrapped", f"state dict found under {summary.unwrapped!r}"))
    if summary.metadata:
        head.append(("Metadata", ", ".join(f"{k}={_short(v)}" for k, v in summary.metadata.items())))
    if summary.tied:
        head.append(("Tied", "; ".join(" = ".join(g) for g in summary.tied[:3]) + _more(len(summary.tied), 3)))
    if summary.non_persistent:
        head.append(("Non-persistent", ", ".join(summary.non_persistent[:3]) + _more(len(summary.non_persistent), 3)))
    if summary.adapter_config:
        cfg = summary.adapter_config
        head.append(("Adapter", ", ".join(f"{k}={_short(str(v))}" for k, v in cfg.items() if k in _ADAPTER_SHOWN)))
    for note in summary.notes:
        head.append(("Note", note))
    # every line stays shorter than `width`, so it never reaches (and wraps at) a terminal's last column
    limit = max(width - 1, _LABEL + 20)
    shown = summary.groups if max_groups is None else summary.groups[:max_groups]
    patterns = [g.pattern for g in shown]
    common = _common_prefix(patterns)
    other = max((len(_cells(g, "")[1]) + len(_cells(g, "")[2]) + len(_cells(g, "")[3]) for g in shown), default=0)
    if common and max(map(len, patterns), default=0) + other + 6 + 6 > limit:
        # shorter than cutting keys in the middle: say once what every key starts with
        head.append(("Every key", f"starts with {common} (left out below)"))
        patterns = [p[len(common) :] for p in patterns]
    lines = [line for label, value in head for line in _wrap(label, value, limit)]
    cells = [_cells(g, pattern) for g, pattern in zip(shown, patterns)]
    # give the pattern whatever the other columns (and tabulate's gaps and padding) leave of the width; stacked
    # rows when even a shortened pattern does not fit
    from keyguard.report._render import fit_table

    table = fit_table(
        [list(c) for c in cells],
        ["key pattern", "shape", "dtype", "count"],
        limit,
        align=["left", "left", "left", "right"],
        shrink=0,
        min_shrunk=_MIN_PATTERN,
    )
    lines.append("")
    lines.extend(table)
    if len(shown) < len(summary.groups):
        lines.append(f"... {len(summary.groups) - len(shown):,} more groups (--all lists every group)")
    if any(not g.complete for g in shown):
        lines.append("* not every combination of the numbered blocks shown is present")
    return "\n".join(lines)


_LABEL = 16  # width of the label column of the header block
_MIN_PATTERN = 30


def _wrap(label: str, value: str, limit: int) -> list[str]:
    """One header entry, wrapped under its value column (between words: a path or key is never split)."""
    from keyguard._console import wrap

    pieces = wrap(value, limit - _LABEL)
    return [f"{label if i == 0 else '':<{_LABEL}}{piece}".rstrip() for i, piece in enumerate(pieces)]


_ADAPTER_SHOWN = ("peft_type", "task_type", "r", "lora_alpha", "target_modules", "modules_to_save", "use_dora")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cells(group: KeyGroupSummary, pattern: str) -> tuple[str, str, str, str]:
    shape = "?" if group.shape is None else "[" + ", ".join(map(str, group.shape)) + "]"
    return pattern, shape, dtype_label(group.dtype), f"x{group.count:,}" + ("" if group.complete else "*")


def _common_prefix(patterns: list[str]) -> str:
    """The dotted segments every pattern starts with (whole segments only, and never a whole pattern)."""
    if len(patterns) < 3:
        return ""
    first, *rest = (p.split(".") for p in patterns)
    n = 0
    while n < len(first) - 1 and all(n < len(r) - 1 and r[n] == first[n] for r in rest):
        n += 1
    return "".join(segment + "." for segment in first[:n])


def _more(total: int, shown: int) -> str:
    return f" (+{total - shown} more)" if total > shown else ""
