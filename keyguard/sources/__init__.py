"""Sources of keys: every input keyguard reads resolves to one immutable ``KeySet``.

``read_keys`` picks the reader; the readers are also available one by one.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyguard.sources._adapter import AdapterConfig, parse_adapter_config, read_adapter
    from keyguard.sources._keyset import KeySet, SourceFormat, TensorInfo
    from keyguard.sources._manifest import MANIFEST_FORMAT, manifest_json, read_manifest, write_manifest
    from keyguard.sources._memory import read_iterable, read_mapping
    from keyguard.sources._model_config import read_config
    from keyguard.sources._module import read_module
    from keyguard.sources._pickle import read_pickle
    from keyguard.sources._resolve import Source, read_keys
    from keyguard.sources._safetensors import MAX_HEADER_SIZE, read_safetensors
    from keyguard.sources._sharded import read_sharded
else:
    from keyguard._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "AdapterConfig": "keyguard.sources._adapter",
            "parse_adapter_config": "keyguard.sources._adapter",
            "read_adapter": "keyguard.sources._adapter",
            "KeySet": "keyguard.sources._keyset",
            "SourceFormat": "keyguard.sources._keyset",
            "TensorInfo": "keyguard.sources._keyset",
            "MANIFEST_FORMAT": "keyguard.sources._manifest",
            "manifest_json": "keyguard.sources._manifest",
            "read_manifest": "keyguard.sources._manifest",
            "write_manifest": "keyguard.sources._manifest",
            "read_iterable": "keyguard.sources._memory",
            "read_mapping": "keyguard.sources._memory",
            "read_config": "keyguard.sources._model_config",
            "read_module": "keyguard.sources._module",
            "read_pickle": "keyguard.sources._pickle",
            "Source": "keyguard.sources._resolve",
            "read_keys": "keyguard.sources._resolve",
            "MAX_HEADER_SIZE": "keyguard.sources._safetensors",
            "read_safetensors": "keyguard.sources._safetensors",
            "read_sharded": "keyguard.sources._sharded",
        },
    )

__all__ = [
    "MANIFEST_FORMAT",
    "MAX_HEADER_SIZE",
    "AdapterConfig",
    "KeySet",
    "Source",
    "SourceFormat",
    "TensorInfo",
    "manifest_json",
    "parse_adapter_config",
    "read_adapter",
    "read_config",
    "read_iterable",
    "read_keys",
    "read_manifest",
    "read_mapping",
    "read_module",
    "read_pickle",
    "read_safetensors",
    "read_sharded",
    "write_manifest",
]
