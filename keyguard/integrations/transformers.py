"""Diagnose a checkpoint the way transformers' ``from_pretrained`` loads it, and load it only when every weight will
arrive.

Supported: transformers 5.x, verified with 5.24.0 (its loader is replayed with its own functions; another major
version is refused with ``UnsupportedVersionError``).

```python
from transformers import LlamaForCausalLM
from keyguard.integrations import transformers as kg_tf

print(kg_tf.diagnose("./ckpt", LlamaForCausalLM))  # what from_pretrained would do, and why
model = kg_tf.from_pretrained(LlamaForCausalLM, "./ckpt")  # safe plan as key_mapping, loaded, verified
```

transformers converts some legacy layouts itself while loading (renames such as ``LayerNorm.gamma`` -> ``weight``
and Mixtral's ``block_sparse_moe`` -> ``mlp``, stacked MoE experts, the base-model prefix, tied weights, keys the
model declares obsolete). Those are reported as informational KG70x findings; the other findings say what will
really fail (shapes, failed conversions: KG709) or be silently skipped (weights left newly initialised: KG708).

Importing this module imports neither torch nor transformers; the functions do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from keyguard.integrations._hf_guard import from_pretrained
from keyguard.integrations._hf_loader import SUPPORTED_TRANSFORMERS, VERIFIED_TRANSFORMERS
from keyguard.report._model import Report

__all__ = ["SUPPORTED_TRANSFORMERS", "VERIFIED_TRANSFORMERS", "diagnose", "from_pretrained", "key_mapping"]


def diagnose(
    checkpoint: Any,
    model: Any,
    *,
    config: Any = None,
    key_mapping: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> Report:
    """Explain what ``model_class.from_pretrained(checkpoint)`` would do with the checkpoint's keys.

    Args:
        checkpoint: anything ``keyguard.read_keys`` reads (a model folder, a safetensors file, a sharded index, a
            pickle, a DCP folder...); only keys, shapes and dtypes are read.
        model: a transformers model class (``LlamaForCausalLM``, or an Auto class), its name, or a model instance
            (its class and config are used).
        config: the model's config: a ``PretrainedConfig``, or a ``config.json`` file or the folder holding one.
            Default: the instance's config, else the ``config.json`` beside the checkpoint.
        key_mapping: a ``key_mapping`` you pass to ``from_pretrained`` yourself (applied first, as transformers does).
        ignore: regular expressions of keys to leave out of the diagnosis.

    Returns:
        A ``Report``: KG70x for what the loader handles itself, the usual findings for what is left, KG708 / KG709
        for what ``from_pretrained`` would do, and ``report.plan``: the safe plan, which ``from_pretrained`` here
        applies through ``key_mapping``.

    Raises:
        UnsupportedVersionError: the installed transformers is not 5.x.
        SourceError: the checkpoint or the config cannot be read.
    """
    from keyguard.integrations._hf_guard import diagnosis

    return diagnosis(checkpoint, model, config=config, key_mapping=key_mapping, ignore=ignore).report


def key_mapping(report: Report) -> dict[str, str]:
    """The safe plan of a ``diagnose`` report as a ``key_mapping`` for ``from_pretrained`` (renames only)."""
    from keyguard.fixes._emit import export_plan

    keys = [k for finding in report.findings for k in finding.checkpoint_keys]
    mapping, _ = export_plan(report.plan, keys)
    return mapping
