"""Every exception keyguard raises.

The hierarchy, and the builtin each one resembles::

    KeyguardError(Exception)
    ├── SourceError(KeyguardError, ValueError)        a source cannot be read: names the file and the problem
    │   ├── HeaderError                               a .safetensors header breaks the format's promises
    │   ├── ShardIndexError                           a sharded index disagrees with its shards
    │   ├── UnsafePickleError                         a pickle asks for code execution; it was refused
    │   └── AdapterConfigError                        adapter_config.json is invalid
    ├── MissingDependencyError(KeyguardError, ImportError)   an optional package (torch, transformers) is needed
    ├── PlanError(KeyguardError, ValueError)          a fix plan was refused (collision, bad rule, bad file)
    ├── PatternError(KeyguardError, ValueError)       a regular expression given to keyguard (--ignore) is invalid
    ├── WriteError(KeyguardError, OSError)            a fixed checkpoint could not be written or did not verify
    ├── KeyMismatchError(KeyguardError, RuntimeError) a guarded load found problems; carries the report
    ├── UnsupportedVersionError(KeyguardError, RuntimeError)  an integration refuses to patch an unknown version
    └── UnsupportedModelError(KeyguardError, TypeError)  an integration was given a model it does not work on

Each ``SourceError`` has a stable ``problem`` slug (what went wrong, for machines), the ``path`` it concerns
and a ``detail`` sentence (for people); ``str(error)`` is ``"<path>: <detail>"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from os import PathLike


class KeyguardError(Exception):
    """Base class of every error keyguard raises on purpose."""


class SourceError(KeyguardError, ValueError):
    """A source of keys could not be read.

    Attributes:
        path: the file or folder concerned (``None`` for in-memory sources).
        problem: a stable kebab-case slug, e.g. ``"duplicate-key"`` or ``"header-too-large"``.
        detail: one sentence saying what is wrong, for people.
        ctx: the values the detail was rendered from.
    """

    def __init__(
        self,
        path: str | PathLike[str] | None,
        problem: str,
        detail: str,
        **ctx: Any,
    ) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.detail = detail
        self.ctx = ctx
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.path if self.path is not None else "<in-memory source>"
        return f"{where}: {self.detail}"

    def __reduce__(self) -> tuple[Any, ...]:
        # keep errors picklable across the process pool used by check-adapter
        return (_rebuild_source_error, (type(self), self.path, self.problem, self.detail, self.ctx))


def _rebuild_source_error(
    cls: type[SourceError], path: str | None, problem: str, detail: str, ctx: dict[str, Any]
) -> SourceError:
    return cls(path, problem, detail, **ctx)


class HeaderError(SourceError):
    """A ``.safetensors`` file breaks a promise of the format (header, dtypes, shapes, offsets, metadata)."""


class ShardIndexError(SourceError):
    """A sharded checkpoint's ``*.index.json`` disagrees with its shards, or points outside its folder."""


class UnsafePickleError(SourceError):
    """A PyTorch pickle needs more than ``torch.load(weights_only=True)`` allows; it was not loaded."""


class AdapterConfigError(SourceError):
    """A PEFT ``adapter_config.json`` is not valid."""


class MissingDependencyError(KeyguardError, ImportError):
    """Optional dependencies are needed for this input (``pip install 'keyguard[torch]'``, ``[hf]`` or both).

    ``package`` names every missing package (``"transformers and torch"``), ``extra`` the extras that install them
    (``"hf,torch"``): one message says everything that is needed at once.
    """

    def __init__(self, package: str, needed_for: str, extra: str) -> None:
        self.package = package
        self.needed_for = needed_for
        self.extra = extra
        several = " and " in package
        super().__init__(
            f"{package} {'are' if several else 'is'} needed {needed_for}; install {'them' if several else 'it'} with:"
            f" pip install 'keyguard[{extra}]'"
        )


class PlanError(KeyguardError, ValueError):
    """A fix plan was refused: it would make two keys collide, or it is malformed."""


class PatternError(KeyguardError, ValueError):
    """A regular expression given to keyguard (``ignore=`` / ``--ignore``) does not compile.

    Attributes:
        pattern: the expression as given.
        option: where it was given (``"ignore"``).
        detail: why it does not compile, as Python's ``re`` says it.
        position: the index in ``pattern`` where the problem was found, when known.
    """

    def __init__(self, pattern: str, option: str, detail: str, position: int | None = None) -> None:
        self.pattern = pattern
        self.option = option
        self.detail = detail
        self.position = position
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"invalid regular expression {pattern!r} given to {option}= / --{option}: {detail}{where}")


class WriteError(KeyguardError, OSError):
    """The fixed checkpoint could not be written or did not verify; nothing was put at the target."""


class KeyMismatchError(KeyguardError, RuntimeError):
    """A guarded load found key problems it may not fix. ``report`` holds the full diagnosis."""

    def __init__(self, message: str, report: Any = None) -> None:
        self.report = report
        super().__init__(message)


class UnsupportedVersionError(KeyguardError, RuntimeError):
    """An integration was asked to patch a library version it has not been verified against."""


class UnsupportedModelError(KeyguardError, TypeError):
    """An integration was given a model it does not work on: a plain transformers model where a PEFT model is
    needed, or a model without X-LoRA where an X-LoRA model is. The message names the function to use instead."""
