"""Exit code 2 and one line for every bad input: invalid ``--ignore`` expressions (keyguard's own ``PatternError``
in Python too) and sources the operating system refuses to read (a folder that may not be listed, a file that may
not be opened), in whichever reader the error surfaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import keyguard
from keyguard._st_write import write_safetensors

Cli = Callable[..., Any]
F32 = ("F32", [2, 2], bytes(16))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    write_safetensors(tmp_path / "a.safetensors", {"w": F32})
    return {"a": tmp_path / "a.safetensors"}


# -- invalid regular expressions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["(", "a{99999999999}", "[z-a]", "(" * 1500 + ")" * 1500])
def test_an_invalid_ignore_pattern_is_a_pattern_error(files: dict[str, Path], pattern: str) -> None:
    with pytest.raises(keyguard.PatternError) as caught:
        keyguard.diagnose(files["a"], files["a"], ignore=["w", pattern])
    assert isinstance(caught.value, keyguard.KeyguardError) and isinstance(caught.value, ValueError)
    assert caught.value.pattern == pattern and caught.value.option == "ignore"
    assert str(caught.value).startswith(f"invalid regular expression {pattern!r} given to ignore= / --ignore: ")


def test_a_missing_source_with_a_bad_pattern_names_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(keyguard.PatternError, match="missing \\), unterminated subpattern at position 0"):
        keyguard.diagnose(tmp_path / "absent", tmp_path / "absent", ignore=["("])


def test_an_ignore_pattern_given_as_one_string_is_one_pattern(files: dict[str, Path]) -> None:
    report = keyguard.diagnose(files["a"], {"w": ((2, 2), "F32"), "extra": ((2,), "F32")}, ignore="extra")
    assert report.ok and report.summary.ignored == 1  # not the characters e, x, t, r, a


def test_the_command_line_says_one_line_and_exits_2(cli: Cli, files: dict[str, Path]) -> None:
    result = cli("diagnose", files["a"], "-e", files["a"], "--ignore", "(")
    assert result.code == 2 and result.out == ""
    assert result.err == (
        "keyguard: error: invalid regular expression '(' given to ignore= / --ignore: missing ), unterminated"
        " subpattern at position 0\n"
    )


def test_load_state_dict_refuses_a_bad_pattern_before_reading(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(2, 2)
    with pytest.raises(keyguard.PatternError):
        keyguard.load_state_dict(module, tmp_path / "absent.safetensors", ignore=["("])


# -- sources the operating system refuses ---------------------------------------------------------------------------
def _without_read_override() -> list[str] | None:
    """A command prefix that runs a program unable to read what its permissions forbid: nothing as an ordinary user;
    as root, ``setpriv`` dropping the capabilities that let root read anything. None when neither is possible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", "true"], capture_output=True)
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if probe.returncode == 0 else None


class Unprivileged:
    """Runs ``python ARGS...`` without root's power to read anything; ``lock(path)`` takes every permission away
    from a path until the test ends."""

    def __init__(self, prefix: list[str], env: dict[str, str], cwd: Path) -> None:
        self.prefix, self.env, self.cwd = prefix, env, cwd
        self.locked: list[Path] = []

    def run(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        command = [*self.prefix, sys.executable, *map(os.fspath, args)]
        return subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=self.cwd, timeout=120)

    def lock(self, path: Path) -> Path:
        path.chmod(0)
        self.locked.append(path)
        return path


@pytest.fixture
def unprivileged(offline_env: dict[str, str], tmp_path: Path) -> Iterator[Unprivileged]:
    prefix = _without_read_override()
    if prefix is None:
        pytest.skip("cannot run without root's permission to read anything (no setpriv)")
    runner = Unprivileged(prefix, offline_env, tmp_path)
    yield runner
    for path in runner.locked:
        path.chmod(0o755)  # so that pytest can remove tmp_path


@pytest.mark.parametrize(
    "layout",
    ["folder", "file-in-folder", "adapter-folder"],
)
def test_every_os_error_on_a_source_is_exit_2(
    unprivileged: Unprivileged, files: dict[str, Path], tmp_path: Path, layout: str
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    if layout == "folder":  # os.listdir fails: no model file is visible in it
        target = unprivileged.lock(folder)
    elif layout == "file-in-folder":
        shutil.copy(files["a"], folder / "model.safetensors")
        unprivileged.lock(folder / "model.safetensors")
        target = folder
    else:
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "target_modules": ["q"]}')
        shutil.copy(files["a"], folder / "adapter_model.safetensors")
        unprivileged.lock(folder / "adapter_config.json")
        target = folder
    for command in (
        ["inspect", target],
        ["diagnose", target, "-e", files["a"]],
        ["diagnose", files["a"], "-e", target],
    ):
        done = unprivileged.run("-m", "keyguard", *command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("keyguard: error: "), done.stderr
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr
        assert "cannot be read" in lines[0] or "permission denied" in lines[0], lines[0]


def test_an_unlistable_folder_is_a_source_error_in_python(unprivileged: Unprivileged, tmp_path: Path) -> None:
    (tmp_path / "locked").mkdir()
    folder = unprivileged.lock(tmp_path / "locked")
    code = (
        "import keyguard, sys\n"
        "try:\n"
        f"    keyguard.read_keys({str(folder)!r})\n"
        "except keyguard.SourceError as exc:\n"
        "    print(exc.problem, exc.path, exc.detail, sep='|')\n"
    )
    done = unprivileged.run("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"unreadable|{folder}|cannot be read: permission denied"
