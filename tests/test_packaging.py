"""What the package metadata promises: an SPDX licence with its file, data patterns that match, the ``hf`` extra the
integrations accept, and a typed package that mypy finds in a user's project under the editable install."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def test_the_licence_is_an_spdx_expression_with_its_text_shipped(project: dict[str, Any]) -> None:
    meta = project["project"]
    assert meta["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in meta["classifiers"])  # deprecated next to an SPDX licence
    for pattern in meta["license-files"]:
        (found,) = glob.glob(str(REPO / pattern))
        text = Path(found).read_text()
        assert (
            "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
        )


def test_every_package_data_pattern_matches_a_file(project: dict[str, Any]) -> None:
    for package, patterns in project["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            assert glob.glob(str(REPO / package / pattern)), f"{package}/{pattern} matches nothing"


def test_no_placeholder_urls_in_the_metadata(project: dict[str, Any]) -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert ".invalid" not in text and "example.com" not in text
    for url in project["project"].get("urls", {}).values():
        assert url.startswith("https://")


def test_the_hf_extra_allows_the_peft_series_the_integrations_accept(project: dict[str, Any]) -> None:
    from keyguard.integrations.peft import PEFT_REQUIREMENT, VERIFIED_PEFT

    hf = project["project"]["optional-dependencies"]["hf"]
    (peft,) = [r for r in hf if r.startswith("peft")]
    assert peft == PEFT_REQUIREMENT
    # the constraints file pins the verified release, which the requirement allows
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert pins["peft"] == VERIFIED_PEFT
    low, high = (part.lstrip("<>=") for part in PEFT_REQUIREMENT[len("peft") :].split(","))
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(VERIFIED_PEFT)[:2] < as_tuple(high)


def test_rich_is_declared_and_pinned(project: dict[str, Any]) -> None:
    assert any(r.startswith("rich") for r in project["project"]["dependencies"])
    assert "rich==" in (REPO / "constraints.txt").read_text()


@pytest.mark.slow
def test_mypy_in_a_users_project_finds_the_typed_package(tmp_path: Path) -> None:
    # a clean environment: no PYTHONPATH pointing at the checkout, no MYPYPATH; the install alone must do
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    where = subprocess.run(
        [sys.executable, "-c", "import keyguard; print(keyguard.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    if where.returncode != 0 or not Path(where.stdout.strip()).resolve().is_relative_to(REPO):
        pytest.skip("this checkout is not installed in editable mode here (make setup installs it)")
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            import keyguard
            from keyguard.report import Report


            def ok(report: Report) -> bool:
                return report.ok


            summary: keyguard.SourceSummary = keyguard.summarize(keyguard.read_keys("model.safetensors"))
            wrong: int = keyguard.__version__
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "app.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert "import-not-found" not in out and "import-untyped" not in out, out
    # keyguard's annotations are used: the one deliberate type error is found, nothing else
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in out, out
    assert "Found 1 error in 1 file" in out, out
