"""mkdocs hooks: the pages that must never drift from the code are generated from it at build time.

- one page per finding kind (``findings/kgNNN.md``) from ``keyguard.report._kinds.KINDS``, added to the nav;
- markers in hand-written pages, each on a line of its own, replaced by generated Markdown:

  ``<!-- keyguard:cli -->``                  every command and option of ``keyguard.cli._app.build_parser()``
  ``<!-- keyguard:findings-index -->``       every finding code, by family
  ``<!-- keyguard:schema DOTTED.NAME -->``   fields and full JSON schema of a pydantic model
  ``<!-- keyguard:include PATH -->``         a Markdown file of the repository, without its title
  ``<!-- keyguard:dtypes -->``               the dtypes the safetensors reader knows
  ``<!-- keyguard:containers -->``           the containers the pickle reader unwraps
  ``<!-- keyguard:known-prefixes -->``       the wrapper prefixes the engine recognises
  ``<!-- keyguard:equivalent-names -->``     the published naming equivalents template alignment uses
  ``<!-- keyguard:exceptions -->``           the exception hierarchy
  ``<!-- keyguard:api-rest MODULE -->``      ``:::`` entries for names of ``MODULE.__all__`` the page does not document

An unknown marker, a hand-written page where a generated one belongs, or a missing include stops the build.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

MARKER = re.compile(r"^<!-- keyguard:(?P<name>[a-z-]+)(?: (?P<arg>\S+))? -->[ \t]*$", re.MULTILINE)
FINDINGS_SECTION = "Findings"
USAGE_WIDTH = "100"


# -- hooks ---------------------------------------------------------------------------------------------------------
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Add one nav entry per finding kind to the Findings section, in code order."""
    from keyguard.report._kinds import KINDS

    section = next(
        (item for item in config.nav or [] if isinstance(item, dict) and FINDINGS_SECTION in item),
        None,
    )
    if section is None:
        raise PluginError(f"docs/hooks.py: mkdocs.yml's nav has no {FINDINGS_SECTION!r} section for the finding pages")
    entries = section[FINDINGS_SECTION]
    for kind in KINDS.values():
        entries.append({f"{kind.code} {kind.kind}": finding_path(kind.code)})
    root = Path(config.config_file_path).parent
    config.watch.extend(str(root / p) for p in ("keyguard", "benchmarks/README.md", "CHANGELOG.md"))
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Generate the finding pages; a hand-written file in their place is an error (they come from the registry)."""
    from keyguard.report._kinds import KINDS

    for kind in KINDS.values():
        path = finding_path(kind.code)
        if files.get_file_from_path(path) is not None:
            raise PluginError(
                f"docs/{path} is generated from keyguard.report._kinds.KINDS; delete the hand-written file"
            )
        files.append(File.generated(config, path, content=render_finding_page(kind)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace every ``<!-- keyguard:... -->`` marker of a page with what it stands for."""
    root = Path(config.config_file_path).parent
    described: set[str] = set()  # schema definitions already tabulated on this page

    def replace(match: re.Match[str]) -> str:
        name, arg = match.group("name"), match.group("arg")
        where = f"{page.file.src_uri}: <!-- keyguard:{name} -->"
        if name == "cli":
            return render_cli()
        if name == "findings-index":
            return render_findings_index()
        if name == "schema":
            if not arg:
                raise PluginError(f"{where} needs the dotted name of a pydantic model")
            return render_schema(import_object(arg), described)
        if name == "include":
            if not arg:
                raise PluginError(f"{where} needs a path relative to the repository")
            return render_include(root / arg, where)
        if name == "dtypes":
            return render_dtypes()
        if name == "containers":
            return render_containers()
        if name == "known-prefixes":
            return render_known_prefixes()
        if name == "equivalent-names":
            return render_equivalent_names()
        if name == "exceptions":
            return render_exceptions()
        if name == "api-rest":
            if not arg:
                raise PluginError(f"{where} needs a module name")
            return render_api_rest(arg, markdown)
        raise PluginError(f"{where}: unknown marker")

    return MARKER.sub(replace, markdown)


