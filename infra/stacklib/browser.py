"""A real browser for the console's browser tests: Debian ``chromium`` (+ ``chromium-driver`` for selenium
and ``fonts-noto-cjk`` so Japanese text renders), installed with apt-get like the other services.

``python infra/stacklib/browser.py`` installs what is missing and prints the chromium path.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stacklib.services import apt_install

PACKAGES = {"chromium": "chromium", "chromedriver": "chromium-driver"}
FONT_DIR = Path("/usr/share/fonts/opentype/noto")


def ensure_chromium() -> str:
    """Install Debian chromium, its driver and CJK fonts if missing; returns the chromium executable."""
    missing = sorted({pkg for exe, pkg in PACKAGES.items() if shutil.which(exe) is None})
    if not any(FONT_DIR.glob("NotoSansCJK*")):
        missing.append("fonts-noto-cjk")
    if missing:
        apt_install(missing, what="browser")
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("browser: chromium still not on PATH after apt-get install")
    return path


if __name__ == "__main__":
    print(ensure_chromium())
