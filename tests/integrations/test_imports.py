"""The integrations stay out of ``import keyguard``, and import PEFT (and torch) only when used."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_importing_the_integrations_is_light(offline_env: dict[str, str], tmp_path: Path) -> None:
    code = """
        import sys
        import keyguard
        assert "keyguard.integrations" not in sys.modules
        from keyguard.integrations import peft, xlora
        assert xlora.SUPPORTED_PEFT == ">=0.15,<0.22" and peft.VERIFIED_PEFT == "0.21.2"
        heavy = [m for m in ("torch", "transformers", "peft") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=offline_env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
