"""Load a LoRA adapter into a ``PeftModel`` through a diagnosis, and check that an adapter really arrived.

Supported: PEFT 0.15.0 to 0.21.x (``make compat``), tested with 0.21.2; any other version is refused with
``UnsupportedVersionError``.

```python
from keyguard.integrations import peft as kg_peft

result = kg_peft.load_adapter(peft_model, "./my-lora", "mine")  # diagnosed, mapped, loaded, verified
print(result)  # Loaded and verified 8 tensors into adapter 'mine' of PeftModelForCausalLM from ./my-lora. ...
peft_model = kg_peft.from_pretrained(base_model, "./my-lora")  # PeftModel.from_pretrained, through the same checks
print(kg_peft.verify_adapter(peft_model, "./other-lora", "other"))  # loaded elsewhere: did it arrive?
```

Importing this module imports PEFT only when a function is called.
"""

from __future__ import annotations

from keyguard.integrations._adapters import Strategy
from keyguard.integrations._peft_load import from_pretrained, load_adapter, verify_adapter
from keyguard.integrations._versions import PEFT_REQUIREMENT, SUPPORTED_PEFT, VERIFIED_PEFT

__all__ = [
    "PEFT_REQUIREMENT",
    "SUPPORTED_PEFT",
    "VERIFIED_PEFT",
    "Strategy",
    "from_pretrained",
    "load_adapter",
    "verify_adapter",
]
