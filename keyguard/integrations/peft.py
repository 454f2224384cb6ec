"""Load a LoRA adapter into a ``PeftModel`` through a diagnosis, and check that an adapter really arrived.

Supported: PEFT 0.21.x, verified with 0.21.2; any other version is refused with ``UnsupportedVersionError``.

```python
from keyguard.integrations import peft as kg_peft

report = kg_peft.load_adapter(peft_model, "./my-lora", "mine")  # diagnosed, mapped, loaded, verified
print(kg_peft.verify_adapter(peft_model, "./other-lora", "other"))  # loaded elsewhere: did it arrive?
```

Importing this module imports PEFT only when a function is called.
"""

from __future__ import annotations

from keyguard.integrations._adapters import Strategy
from keyguard.integrations._peft_load import load_adapter, verify_adapter
from keyguard.integrations._versions import PEFT_REQUIREMENT, SUPPORTED_PEFT, VERIFIED_PEFT

__all__ = ["PEFT_REQUIREMENT", "SUPPORTED_PEFT", "VERIFIED_PEFT", "Strategy", "load_adapter", "verify_adapter"]