# -- finding pages -------------------------------------------------------------------------------------------------
def finding_path(code: str) -> str:
    """Where a kind's page lives (``keyguard explain CODE`` prints the same page in a terminal)."""
    return f"findings/{code.lower()}.md"


def render_finding_page(kind: Any) -> str:
    family = family_label(kind.code)
    return "\n".join(
        [
            f"# {kind.code} {kind.kind}",
            "",
            f"**{kind.title}**",
            "",
            "| Code | Kind | Severity | Family |",
            "| --- | --- | --- | --- |",
            f"| `{kind.code}` | `{kind.kind}` | [{kind.severity.value}](../concepts.md#severity)"
            f" | [{family}](index.md) |",
            "",
            "## What it does",
            "",
            kind.what,
            "",
            "## Why is this bad?",
            "",
            kind.why,
            "",
            "## Fix safety",
            "",
            kind.fix_safety,
            "",
            "## Example",
            "",
            kind.example,
            "",
            "---",
            "",
            f"In a terminal: `keyguard explain {kind.code}` (or `keyguard explain {kind.kind}`) prints this page.",
            "",
        ]
    )


def family_label(code: str) -> str:
    from keyguard.report._kinds import _FAMILIES

    digit = code[2]
    return f"{digit}xx {_FAMILIES[digit]}"


def render_findings_index() -> str:
    from keyguard.report._kinds import _FAMILIES, KINDS

    out: list[str] = []
    for digit, family in _FAMILIES.items():
        out += [f"## {digit}xx {family}", ""]
        members = [k for k in KINDS.values() if k.code[2] == digit]
        if not members:
            out += ["No finding kind is registered in this family yet.", ""]
            continue
        out += ["| Code | Kind | Severity | What it reports |", "| --- | --- | --- | --- |"]
        for k in members:
            page = Path(finding_path(k.code)).name
            out.append(f"| [{k.code}]({page}) | `{k.kind}` | {k.severity.value} | {cell(k.title)} |")
        out.append("")
    return "\n".join(out)


# -- CLI reference -------------------------------------------------------------------------------------------------
def render_cli() -> str:
    from keyguard.cli._app import build_parser

    with fixed_columns():
        parser = build_parser()
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {choice.dest: choice.help for choice in sub_action._choices_actions}
        out = [
            "## keyguard",
            "",
            parser.description or "",
            "",
            code_block(parser.format_usage()),
            "",
            "| Command | What it does |",
            "| --- | --- |",
        ]
        out += [
            f"| [`{name}`](#keyguard-{name}) | {cell(sentence(helps.get(name) or ''))} |" for name in sub_action.choices
        ]
        out += ["", "Options of `keyguard` itself:", "", *arguments_table(parser, skip=sub_action), ""]
        for name, sub in sub_action.choices.items():
            out += [
                f"## keyguard {name}",
                "",
                sentence(sub.description or ""),
                "",
                code_block(sub.format_usage()),
                "",
                *arguments_table(sub),
                "",
            ]
    return "\n".join(out)


