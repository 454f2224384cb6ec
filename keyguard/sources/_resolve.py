"""One entry point that turns any supported input into a ``KeySet``."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final, Union

from keyguard._exceptions import SourceError
from keyguard.sources._keyset import KeySet

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

#: Anything ``read_keys`` accepts.
Source = Union[str, "os.PathLike[str]", KeySet, Mapping[str, Any], Iterable[str], Any]


def read_keys(source: Source, *, container: str | None = None, architecture: str | None = None) -> KeySet:
    """Read keys, shapes and dtypes from any supported source, without loading tensor data.

    Args:
        source: one of:

            - a ``.safetensors`` file;
            - a sharded checkpoint: a folder with ``*.index.json``, or the index file itself;
            - a PyTorch pickle (``.bin``, ``.pt``, ``.pth``, ``.ckpt``), read with ``weights_only=True`` only;
            - a Hugging Face model folder (``model.safetensors``, sharded, or ``pytorch_model.bin``);
            - a folder with only ``config.json`` (the model is built on the meta device);
            - a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``/``.bin``);
            - a ``torch.distributed.checkpoint`` folder (``.metadata`` + ``*.distcp``), read from its metadata;
            - an Accelerate ``save_state`` folder or a DeepSpeed checkpoint folder (``latest`` +
              ``<tag>/mp_rank_00_model_states.pt``): the model's weights in it, with the container explained;
            - a keyguard manifest (``keyguard.keys/v1`` JSON);
            - a remote source: ``hf://ORG/REPO[@REV][/PATH]`` or an ``https://`` URL, of which only JSON files and
              safetensors headers are fetched (needs ``keyguard[hub]``);
            - a live ``torch.nn.Module`` (also on the meta device);
            - a state dict, a mapping of key to shape or ``(shape, dtype)``, or an iterable of keys;
            - a ``KeySet`` (returned as is).
        container: for pickles holding several state dicts, the one to read (``"model_ema"``).
        architecture: for ``config.json`` folders, the model class to build instead of ``architectures[0]``.

    Raises:
        SourceError: the source cannot be read; the message names the file and the problem.
        MissingDependencyError: torch or transformers is needed for this source but not installed.
    """
    if isinstance(source, KeySet):
        return source
    if isinstance(source, str) and source.startswith(("hf://", "https://", "http://")):
        from keyguard.sources._remote import read_remote

        return read_remote(source, container=container, architecture=architecture)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            return _read_path(path, container=container, architecture=architecture)
        except OSError as exc:  # whatever a reader did not turn into a SourceError itself: a folder it may not list...
            raise unreadable(path, exc) from exc
    from keyguard.sources._torch import is_torch_module

    if is_torch_module(source):
        from keyguard.sources._module import read_module

        return read_module(source)
    if isinstance(source, Mapping):
        from keyguard.sources._memory import read_mapping

        return read_mapping(source)
    if isinstance(source, Iterable) and not isinstance(source, (bytes, bytearray)):
        from keyguard.sources._memory import read_iterable

        return read_iterable(source)
    raise SourceError(
        None, "unsupported-source", f"cannot read keys from a {type(source).__name__}; see keyguard.read_keys"
    )


def unreadable(path: str, exc: OSError) -> SourceError:
    """The ``SourceError`` for an operating-system error met while reading ``path`` (or a file inside it)."""
    where = exc.filename if isinstance(exc.filename, str) and exc.filename else path
    reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or type(exc).__name__
    return SourceError(where, "unreadable", f"cannot be read: {reason}", errno=exc.errno)


def _read_path(path: str, *, container: str | None, architecture: str | None) -> KeySet:
    if os.path.isdir(path):
        return _read_folder(path, container=container, architecture=architecture)
    if not os.path.exists(path):
        raise SourceError(path, "not-found", "no such file or folder")
    name = os.path.basename(path)
    if name.endswith(".safetensors"):
        from keyguard.sources._safetensors import read_safetensors

        return read_safetensors(path)
    if name.endswith(".index.json"):
        from keyguard.sources._sharded import read_sharded

        return read_sharded(path, container=container)
    if name.endswith("model_states.pt"):
        from keyguard.sources._frameworks import read_deepspeed

        return read_deepspeed(path, container=container)
    if name.endswith(PICKLE_SUFFIXES):
        from keyguard.sources._pickle import read_pickle

        return read_pickle(path, container=container)
    if name == ".metadata" or name.endswith(".distcp"):
        from keyguard.sources._dcp import read_dcp

        return read_dcp(path, container=container)
    if name == "adapter_config.json":
        return _read_folder(os.path.dirname(path) or ".", container=container, architecture=architecture)
    if name.endswith(".json"):
        return _read_json(path, container=container, architecture=architecture)
    return _sniff(path, container=container)


#: What tells a JSON file's kind: a manifest's ``format``, a config's ``model_type`` or ``architectures`` (an index is
#: told by the presence of ``weight_map``, whose value is not needed here).
_SNIFFED_FIELDS: Final = ("format", "model_type", "architectures")


def _read_json(path: str, *, container: str | None, architecture: str | None) -> KeySet:
    from keyguard.sources._jsonfile import load_json_object

    raw = load_json_object(path, fields=_SNIFFED_FIELDS)  # an index's weight_map is read again by read_sharded
    if isinstance(raw.get("format"), str) and raw["format"].startswith("keyguard.keys/"):
        from keyguard.sources._manifest import read_manifest

        return read_manifest(path)
    if "weight_map" in raw:
        from keyguard.sources._sharded import read_sharded

        return read_sharded(path, container=container)
    if os.path.basename(path) == "config.json" or "model_type" in raw or "architectures" in raw:
        from keyguard.sources._model_config import read_config

        return read_config(path, architecture=architecture)
    raise SourceError(
        path,
        "unknown-json",
        "is neither a keyguard manifest, a sharded checkpoint index, nor a model config.json",
    )


def _read_folder(folder: str, *, container: str | None, architecture: str | None) -> KeySet:
    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(folder, name))

    if has("adapter_config.json"):
        from keyguard.sources._adapter import read_adapter

        return read_adapter(folder)
    if has(".metadata"):
        from keyguard.sources._dcp import read_dcp

        return read_dcp(folder, container=container)
    from keyguard.sources._frameworks import read_framework_folder

    framework = read_framework_folder(folder, container=container)
    if framework is not None:
        return framework
    if has("model.safetensors.index.json"):
        from keyguard.sources._sharded import read_sharded

        return read_sharded(os.path.join(folder, "model.safetensors.index.json"), container=container)
    if has("model.safetensors"):
        from keyguard.sources._safetensors import read_safetensors

        return read_safetensors(os.path.join(folder, "model.safetensors"))
    indexes = sorted(glob.glob(os.path.join(glob.escape(folder), "*.safetensors.index.json")))
    if len(indexes) == 1:
        from keyguard.sources._sharded import read_sharded

        return read_sharded(indexes[0], container=container)
    # pickles come after every safetensors layout, as transformers prefers them: a folder converted to safetensors
    # often keeps its old pytorch_model*.bin files, and the loader reads the safetensors ones
    if has("pytorch_model.bin.index.json"):
        from keyguard.sources._sharded import read_sharded

        return read_sharded(os.path.join(folder, "pytorch_model.bin.index.json"), container=container)
    if has("pytorch_model.bin"):
        from keyguard.sources._pickle import read_pickle

        return read_pickle(os.path.join(folder, "pytorch_model.bin"), container=container)
    singles = sorted(glob.glob(os.path.join(glob.escape(folder), "*.safetensors")))
    if len(singles) == 1 and not indexes:
        from keyguard.sources._safetensors import read_safetensors

        return read_safetensors(singles[0])
    if has("config.json"):
        from keyguard.sources._model_config import read_config

        return read_config(folder, architecture=architecture)
    if os.path.basename(os.path.normpath(folder)).endswith((".safetensors", ".json", *PICKLE_SUFFIXES)):
        raise SourceError(folder, "is-a-directory", "is a directory, expected a checkpoint file")
    found = sorted(os.listdir(folder))[:8]
    hint = "several candidates; pass the file itself" if len(indexes) > 1 or len(singles) > 1 else "nothing to read"
    raise SourceError(
        folder,
        "unrecognised-folder",
        f"{hint}: expected model.safetensors, a *.index.json, pytorch_model.bin, adapter_config.json or config.json"
        f" (found: {', '.join(found) or 'an empty folder'})",
    )


def _sniff(path: str, *, container: str | None) -> KeySet:
    from keyguard.sources._readfile import open_regular

    try:
        with open_regular(path) as f:
            head = f.read(16)
    except OSError as exc:
        raise SourceError(path, "unreadable", exc.strerror or type(exc).__name__) from None
    if not head:
        raise SourceError(path, "empty-file", "is empty (0 bytes)")
    if head[:2] == b"PK" or head[:1] == b"\x80":
        from keyguard.sources._pickle import read_pickle

        return read_pickle(path, container=container)
    if len(head) > 8 and head[8:9] == b"{":
        from keyguard.sources._safetensors import read_safetensors

        return read_safetensors(path)
    raise SourceError(
        path, "unknown-format", "is not a .safetensors file, a PyTorch checkpoint, or a JSON index/manifest/config"
    )
