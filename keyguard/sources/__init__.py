"""Sources of keys: every input keyguard reads resolves to one immutable ``KeySet``.

``read_keys`` picks the reader; the readers are also available one by one.
"""

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
