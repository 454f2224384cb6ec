"""Put a model back exactly as it was when a load through an integration is refused or interrupted.

PEFT changes the caller's model in place: it swaps LoRA layers and ``modules_to_save`` wrappers in for the original
modules, sets attributes (``peft_config``), freezes parameters, registers hooks, and loading writes into tensors.
``ModelState.capture(model)`` records, for every module, its attributes (the containers among them by content, so
that objects shared between modules stay shared), every parameter's ``requires_grad``, and the module's config; it
copies no tensor data. ``restore()`` undoes all of it; tensors a load is about to overwrite in place are recorded
first with ``keep(tensor)``. Restoring handles ``BaseException``: Ctrl-C in the middle of a load leaves the model
as it was too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelState:
    """A record of a model's structure and flags, without its data; ``restore()`` puts them back."""

    _objects: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    _containers: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    _requires_grad: list[tuple[Any, bool]] = field(default_factory=list)
    _kept: dict[int, tuple[Any, Any]] = field(default_factory=dict)

    @classmethod
    def capture(cls, model: Any) -> ModelState:
        state = cls()
        seen: set[int] = set()
        for module in model.modules():
            state._record(module, seen)
            config = getattr(module, "config", None)
            if config is not None and not callable(config) and hasattr(config, "__dict__"):
                state._record(config, seen)
        for parameter in model.parameters():
            state._requires_grad.append((parameter, parameter.requires_grad))
        return state

    def _record(self, obj: Any, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        attributes = dict(vars(obj))
        self._objects.append((obj, attributes))
        for value in attributes.values():
            if isinstance(value, (dict, set, list)) and id(value) not in self._containers:
                self._containers[id(value)] = (value, value.copy())

    def keep(self, tensor: Any) -> None:
        """Record a tensor's data before it is overwritten in place (a base weight loaded from an adapter file)."""
        if id(tensor) not in self._kept and not tensor.is_meta:
            self._kept[id(tensor)] = (tensor, tensor.detach().clone())

    def restore(self) -> None:
        """Put every recorded attribute, container, flag and kept tensor back."""
        import torch

        for obj, attributes in self._objects:
            current = vars(obj)
            for name in [n for n in current if n not in attributes]:
                del current[name]
            current.update(attributes)
        for container, contents in self._containers.values():
            container.clear()
            if isinstance(container, (dict, set)):
                container.update(contents)
            else:
                container.extend(contents)
        for parameter, flag in self._requires_grad:
            parameter.requires_grad_(flag)
        with torch.no_grad():
            for tensor, data in self._kept.values():
                tensor.copy_(data)
