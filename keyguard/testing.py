"""pytest helpers for teams that test their exports: fail with the whole rendered report, not a bare ``assert``.

```python
from keyguard.testing import assert_adapter_loadable, assert_keys_match


def test_export(tmp_path):
    export(model, tmp_path)  # your code
    assert_keys_match(tmp_path / "model.safetensors", "keys.json")  # a manifest made with `keyguard snapshot`
    assert_adapter_loadable(tmp_path / "adapter", "base-keys.json")
```

Each helper returns the ``Report`` when it passes, so a test can check more (``report.summary``, warnings, ...).
"""

from __future__ import annotations

import os
from typing import Any

from keyguard.report._kinds import Severity
from keyguard.report._model import Report
from keyguard.sources._resolve import Source

__all__ = ["assert_adapter_loadable", "assert_keys_match"]


def assert_keys_match(
    checkpoint: Source,
    expected: Source,
    *,
    fail_on: Severity | str = Severity.error,
    format: str = "table",
    **options: Any,
) -> Report:
    """Assert that ``checkpoint`` loads into what ``expected`` describes: no finding at or above ``fail_on``.

    Args:
        checkpoint: anything ``keyguard.read_keys`` accepts (a file, a folder, a state dict, a module, ...).
        expected: what the model expects (a module, a ``config.json`` folder, a manifest, ...).
        fail_on: the severity that fails the assertion (``"error"``, or ``"warning"`` to be strict).
        format: how the report is rendered into the assertion message (``table``, ``markdown``, ``json``, ...).
        **options: passed to ``keyguard.diagnose`` (``ignore=[...]``, ``container=...``, ``architecture=...``).

    Returns:
        The report, when the assertion holds.

    Raises:
        AssertionError: findings at or above ``fail_on``; the message is the rendered report.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, then the report
    from keyguard.engine import diagnose

    report = diagnose(checkpoint, expected, **options)
    _check(report, fail_on, format)
    return report


def assert_adapter_loadable(
    adapter_dir: str | os.PathLike[str],
    base: Source,
    *,
    fail_on: Severity | str = Severity.error,
    format: str = "table",
    **options: Any,
) -> Report:
    """Assert that the PEFT adapter in ``adapter_dir`` loads into ``base``: no finding at or above ``fail_on``.

    Args:
        adapter_dir: the exported adapter folder.
        base: the base model: a checkpoint, a ``config.json`` folder, or a manifest made with ``keyguard snapshot``.
        fail_on: the severity that fails the assertion (``"error"``, or ``"warning"`` to be strict).
        format: how the report is rendered into the assertion message.
        **options: passed to ``keyguard.check_adapter`` (``check_values=True``, ``xlora=True``, ...).

    Returns:
        The report, when the assertion holds.

    Raises:
        AssertionError: findings at or above ``fail_on``; the message is the rendered report.
    """
    __tracebackhide__ = True
    from keyguard.adapter_checks import check_adapter

    report = check_adapter(adapter_dir, base, **options)
    _check(report, fail_on, format)
    return report


def _check(report: Report, fail_on: Severity | str, format: str) -> None:
    __tracebackhide__ = True
    judged = report.failing_on(fail_on)
    if judged.exit_code():
        raise AssertionError(judged.render(format))
