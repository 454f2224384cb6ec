"""The docs site builds with ``--strict``, its generated pages follow the code, and the README's promises hold.

The site is built once per module, in a fresh interpreter, into a temporary folder (a few seconds).
"""

from __future__ import annotations

import argparse
import ast
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import keyguard
import keyguard.fixes
import keyguard.report
import keyguard.sources
from keyguard.cli._app import build_parser
from keyguard.report import KINDS, Finding

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BUILD_SECONDS = 30

# Each source module's problem slugs must be documented on these pages.
SLUG_PAGES = {
    "_safetensors.py": ["sources/safetensors.md"],
    "_sharded.py": ["sources/sharded.md"],
    "_pickle.py": ["sources/pytorch-pickle.md"],
    "_pickle_zip.py": ["sources/pytorch-pickle.md"],
    "_model_config.py": ["sources/config-folder.md"],
    "_adapter.py": ["sources/peft-adapter.md"],
    "_manifest.py": ["sources/manifest.md"],
    "_memory.py": ["sources/in-memory.md"],
    "_resolve.py": ["sources/index.md"],
    "_jsonfile.py": ["sources/index.md"],
    "_dcp.py": ["sources/dcp.md"],
    "_dcp_metadata.py": ["sources/dcp.md"],
    "_frameworks.py": ["sources/frameworks.md"],
    "_remote.py": ["sources/remote.md"],
    "_factory.py": ["sources/index.md"],
    "_readfile.py": ["sources/index.md"],
}
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}
ERROR_CALLS = {"SourceError", "HeaderError", "ShardIndexError", "UnsafePickleError", "AdapterConfigError", "error"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml")]
    try:
        done = subprocess.run(
            [*command, "--site-dir", str(out)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the docs build took more than {BUILD_SECONDS} s")
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def page_text(path: Path) -> str:
    """The visible text of a built page, whitespace collapsed."""
    raw = path.read_text(encoding="utf-8")
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", raw, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def squeeze(text: str) -> str:
    """Text without any whitespace: rendering moves spaces around tags (code spans, links), never letters."""
    return "".join(text.split())


def plain(markdown: str) -> str:
    """Registry text as it reads once rendered: code spans lose their backticks."""
    return squeeze(markdown.replace("`", ""))


def section(markdown: str, heading: str) -> str:
    """The text under a ``## heading``, up to the next heading of level 2."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL)
    assert match, f"no '## {heading}' section"
    return match.group(1)


# -- the build -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_docs_build_strict(site: Path) -> None:
    for page in ("index.html", "getting-started.html", "concepts.html", "cli.html", "404.html"):
        assert (site / page).is_file(), page


@pytest.mark.slow
def test_every_finding_kind_has_a_generated_page(site: Path) -> None:
    for kind in KINDS.values():
        page = site / "findings" / f"{kind.code.lower()}.html"
        assert page.is_file(), f"no page for {kind.code}"
        text = page_text(page)
        for expected in (kind.code, kind.kind, kind.severity.value, kind.family, kind.title):
            assert expected in text, (kind.code, expected)
        for heading, body in (
            ("What it does", kind.what),
            ("Why is this bad?", kind.why),
            ("Fix safety", kind.fix_safety),
            ("Example", kind.example),
        ):
            assert f"{heading} " in text and plain(body) in squeeze(text), (kind.code, heading)
        # a finding names its page by the command that prints it; no link points to a site that is not published
        finding = Finding(code=kind.code, kind=kind.kind, severity=kind.severity, message="", count=0)
        assert finding.explain == f"keyguard explain {kind.code}" and finding.url is None
        # the fields table has a header row with names (no empty row above the values)
        raw = page.read_text(encoding="utf-8")
        first_row = re.search(r"<thead>(.*?)</thead>", raw, re.DOTALL)
        assert first_row and "Severity" in first_row.group(1) and re.sub(r"<[^>]+>|\s", "", first_row.group(1))


def test_finding_pages_are_not_written_by_hand() -> None:
    hand_written = sorted(p.name for p in (DOCS / "findings").iterdir() if p.name != "index.md")
    assert hand_written == [], "finding pages are generated from keyguard.report._kinds.KINDS"


@pytest.mark.slow
def test_findings_index_lists_every_code(site: Path) -> None:
    raw = (site / "findings" / "index.html").read_text(encoding="utf-8")  # findings/index.md
    for kind in KINDS.values():
        assert f'href="{kind.code.lower()}.html"' in raw, kind.code


# -- generated references ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_reference_documents_every_command_and_option(site: Path) -> None:
    raw = (site / "cli.html").read_text(encoding="utf-8")
    # table cells only: the usage lines name every option too, but say nothing about it
    cells = " ".join(html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", raw, re.DOTALL))
    parser = build_parser()
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {"keyguard": parser, **{f"keyguard {name}": sub for name, sub in sub_action.choices.items()}}
    for title, command in parsers.items():
        assert f'id="{title.replace(" ", "-")}"' in raw, title
        for action in command._actions:
            if action is sub_action:
                continue
            names = action.option_strings or [action.metavar or action.dest]
            for name in names:
                assert name in cells, (title, name)


@pytest.mark.slow
def test_api_reference_covers_every_public_name(site: Path) -> None:
    raw = (site / "api.html").read_text(encoding="utf-8")
    top = set(keyguard.__all__)
    missing = [name for name in keyguard.__all__ if f'id="keyguard.{name}"' not in raw]
    for module in (keyguard.sources, keyguard.fixes, keyguard.report):
        missing += [
            f"{module.__name__}.{name}"
            for name in module.__all__
            if name not in top and f'id="{module.__name__}.{name}"' not in raw
        ]
    assert missing == [], "add these to docs/api.md"


@pytest.mark.slow
def test_format_reference_shows_the_generated_schemas(site: Path) -> None:
    text = page_text(site / "reference" / "report-format.html")
    for fmt in ("keyguard.report/v1", "keyguard.plan/v1", "keyguard.keys/v1", "keyguard.inspect/v1"):
        assert fmt in text, fmt
    for model in (keyguard.Report, keyguard.Plan, keyguard.SourceSummary):
        for field in model.model_json_schema()["properties"]:
            assert field in text, (model.__name__, field)


def test_source_pages_list_every_problem_slug() -> None:
    folder = Path(keyguard.sources.__file__).parent
    undocumented: list[str] = []
    for module, pages in SLUG_PAGES.items():
        text = "".join((DOCS / page).read_text(encoding="utf-8") for page in pages)
        for slug in problem_slugs(folder / module):
            if f"`{slug}`" not in text:
                undocumented.append(f"{module}: {slug}")
    assert undocumented == []
    modules_with_slugs = {p.name for p in folder.glob("_*.py") if problem_slugs(p)}
    assert modules_with_slugs <= SLUG_PAGES.keys(), "map the new source module to its docs page in SLUG_PAGES"


def problem_slugs(path: Path) -> set[str]:
    """The ``problem`` slugs a module raises: the second argument of ``SourceError(path, "slug", ...)`` and kin."""
    slugs: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or len(node.args) < 2:
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        slug = node.args[1]
        if name in ERROR_CALLS and isinstance(slug, ast.Constant) and isinstance(slug.value, str):
            slugs.add(slug.value)
    return slugs


# -- README, CI, changelog -----------------------------------------------------------------------------------------
def test_readme_quick_start_is_make_demo_and_make_test() -> None:
    quick_start = section((REPO / "README.md").read_text(encoding="utf-8"), "Quick start")
    blocks = re.findall(r"^```([a-z]*)\n(.*?)^```", quick_start, re.MULTILINE | re.DOTALL)
    commands = [
        line.strip().removeprefix("$ ")
        for language, block in blocks
        if language in SHELL_BLOCKS  # ``text`` blocks show output
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert commands == ["make demo", "make test"]


def test_ci_runs_make_test() -> None:
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert "make test" in lines


def test_changelog_keeps_a_changelog() -> None:
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    unreleased = section(text, "[Unreleased]")
    assert "### Added" in unreleased


# -- what a reader meets -------------------------------------------------------------------------------------------
def test_nothing_user_visible_points_to_a_placeholder_address() -> None:
    places = [REPO / "README.md", REPO / "mkdocs.yml", REPO / "pyproject.toml", REPO / ".pre-commit-hooks.yaml"]
    places += [p for p in DOCS.rglob("*.md") if p.name != "changelog.md"]
    places += list((REPO / "keyguard").rglob("*.py"))
    for path in places:
        text = path.read_text(encoding="utf-8")
        for placeholder in (".invalid/", '.invalid"', "example.com", "example.org"):
            assert placeholder not in text, (path, placeholder)


@pytest.mark.slow
def test_the_site_opens_as_files(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    # links between pages name files (a folder link opened from disk shows a directory listing)
    links = re.findall(r'href="([^"#:]+)"', index)
    pages = [
        link for link in links if not link.startswith(("assets/", "search/")) and not link.endswith((".css", ".png"))
    ]
    assert pages and all(link.endswith(".html") for link in pages), pages
    assert (site / "404.html").is_file()


@pytest.mark.slow
def test_the_read_keys_source_list_stays_a_list(site: Path) -> None:
    raw = (site / "api.html").read_text(encoding="utf-8")
    start = raw.index("a sharded checkpoint: a folder with")
    before = raw[raw.rindex("<ul>", 0, start) : start]
    assert "<li>" in before  # each kind of source is an item of its own, not a run-on line
    assert raw.count("<li>a <code>.safetensors</code> file;</li>") == 1
