"""keyguard's records: the data it hands out (reports, findings, plans, rules) as frozen dataclasses.

A diagnosis builds and renders them without importing pydantic: importing it and building a first validator cost
about as much CPU as a whole small ``keyguard diagnose`` now takes. pydantic still gives every record its
validation, its JSON and its published JSON schema, through a ``TypeAdapter`` built the first time one of those is
asked for, with the same method names as a pydantic model (``model_validate``, ``model_dump_json``,
``model_json_schema``, ...). A record's checks live in its
``__post_init__`` and run both when keyguard builds it and when pydantic validates user input into it.

A field's description is ``field(metadata={"description": ...})``, which pydantic reads into the schema (the
docstrings under fields would need the source files at run time, and miss inherited fields); a record's ``computed``
names properties that its JSON and its serialization schema include (the report's ``verdict``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_type_hints

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import TypeAdapter
    from pydantic_core import CoreSchema
    from typing_extensions import Self


class Record:
    """Base of keyguard's records: pydantic-compatible validation, dumping and schemas, with pydantic imported
    lazily."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {}
    computed: ClassVar[tuple[str, ...]] = ()

    # -- pydantic's model API, for the code and the habits that use it --------------------------------------------
    def model_dump(self, *, mode: Literal["python", "json"] = "python", **options: Any) -> dict[str, Any]:
        """The record as a dict (``mode="json"``: JSON-compatible values); ``options`` as pydantic's ``exclude``,
        ``exclude_defaults``, ``exclude_none``, ... (``exclude_unset`` leaves nothing out: a dataclass does not
        record which fields were given; ``exclude_defaults`` does what it is usually meant for)."""
        dumped: dict[str, Any] = _adapter(type(self)).dump_python(self, mode=mode, **options)
        return dumped

    def model_dump_json(self, *, indent: int | None = None, **options: Any) -> str:
        """The record as a JSON document."""
        return _adapter(type(self)).dump_json(self, indent=indent, **options).decode()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with some fields replaced (``deep``: the fields' values copied too); the record's checks run again
        on the result."""
        source = copy.deepcopy(self) if deep else self
        return dataclasses.replace(source, **(update or {}))  # type: ignore[type-var]

    @classmethod
    def model_validate(cls, obj: Any, **options: Any) -> Self:
        """A record from a dict (or a record), validated; ``options`` as pydantic's ``strict``, ``context``, ...

        Raises:
            pydantic.ValidationError: the input does not fit; its records name each problem.
        """
        if options.get("strict") and not isinstance(obj, cls):
            # pydantic's strict mode takes only instances of a dataclass from Python objects; a record's data is a
            # JSON document, so strict validation of a dict is strict validation of that document
            import json

            return cls.model_validate_json(json.dumps(obj), **options)
        validated: Self = _adapter(cls).validate_python(obj, **options)
        return validated

    @classmethod
    def model_validate_json(cls, data: str | bytes, **options: Any) -> Self:
        """A record from a JSON document, validated (``pydantic.ValidationError`` when it does not fit)."""
        validated: Self = _adapter(cls).validate_json(data, **options)
        return validated

    @classmethod
    def model_json_schema(
        cls, mode: Literal["validation", "serialization"] = "validation", **options: Any
    ) -> dict[str, Any]:
        """The JSON schema of the record: what it accepts (``validation``) or what it writes (``serialization``,
        which also lists the computed fields); ``options`` as pydantic's ``by_alias``, ``ref_template``, ..."""
        return _adapter(cls).json_schema(mode=mode, **options)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> CoreSchema:
        """pydantic's schema of the dataclass, with the ``computed`` properties added to what it serializes."""
        schema: CoreSchema = handler(source)
        if not cls.computed:
            return schema

        node: Any = schema
        while node.get("type") != "dataclass-args":
            node = node["schema"]  # a KeyError here means pydantic changed shape: better loud than a lost field
        node["computed_fields"] = [_computed(getattr(cls, name), name, handler) for name in cls.computed]
        return schema


def _computed(prop: property, name: str, handler: Any) -> Any:
    """A property as pydantic writes a computed field: in the JSON, and read-only and described in the schema
    (``pydantic_js_updates`` is the core-schema metadata pydantic's own ``@computed_field`` sets)."""
    import inspect

    from pydantic_core import core_schema

    assert prop.fget is not None
    updates: dict[str, Any] = {"readOnly": True}
    if prop.__doc__:
        updates["description"] = inspect.cleandoc(prop.__doc__)
    return_schema = handler.generate_schema(get_type_hints(prop.fget)["return"])
    return core_schema.computed_field(name, return_schema, metadata={"pydantic_js_updates": updates})


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    """The record class's ``TypeAdapter``, built once (building one imports pydantic and its schema machinery)."""
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        from pydantic import TypeAdapter

        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


class TaggedBy:
    """``Annotated[A | B, TaggedBy("op")]``: a union of records told apart by the field ``op`` (pydantic's
    discriminated union: one clear error for an unknown tag, ``oneOf`` with a mapping in the schema)."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> CoreSchema:
        from pydantic import Discriminator

        schema: CoreSchema = handler.generate_schema(Annotated[source, Discriminator(self.field)])
        return schema
