"""Start-up stays light: what ``import keyguard`` and each command import, in fresh interpreters.

The public names are imported from their modules on first use (PEP 562); type checkers and the docs read the
``if TYPE_CHECKING:`` imports of each package, so the two lists must stay equal.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keyguard._st_write import write_safetensors

REPO = Path(__file__).resolve().parent.parent
LAZY_PACKAGES = ["keyguard", "keyguard.sources", "keyguard.fixes", "keyguard.report"]


def modules_after(code: str, env: dict[str, str], cwd: Path) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (which may exit through ``SystemExit``)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        try:
        {textwrap.indent(textwrap.dedent(code), "    ")}
        except SystemExit:
            pass
        sys.stdout.flush()
        print("\\nKG-MODULES" + json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )
    assert "KG-MODULES" in done.stdout, done.stderr
    return set(json.loads(done.stdout.rsplit("KG-MODULES", 1)[1]))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.fixture
def small_pair(tmp_path: Path) -> tuple[Path, Path]:
    checkpoint, expected = tmp_path / "ck.safetensors", tmp_path / "ex.safetensors"
    write_safetensors(checkpoint, {f"module.layers.{i}.w": ("F32", [2, 2], bytes(16)) for i in range(4)})
    write_safetensors(expected, {f"layers.{i}.w": ("F32", [2, 2], bytes(16)) for i in range(4)})
    return checkpoint, expected


def test_import_keyguard_imports_no_subpackage(offline_env: dict[str, str], tmp_path: Path) -> None:
    modules = modules_after("import keyguard", offline_env, tmp_path)
    assert not top_level(modules) & {"pydantic", "torch", "numpy", "msgspec", "tabulate", "multiprocessing"}
    assert not {m for m in modules if m.startswith("keyguard.")} - {
        "keyguard._exceptions",
        "keyguard._version",
        "keyguard._lazy",
    }


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["diagnose", "--help"]])
def test_version_and_help_import_no_library_code(offline_env: dict[str, str], tmp_path: Path, argv: list[str]) -> None:
    modules = modules_after(f"from keyguard.cli import main; main({argv!r})", offline_env, tmp_path)
    heavy = top_level(modules) & {"pydantic", "torch", "numpy", "msgspec", "tabulate", "multiprocessing", "concurrent"}
    assert not heavy, heavy
    assert not {m for m in modules if m.startswith(("keyguard.engine", "keyguard.sources", "keyguard.report"))}


def test_diagnose_of_safetensors_files_imports_what_it_needs_only(
    offline_env: dict[str, str], tmp_path: Path, small_pair: tuple[Path, Path]
) -> None:
    checkpoint, expected = small_pair
    code = f"from keyguard.cli import main; main(['diagnose', {str(checkpoint)!r}, '-e', {str(expected)!r}])"
    modules = modules_after(code, offline_env, tmp_path)
    assert "keyguard.engine" in modules  # it did run
    # pydantic validates input and writes JSON and schemas, msgspec reads large headers: a table of findings over
    # two small files needs neither
    heavy = top_level(modules) & {"torch", "numpy", "transformers", "peft", "safetensors", "multiprocessing"}
    assert not heavy, heavy
    heavy = top_level(modules) & {"pydantic", "msgspec"}
    assert not heavy, heavy
    assert "concurrent.futures" not in modules  # thread pools are for writing files only
    assert not {m for m in modules if m.startswith(("keyguard.integrations", "keyguard.adapter_checks"))}
    # JUnit output only; child processes only for untrusted patterns that are not tame, off the main thread
    assert not modules & {"xml.etree.ElementTree", "subprocess"}, modules & {"xml.etree.ElementTree", "subprocess"}


def test_inspect_of_a_safetensors_file_imports_neither_pydantic_nor_msgspec(
    offline_env: dict[str, str], tmp_path: Path, small_pair: tuple[Path, Path]
) -> None:
    checkpoint, _ = small_pair
    modules = modules_after(
        f"from keyguard.cli import main; main(['inspect', {str(checkpoint)!r}])", offline_env, tmp_path
    )
    assert "keyguard._summary" in modules  # it did run
    assert not top_level(modules) & {"pydantic", "msgspec", "torch"}, top_level(modules) & {"pydantic", "msgspec"}


@pytest.mark.slow
def test_check_adapter_imports_multiprocessing_only_in_parallel(
    offline_env: dict[str, str], tmp_path: Path, small_pair: tuple[Path, Path]
) -> None:
    base, _ = small_pair
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["w"]}))
    weights = {"base_model.model.x.lora_A.weight": ("F32", [2], bytes(8))}
    write_safetensors(folder / "adapter_model.safetensors", weights)
    code = f"from keyguard.cli import main; main(['check-adapter', {str(folder)!r}, '--base', {str(base)!r}])"
    assert "multiprocessing" not in modules_after(code, offline_env, tmp_path)


# -- lazy exports -------------------------------------------------------------------------------------------------


def type_checking_imports(package: str) -> dict[str, str]:
    """``name -> module`` from the ``if TYPE_CHECKING:`` block of a package's ``__init__.py``."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.dump(stmt)
                names.update({alias.name: stmt.module or "" for alias in stmt.names})
    return names


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_exports_match_the_type_checking_imports(package: str) -> None:
    module = importlib.import_module(package)
    declared = type_checking_imports(package)
    eager = {name for name in module.__all__ if name not in declared}
    assert eager <= {name for name, value in vars(module).items() if not name.startswith("__") or name == "__version__"}
    for name in module.__all__:
        value = getattr(module, name)  # every public name resolves
        if name in declared:
            source = importlib.import_module(declared[name])
            assert value is getattr(source, name), name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_table_equals_the_type_checking_imports(package: str) -> None:
    """What runs (the table given to ``lazy_exports``) is what type checkers and the docs read."""
    tree = ast.parse(Path(importlib.import_module(package).__file__ or "").read_text(encoding="utf-8"))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "lazy_exports"
    ]
    (call,) = calls
    assert ast.literal_eval(call.args[1]) == type_checking_imports(package)
