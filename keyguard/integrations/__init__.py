"""Integrations: load adapters into other libraries' models through a diagnosis, and prove that they arrived.

- ``keyguard.integrations.xlora``: PEFT's X-LoRA (mixture of LoRA experts). A guarded loader that replaces PEFT's
  expert loader while an X-LoRA model is built, ``get_peft_model`` (a drop-in for ``peft.get_peft_model``),
  ``preflight`` (will each expert load, stock and through keyguard?) and ``verify`` (did every tensor arrive?).
- ``keyguard.integrations.peft``: ``load_adapter`` and ``verify_adapter`` for a LoRA adapter in a ``PeftModel``, and
  ``from_pretrained`` (a drop-in for ``PeftModel.from_pretrained``).
- ``keyguard.integrations.transformers``: ``diagnose`` a checkpoint the way ``from_pretrained`` loads it, and a
  guarded ``from_pretrained`` that never returns a model with weights left newly initialised.

A load that is refused or interrupted (Ctrl-C included) leaves the caller's model exactly as it was.

``import keyguard`` never imports these modules; each of them imports the library it integrates with when used.
"""

from __future__ import annotations

__all__: list[str] = []
