"""Two workers of one app: a member request on either operator server is answered by the worker that owns
the member (Faust's table_route forwards it to the owner's operator URL, bearer token included)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from kagoflow.settings import Settings
from tests.agents.support import get_json, wait_until
from tests.agents.worker_proc import WorkerProcess, free_port, produce_sync

pytestmark = pytest.mark.integration
TOKEN = "routing-token-" + "r" * 32


def _second(first: WorkerProcess, tmp: Path) -> WorkerProcess:
    """Another worker in the same group (same app id and topics), with its own state and ports."""
    tmp.mkdir()
    settings = replace(first.settings, data_dir=tmp / "data", web_port=free_port(), operator_port=free_port())
    env = {**first.env, "KAGOFLOW_DATA_DIR": str(settings.data_dir), "KAGOFLOW_WEB_PORT": str(settings.web_port),
           "KAGOFLOW_OPERATOR_PORT": str(settings.operator_port),
           "KAGOFLOW_PUBLIC_BASE_URL": f"http://127.0.0.1:{settings.web_port}"}
    return WorkerProcess(settings=settings, workdir=tmp, log_path=tmp / "worker.log", env=env)


def test_either_worker_answers_for_every_member(stack: Settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    (tmp_path / "a").mkdir()
    first = WorkerProcess.create(stack, tmp_path / "a", rules_dir=rules, operator_token=TOKEN)
    second = _second(first, tmp_path / "b")
    first.start()
    try:
        first.wait_ready()
        second.start()
        try:
            second.wait_ready(timeout=180)  # ready = it handles ticks, so it owns partitions
            tag = uuid.uuid4().hex[:8]
            members = [f"route-{tag}-{i}" for i in range(12)]  # spread over the 4 partitions
            produce_sync(first.settings, [("members", m, {"member_id": m, "email": f"{m}@x.test", "opt_in": True})
                                          for m in members])

            def everyone_everywhere() -> bool:
                for worker in (first, second):
                    for member in members:
                        status, body = get_json(worker, f"/api/members/{member}")
                        if status != 200 or (body.get("profile") or {}).get("email") != f"{member}@x.test":
                            return False
                return True

            wait_until(everyone_everywhere, timeout=120, what="every member on both operator servers",
                       worker=second)
            assert first.metrics()["members"]["events"] > 0 and second.metrics()["members"]["events"] > 0
        finally:
            second.stop()
    finally:
        first.stop()