@contextlib.contextmanager
def fixed_columns() -> Iterator[None]:
    """argparse wraps usage to the terminal's width; the page must not depend on who builds it."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = USAGE_WIDTH
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def arguments_table(parser: argparse.ArgumentParser, skip: argparse.Action | None = None) -> list[str]:
    formatter = parser._get_formatter()
    rows = ["| Argument | Description |", "| --- | --- |"]
    shown = [a for a in parser._actions if a is not skip and a.help != argparse.SUPPRESS]
    for action in sorted(shown, key=lambda a: bool(a.option_strings)):  # positionals first, as in the usage line
        rows.append(f"| {argument_name(formatter, action)} | {cell(argument_description(formatter, action))} |")
    return rows


def argument_name(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    if not action.option_strings:
        metavar = formatter._metavar_formatter(action, action.dest)(1)[0]
        return f"`{metavar}`" + (" (optional)" if action.nargs == "?" else "")
    long_first = sorted(action.option_strings, key=lambda s: (not s.startswith("--"), s))
    if action.nargs == 0:
        names = [f"`{s}`" for s in long_first]
    else:
        metavar = formatter._format_args(action, action.dest.upper())
        names = [f"`{s} {metavar}`" for s in long_first]
    return names[0] + (f" ({', '.join(names[1:])})" if names[1:] else "")


def argument_description(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    text = sentence(formatter._expand_help(action) if action.help else "")
    extra: list[str] = []
    if action.choices is not None and action.metavar is not None:  # without a metavar the usage shows them
        extra.append("One of " + ", ".join(f"`{c}`" for c in action.choices) + ".")
    if action.required and action.option_strings:
        extra.append("Required.")
    if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
        extra.append("Repeatable.")
    if (
        action.option_strings
        and action.nargs != 0
        and action.default not in (None, [], argparse.SUPPRESS)
        and "default" not in text
    ):
        extra.append(f"Default: `{action.default}`.")
    return " ".join([text, *extra]).strip()


# -- API reference -------------------------------------------------------------------------------------------------
DIRECTIVE = re.compile(r"^::: (?P<ident>[\w.]+)[ \t]*\n(?P<options>(?:(?:[ \t]{4}.*)?\n)*)", re.MULTILINE)


def documented(markdown: str) -> set[str]:
    """Identifiers a page documents: its ``::: ident`` entries, and the ``members`` listed under them."""
    found: set[str] = set()
    for match in DIRECTIVE.finditer(markdown):
        ident = match.group("ident")
        found.add(ident)
        options = yaml.safe_load(textwrap.dedent(match.group("options"))) or {}
        members = (options.get("options") or {}).get("members")
        if isinstance(members, list):
            found.update(f"{ident}.{member}" for member in members)
    return found


def render_api_rest(module_name: str, markdown: str) -> str:
    """``:::`` entries for the public names the hand-ordered sections do not cover yet, so none is ever left out."""
    import keyguard

    module = importlib.import_module(module_name)
    done = documented(markdown)
    # an object re-exported by two modules (integrations.peft/xlora.Strategy) is documented once: two anchors for
    # one object leave cross-references with no single target once pages are files (use_directory_urls: false)
    seen = {id(_resolve(ident)) for ident in done} - {id(None)}
    rest = [
        name
        for name in module.__all__
        if f"{module_name}.{name}" not in done
        and not (module is not keyguard and name in keyguard.__all__)
        and not (id(getattr(module, name)) in seen and not isinstance(getattr(module, name), (str, int, float)))
    ]
    if not rest:
        return ""
    entries = "\n\n".join(f"::: {module_name}.{name}" for name in rest)
    return f"## More from `{module_name}`\n\n{entries}" if module is keyguard else entries


def _resolve(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return None


# -- schemas -------------------------------------------------------------------------------------------------------
def import_object(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PluginError(f"<!-- keyguard:schema {dotted} -->: cannot import it ({exc})") from exc


def render_schema(model: Any, described: set[str]) -> str:
    """A fields table for the model and each definition it uses (once per page), then the full schema.

    A model with computed fields (the report's ``verdict``) is documented as it is written (serialization schema).
    """
    computed = getattr(model, "computed", None) or getattr(model, "model_computed_fields", None)  # a record / a model
    mode = "serialization" if computed else "validation"
    schema: dict[str, Any] = model.model_json_schema(mode=mode)
    defs: dict[str, Any] = schema.get("$defs", {})
    out = [*fields_table(schema), ""]
    shown_above = [name for name in defs if name in described]
    if shown_above:
        out += ["Also uses " + ", ".join(f"`{name}`" for name in shown_above) + ", described above.", ""]
    for name, definition in defs.items():
        if name in described:
            continue
        described.add(name)
        out += [f"**`{name}`**", ""]
        if definition.get("description"):
            out += [inspect.cleandoc(definition["description"]), ""]
        if "enum" in definition:
            out += ["One of " + ", ".join(f"`{json.dumps(v)}`" for v in definition["enum"]) + ".", ""]
        elif "properties" in definition:
            out += [*fields_table(definition), ""]
    full = json.dumps(schema, indent=2, ensure_ascii=False)
    out += [f'??? example "Full JSON schema of `{model.__name__}`"', "", indent(code_block(full, "json"), 4), ""]
    return "\n".join(out)


def fields_table(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    rows = ["| Field | Type | Required | Description |", "| --- | --- | --- | --- |"]
    for name, prop in schema.get("properties", {}).items():
        description = sentence(prop.get("description", ""))
        if "default" in prop and name not in required:
            description = f"{description} Default: `{json.dumps(prop['default'])}`.".strip()
        rows.append(
            f"| `{name}` | {cell(type_label(prop))} | {'yes' if name in required else 'no'} | {cell(description)} |"
        )
    return rows


def type_label(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(type_label(option) for option in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return f"list of {type_label(schema.get('items', {}))}"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"object with {type_label(values)} values" if isinstance(values, dict) and values else "object"
    return str(kind) if kind else "any"


# -- small generated lists -----------------------------------------------------------------------------------------
def render_dtypes() -> str:
    from keyguard._dtypes import DTYPE_BITS

    return "\n".join(
        ["| dtype | bits per element |", "| --- | ---: |", *(f"| `{d}` | {b} |" for d, b in DTYPE_BITS.items())]
    )


def render_containers() -> str:
    from keyguard.sources._pickle import CONTAINER_KEYS

    return ", ".join(f"`{key}`" for key in CONTAINER_KEYS)


def render_known_prefixes() -> str:
    from keyguard.engine._knowledge import KNOWN_PREFIXES

    rows = ["| Prefix | Usually left by |", "| --- | --- |"]
    rows += [f"| `{prefix}` | {cell(origin)} |" for prefix, origin in KNOWN_PREFIXES.items()]
    return "\n".join(rows)


def render_equivalent_names() -> str:
    from keyguard.engine._names import EQUIVALENT_NAMES

    rows = ["| Module | Also published as |", "| --- | --- |"]
    rows += [f"| `{group[0]}` | {', '.join(f'`{n}`' for n in group[1:])} |" for group in EQUIVALENT_NAMES]
    return "\n".join(rows)


def render_exceptions() -> str:
    """The exception hierarchy, drawn from the classes themselves (with the bases each one has)."""
    from keyguard import KeyguardError

    def label(cls: type) -> str:
        return f"{cls.__name__}({', '.join(base.__name__ for base in cls.__bases__)})"

    lines = [label(KeyguardError)]

    def walk(cls: type, pad: str) -> None:
        children = [c for c in cls.__subclasses__() if c.__module__.startswith("keyguard")]
        for i, child in enumerate(children):
            last = i == len(children) - 1
            lines.append(f"{pad}{'└── ' if last else '├── '}{label(child)}")
            walk(child, pad + ("    " if last else "│   "))

    walk(KeyguardError, "")
    return code_block("\n".join(lines))


def render_include(path: Path, where: str) -> str:
    if not path.is_file():
        raise PluginError(f"{where}: {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip("\n") + "\n"


# -- Markdown helpers ----------------------------------------------------------------------------------------------
def code_block(text: str, language: str = "text") -> str:
    return f"```{language}\n{text.rstrip()}\n```"


def indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def sentence(text: str) -> str:
    """argparse help is lower-case and unpunctuated; a table cell reads better as a sentence."""
    text = one_line(text)
    if not text:
        return text
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def one_line(text: str) -> str:
    return " ".join(text.split())


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return one_line(text).replace("|", "\\|")
