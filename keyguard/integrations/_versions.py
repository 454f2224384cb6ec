"""Which PEFT versions the integrations support, and the refusal for any other.

The X-LoRA integration replaces a private PEFT function for the duration of a build, and both integrations read
PEFT's layer and wrapper internals. From PEFT's history (``src/peft/tuners/xlora/model.py`` and the functions the
integrations call):

- ``_load_adapter_into_lora_model`` appeared in 0.13.0 and its signature and body are the same in every release
  from 0.13.0 to 0.21.2; it calls ``set_peft_model_state_dict(model, state_dict, adapter_name,
  ignore_mismatched_sizes, low_cpu_mem_usage)``, ``PeftModel._split_kwargs``, ``LoraConfig.from_pretrained``,
  ``inject_adapter`` and ``_cast_adapter_dtype``, unchanged over the same releases. (0.12 loaded experts with
  ``LoraModel.load_adapter``: another contract.)
- ``peft.utils.other.AuxiliaryTrainingWrapper`` and its ``adapter_state_dict_load_map``, from which keyguard reads
  how ``modules_to_save`` copies are saved and loaded, appeared in 0.15.0.

Three behaviours changed inside that range, and the shims below follow the installed release: which adapters may be
active together on a ``modules_to_save`` wrapper (``check_set_adapter``, 0.18), how an adapter is made trainable
(``set_adapter_trainable``: ``PeftModel.set_requires_grad``, 0.18), and whether ``bias="lora_only"`` adapters
carry their base-layer biases (``saves_lora_only_biases``, 0.21).

So the integrations support the releases that have both: 0.15.0 up to the 0.21 series. ``make compat`` installs the
newest release of each series into a throwaway virtualenv and runs the integration tests there
(docs/guides/peft-versions.md has its table).
"""

from __future__ import annotations

import re
from typing import Any, Final

from keyguard._exceptions import UnsupportedVersionError

SUPPORTED_PEFT: Final = ">=0.15,<0.22"
"""The PEFT releases the integrations support (final releases of the 0.15 to 0.21 series)."""
VERIFIED_PEFT: Final = "0.21.2"
"""The PEFT release the test suite runs against (``constraints.txt``); ``make compat`` covers the others."""
_OLDEST: Final = (0, 15)
_NEWEST: Final = (0, 21)
PEFT_REQUIREMENT: Final = f"peft{SUPPORTED_PEFT}"
"""The requirement the ``hf`` extra declares for PEFT (``pyproject.toml``; a test keeps the two equal)."""
# final releases only, optionally with a post-release or local suffix; no dev, alpha, beta or rc
_RELEASE: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:\.post\d+)?(?:\+[0-9A-Za-z.]+)?")


def check_peft_version(version: str, integration: str) -> None:
    """Refuse unless ``version`` is a final PEFT release from 0.15.0 to the 0.21 series.

    Raises:
        UnsupportedVersionError: the version is outside the supported range, or a pre-release.
    """
    match = _RELEASE.fullmatch(version.strip())
    if match is not None and _OLDEST <= (int(match[1]), int(match[2])) <= _NEWEST:
        return
    kind = "a pre-release or unrecognised version" if match is None else "outside the supported range"
    raise UnsupportedVersionError(
        f"{integration} supports PEFT {SUPPORTED_PEFT} (0.15.0 to 0.21.x; the test suite runs {VERIFIED_PEFT});"
        f" the installed PEFT is {version!r}, {kind}. keyguard relies on PEFT internals that change between releases"
        f" and refuses rather than guess: install a supported PEFT, or load without keyguard."
    )


def saves_lora_only_biases(version: str) -> bool:
    """Whether this PEFT saves (and so loads) the base-layer biases of an adapter with ``bias="lora_only"``.

    Before 0.21 ``get_peft_model_state_dict`` looked for ``<module>.bias`` next to the LoRA factors, while the bias
    lives at ``<module>.base_layer.bias``: nothing was saved. PEFT 0.21 (the state-dict refactor, peft#3490) saves
    ``base_layer.bias``. keyguard expects what the installed PEFT saves.
    """
    match = _RELEASE.fullmatch(version.strip())
    return match is None or (int(match[1]), int(match[2])) >= (0, 21)


def check_set_adapter(wrapper: Any, names: list[str]) -> None:
    """Raise ``ValueError`` when PEFT would refuse to make ``names`` active together on an auxiliary wrapper
    (``modules_to_save``), as X-LoRA does with all its experts.

    PEFT 0.18 added ``AuxiliaryTrainingWrapper.check_set_adapter``, which refuses only when several of the names have a
    copy in that wrapper. Before, ``_set_adapter`` refused any list of more than one name as soon as the model had
    such a wrapper at all: X-LoRA could not be built over a model with ``modules_to_save``.
    """
    check = getattr(wrapper, "check_set_adapter", None)
    if check is not None:
        check(names)
    elif len(names) > 1:
        raise ValueError("Only one adapter can be set at a time for modules_to_save")


def set_adapter_trainable(peft_model: Any, adapter_name: str) -> None:
    """Make ``adapter_name``'s parameters trainable, as ``PeftModel.from_pretrained(..., is_trainable=True)`` does.

    PEFT 0.18 has ``PeftModel.set_requires_grad``; before, the adapter's own parameters (the ones named with the
    adapter, such as ``lora_A.<name>.weight``) are switched on directly.
    """
    if hasattr(type(peft_model), "set_requires_grad"):  # never PeftModel.__getattr__, which forwards to the model
        peft_model.set_requires_grad(adapter_name)
        return
    marker = f".{adapter_name}."
    for name, parameter in peft_model.named_parameters():
        if marker in f".{name}.":
            parameter.requires_grad_(True)


def installed_peft() -> str:
    """The installed PEFT's version string."""
    import peft

    return str(peft.__version__)
