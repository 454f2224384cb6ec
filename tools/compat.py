"""``make compat``: prove the supported PEFT range. For each PEFT release below, a throwaway virtualenv gets torch
(the pinned CPU build, first), that PEFT with a transformers of its time, and this checkout of keyguard; then the
integration tests run there, on the committed code (``git archive HEAD``, so edits in progress do not leak in).
Prints a Markdown table and, with ``--write``, puts it in docs/guides/peft-versions.md between its markers.

    python tools/compat.py                 # every pair
    python tools/compat.py 0.15.2 0.21.2   # the named PEFT releases only
    python tools/compat.py --write         # and update the docs table
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "guides" / "peft-versions.md"
TORCH = os.environ.get("TORCH", "torch==2.13.0")
#: The newest release of each supported PEFT series, with a transformers release of the same time.
PAIRS = {
    "0.15.2": "4.51.3",
    "0.16.0": "4.53.3",
    "0.17.1": "4.55.4",
    "0.18.1": "4.57.6",
    "0.19.1": "5.5.4",
    "0.20.0": "5.20.2",
    "0.21.2": "5.24.0",
}
TESTS = ["tests/integrations/test_peft.py", "tests/integrations/test_xlora.py", "tests/integrations/test_preflight.py"]
TOOLS = ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "hypothesis>=6.100", "accelerate"]
_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|error|errors|xfailed|xpassed)")
_BEGIN, _END = "<!-- compat-table -->", "<!-- /compat-table -->"


def run(peft: str, transformers: str, root: Path, source: Path) -> dict[str, str]:
    venv = root / f"peft-{peft}"
    python = venv / "bin" / "python"
    start = time.perf_counter()

    def pip(*args: str) -> None:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
            check=True,
            capture_output=True,
            text=True,
        )

    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip(TORCH)
        pip(f"peft=={peft}", f"transformers=={transformers}", *TOOLS)
        pip("-e", str(source))  # keyguard's own requirements only: no extras
    except subprocess.CalledProcessError as exc:
        return {"peft": peft, "transformers": transformers, "result": "install failed", "detail": exc.stderr[-300:]}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(source / "tests"),
    }
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
    counts = {kind: int(n) for n, kind in _SUMMARY.findall(last)}
    result = "pass" if done.returncode == 0 else "FAIL"
    return {
        "peft": peft,
        "transformers": transformers,
        "result": result,
        "detail": f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed"
        + (f", {counts['skipped']} skipped" if counts.get("skipped") else ""),
        "seconds": f"{time.perf_counter() - start:.0f}",
        "log": done.stdout[-4000:] if done.returncode else "",
    }


def table(rows: list[dict[str, str]]) -> str:
    lines = ["| PEFT | transformers | torch | integration tests | result |", "| --- | --- | --- | --- | --- |"]
    torch = TORCH.split("==")[-1]
    for row in rows:
        lines.append(f"| {row['peft']} | {row['transformers']} | {torch} | {row['detail']} | {row['result']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("versions", nargs="*", metavar="PEFT", help=f"PEFT releases (default: {', '.join(PAIRS)})")
    parser.add_argument("--write", action="store_true", help=f"put the table in {DOC.relative_to(REPO)}")
    parser.add_argument("--keep", action="store_true", help="keep the virtualenvs (in .compat/)")
    args = parser.parse_args(argv)
    unknown = [v for v in args.versions if v not in PAIRS]
    if unknown:
        parser.error(f"unknown PEFT release {', '.join(unknown)}; choose from {', '.join(PAIRS)}")
    root = REPO / ".compat" if args.keep else Path(tempfile.mkdtemp(prefix="keyguard-compat-"))
    root.mkdir(exist_ok=True)
    source = root / "keyguard-src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    rows = []
    try:
        for peft in args.versions or list(PAIRS):
            row = run(peft, PAIRS[peft], root, source)
            rows.append(row)
            print(f"peft {peft} + transformers {row['transformers']}: {row['result']} ({row['detail']})", flush=True)
            if row.get("log"):
                print(row["log"], file=sys.stderr)
            if not args.keep:
                shutil.rmtree(root / f"peft-{peft}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = table(rows)
    print()
    print(text)
    if args.write:
        doc = DOC.read_text()
        start, end = doc.index(_BEGIN) + len(_BEGIN), doc.index(_END)
        DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])
    return 0 if all(r["result"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
