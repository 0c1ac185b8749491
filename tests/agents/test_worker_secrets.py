"""The worker refuses to start with secrets that have working defaults (issue 11, defect 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from kagoflow.settings import PROJECT_ROOT, Settings


def _worker(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAGOFLOW_")}
    # an unreachable broker: if the checks let the worker start, it fails (or hangs) instead of exiting 2
    clean.update({"KAGOFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1", "KAGOFLOW_LOCAL_MODE": "0", **env})
    return subprocess.run([sys.executable, "-m", "kagoflow.cli", "worker"], cwd=PROJECT_ROOT, env=clean,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize("secret", [None, "change-me-in-production", "too-short-31-bytes-xxxxxxxxxxxx"])
def test_default_or_short_tracking_secret_stops_the_worker(secret: str | None) -> None:
    result = _worker(**({"KAGOFLOW_TRACKING_SECRET": secret} if secret else {}))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "KAGOFLOW_TRACKING_SECRET" in result.stderr and "32 bytes" in result.stderr


def test_operator_server_off_loopback_without_token_stops_the_worker() -> None:
    result = _worker(KAGOFLOW_TRACKING_SECRET="s" * 32, KAGOFLOW_OPERATOR_HOST="0.0.0.0")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "KAGOFLOW_OPERATOR_TOKEN" in result.stderr
    assert "KAGOFLOW_TRACKING_SECRET" not in result.stderr


def test_create_app_refuses_too(tmp_path: object) -> None:
    from kagoflow.agents.app import create_app

    with pytest.raises(ValueError, match="KAGOFLOW_TRACKING_SECRET"):
        create_app(replace(Settings(), local_mode=False))
