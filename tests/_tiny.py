"""The sizes of the tiny transformers models the suite builds (the smallest the classes accept).

One place for them, imported by tests/conftest.py and by the adapter and integration helpers.
"""

from __future__ import annotations

from typing import Any, Final

TINY_LLAMA: Final[dict[str, Any]] = {
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 32,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
