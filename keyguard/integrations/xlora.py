"""Load standard LoRA adapters into PEFT's X-LoRA as experts, through a diagnosis, and verify them (peft#2132).

Supported: PEFT 0.15.0 to 0.21.x (``make compat``), tested with 0.21.2; any other version is refused with
``UnsupportedVersionError``.

```python
from keyguard.integrations import xlora

print(xlora.preflight(base_model, config))  # will each expert load, stock and through keyguard?
model = xlora.get_peft_model(base_model, config)  # drop-in for peft.get_peft_model, every expert verified
print(xlora.verify(model, config))  # check a model built elsewhere
```

Importing this module imports PEFT.
"""

from __future__ import annotations

from keyguard.integrations._adapters import Strategy
from keyguard.integrations._versions import SUPPORTED_PEFT, VERIFIED_PEFT
from keyguard.integrations._xlora_guard import (
    LOADER_NAME,
    XLORA_MODULE,
    GuardSession,
    LoadedExpert,
    check_supported,
    get_peft_model,
    guard,
)
from keyguard.integrations._xlora_preflight import expert_keys, preflight, stock_rewrite
from keyguard.integrations._xlora_verify import verify

__all__ = [
    "LOADER_NAME",
    "SUPPORTED_PEFT",
    "VERIFIED_PEFT",
    "XLORA_MODULE",
    "GuardSession",
    "LoadedExpert",
    "Strategy",
    "check_supported",
    "expert_keys",
    "get_peft_model",
    "guard",
    "preflight",
    "stock_rewrite",
    "verify",
]
