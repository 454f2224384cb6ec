"""Which PEFT versions the integrations are verified against, and the refusal for any other.

The X-LoRA integration replaces a private PEFT function for the duration of a build, and both integrations read
PEFT's layer and wrapper internals; they run only on the releases they were checked with.
"""

from __future__ import annotations

import re
from typing import Final

from keyguard._exceptions import UnsupportedVersionError

SUPPORTED_PEFT: Final = "0.21.x"
"""The PEFT release series the integrations support."""
VERIFIED_PEFT: Final = "0.21.2"
"""The PEFT release the integrations were verified with."""
_SERIES: Final = (0, 21)
PEFT_REQUIREMENT: Final = f"peft>={_SERIES[0]}.{_SERIES[1]},<{_SERIES[0]}.{_SERIES[1] + 1}"
"""The requirement the ``hf`` extra declares for PEFT (``pyproject.toml``; a test keeps the two equal)."""
# final releases only, optionally with a post-release or local suffix; no dev, alpha, beta or rc
_RELEASE: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:\.post\d+)?(?:\+[0-9A-Za-z.]+)?")


def check_peft_version(version: str, integration: str) -> None:
    """Refuse unless ``version`` is a final PEFT 0.21.x release.

    Raises:
        UnsupportedVersionError: the version is outside the supported series, or a pre-release.
    """
    match = _RELEASE.fullmatch(version.strip())
    if match is not None and (int(match[1]), int(match[2])) == _SERIES:
        return
    kind = "a pre-release or unrecognised version" if match is None else "outside the supported series"
    raise UnsupportedVersionError(
        f"{integration} supports PEFT {SUPPORTED_PEFT} (verified with {VERIFIED_PEFT}); the installed PEFT is"
        f" {version!r}, {kind}. keyguard relies on PEFT internals that change between releases and refuses rather"
        f" than guess: install peft=={VERIFIED_PEFT}, or load without keyguard."
    )


def installed_peft() -> str:
    """The installed PEFT's version string."""
    import peft

    return str(peft.__version__)
