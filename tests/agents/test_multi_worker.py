"""Three workers share 8 partitions while ~1,200 mails fall due and beacons keep arriving; workers join, leave
with SIGTERM and are SIGKILLed six times. Every mail the backtest decides on the same records arrives exactly
once, and no (decision key, status) appears twice in ``mail_decisions`` (issue 16: before the fix the old and
the new owner of a moved partition both decided what the old one had decided since its last state store).

Slow (~3 min) and CPU-hungry (three workers of two processes each): it uses its own topics and consumer group,
so it can run beside the rest of the suite (e.g. in a second pytest process).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from kagoflow.backtest import run_backtest
from kagoflow.core.decisions import Decision
from kagoflow.mail.message import message_id_for
from kagoflow.settings import PROJECT_ROOT, Settings
from tests.agents.support import outside_uncertain_window
from tests.agents.worker_proc import WorkerProcess, free_port, produce_sync

pytestmark = pytest.mark.integration

PARTITIONS = 8
MEMBERS = 1200
CHUNKS = 12
CHUNK_EVERY_S = 5.0
"""Beacons arrive over a minute: 100 carts every 5 s."""
DELAY_S = 20
FLUSH_S = 10.0
DOMAIN = "example.com"
"""Of the sender address: the Message-IDs' domain."""


def _rules(directory: Path) -> Path:
    directory.mkdir()
    (directory / "shop.yaml").write_text("timezone: Asia/Tokyo\ncaps: {day: 3, week: 10, month: 20}\n")
    (directory / "cart-scale.yaml").write_text(
        "id: cart-scale\nkind: abandonment\ntrigger: cart\nproducts: all\nclock: action\n"
        f"send: {{after: {DELAY_S}s}}\ntemplate: cart\n"
    )
    return directory


def _sibling(first: WorkerProcess, tmp: Path, name: str) -> WorkerProcess:
    """Another worker of the same app (consumer group, topics), with its own ports and state folder."""
    workdir = tmp / name
    workdir.mkdir()
    settings = replace(first.settings, web_port=free_port(), operator_port=free_port(), data_dir=workdir / "data")
    env = {**first.env, "KAGOFLOW_WEB_PORT": str(settings.web_port),
           "KAGOFLOW_OPERATOR_PORT": str(settings.operator_port), "KAGOFLOW_DATA_DIR": str(settings.data_dir),
           "KAGOFLOW_PUBLIC_BASE_URL": f"http://127.0.0.1:{settings.web_port}"}
    return WorkerProcess(settings=settings, workdir=workdir, log_path=workdir / "worker.log", env=env)


class Sink:
    """Message-IDs of the mails of this test's domain a private SMTP sink (``infra/smtp_sink.py``) stored: the
    test's ~1,200 mails stay out of the stack's shared sink, which other tests read whole."""

    def __init__(self, domain: str, path: Path) -> None:
        self.domain = domain
        self.path = path
        self.seen: set[str] = set()
        self.ids: list[str] = []

    def poll(self) -> Counter[str]:
        for path in sorted(self.path.glob("*.eml")):
            if path.name in self.seen:
                continue
            self.seen.add(path.name)
            with open(path, "rb") as fh:
                message = email.message_from_binary_file(fh, policy=email.policy.default)
            if str(message["To"]).rstrip(">").endswith("@" + self.domain):
                self.ids.append(str(message["Message-ID"]))
        return Counter(self.ids)


async def _read_all(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` (read until nothing new came for a few seconds)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        quiet = 0
        while quiet < 4:
            batches = await consumer.getmany(timeout_ms=1000)
            quiet = 0 if batches else quiet + 1
            for messages in batches.values():
                out += [orjson.loads(m.value) for m in messages if m.value is not None]
    finally:
        await consumer.stop()
    return out


def _expected(tmp: Path, rules_dir: Path, settings: Settings, records: list[tuple[str, str, dict[str, Any]]]
              ) -> list[Decision]:
    for kind in ("members", "beacons"):
        (tmp / f"{kind}.jsonl").write_bytes(b"".join(orjson.dumps(v) + b"\n" for k, _, v in records if k == kind))
    out = tmp / "decisions.jsonl"
    run_backtest(rules_dir=rules_dir, members=tmp / "members.jsonl", beacons=tmp / "beacons.jsonl", out=out,
                 progress=False, settings=settings)
    return [Decision.from_json(orjson.loads(line)) for line in out.read_bytes().splitlines()]


@pytest.mark.xfail(strict=False, reason=(
    "KNOWN DEFECT (issue 16, open): after the offset guard (kagoflow/worker/offsets.py) fixed Faust dropping "
    "records across rebalances, 4 of 18 loop runs (before the delivery agent got the same guard) still lost "
    "3-18 mails: 'sent' decisions in mail_decisions never reserved in the ledger, and once a decision made "
    "without the member's profile (suppressed/no_profile). The message names the ledger state and decision "
    "records of each lost mail. Remove this mark with the fix."))
def test_partitions_move_through_joins_leaves_and_kills_without_a_mail_lost_or_decided_twice(
        stack: Settings, tmp_path: Path) -> None:
    rules_dir = _rules(tmp_path / "rules")
    smtp_port = free_port()
    sink_log = (tmp_path / "sink.log").open("wb")
    sink_proc = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "infra" / "smtp_sink.py"), "--port", str(smtp_port),
         "--mail-dir", str(tmp_path / "sink" / "mail")], stdout=sink_log, stderr=subprocess.STDOUT)
    first = WorkerProcess.create(stack, tmp_path, rules_dir=rules_dir, partitions=PARTITIONS, smtp_port=smtp_port)
    # The default state store interval, not the tests' 0.5 s: a partition that moves is replayed from its last
    # store, so the new owner re-decides up to 10 s of the old owner's decisions (what went twice before).
    first.settings = replace(first.settings, state_flush_seconds=FLUSH_S)
    first.env["KAGOFLOW_STATE_FLUSH_SECONDS"] = str(FLUSH_S)
    workers = [first, _sibling(first, tmp_path, "w2"), _sibling(first, tmp_path, "w3")]
    domain = f"{first.settings.app_id}.test"
    sink = Sink(domain, tmp_path / "sink" / "mail")
    members = [f"s{i:04d}" for i in range(MEMBERS)]
    records: list[tuple[str, str, dict[str, Any]]] = []
    feeding_error: list[BaseException] = []

    def feed() -> None:
        """Members first, then the carts in chunks while the workers come and go."""
        try:
            now = time.time_ns() // 1_000_000
            profiles = [("members", m, {"member_id": m, "email": f"{m}@{domain}", "opt_in": True, "name": m,
                                        "ts": now - 5_000}) for m in members]
            produce_sync(first.settings, list(profiles))
            records.extend(profiles)
            size = MEMBERS // CHUNKS
            for chunk in range(CHUNKS):
                now = time.time_ns() // 1_000_000
                carts = [("beacons", m, {"event_id": f"{m}-1", "member_id": m, "type": "cart_add", "ts": now + i,
                                         "product_id": f"sku-{i % 7}", "price": 1500, "device": "pc"})
                         for i, m in enumerate(members[chunk * size:(chunk + 1) * size])]
                produce_sync(first.settings, list(carts))
                records.extend(carts)
                time.sleep(CHUNK_EVERY_S)
        except BaseException as exc:  # reported by the test thread
            feeding_error.append(exc)

    started = time.monotonic()
    try:
        for worker in workers[:2]:
            worker.start()
        for worker in workers[:2]:
            worker.wait_ready(timeout=120)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        # join, SIGKILL, rejoin, SIGTERM, rejoin, SIGKILL, rejoin: partitions move seven times
        steps = [("start", 2), ("kill", 0), ("start", 0), ("stop", 1), ("start", 1), ("kill", 2), ("start", 2)]
        for action, index in steps:
            time.sleep(9)
            worker = workers[index]
            if action == "start":
                worker.start()
            elif action == "kill":
                worker.kill()
            else:
                worker.stop()
        feeder.join(timeout=120)
        assert not feeding_error, feeding_error
        expected = _expected(tmp_path, rules_dir, first.settings, records)
        expected_ids = {message_id_for(d.key, DOMAIN) for d in expected if d.status == "sent"}
        assert len(expected_ids) == MEMBERS
        deadline = time.monotonic() + 150
        while len(set(sink.poll())) < len(expected_ids) and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)  # a mail sent twice would arrive now
        received = sink.poll()
        decided = asyncio.run(_read_all(first.settings, first.settings.topic_prefix + "mail_decisions"))
    finally:
        for worker in workers:
            worker.stop()
        sink_proc.terminate()
        sink_proc.wait(timeout=10)
        sink_log.close()
    elapsed = time.monotonic() - started
    pairs = Counter((d["key"], d["status"]) for d in decided)
    twice = {pair: n for pair, n in pairs.items() if n > 1}
    lost = expected_ids - set(received)
    mailed_twice = {mid: n for mid, n in received.items() if n > 1}
    print(f"\n{len(steps)} membership changes in {elapsed:.0f} s: {len(received)} of {len(expected_ids)} mails, "
          f"{len(decided)} decision records, {len(twice)} decided twice")
    assert not twice, f"{len(twice)} decisions twice in mail_decisions, e.g. {list(twice.items())[:5]}"
    # Lost only what a SIGKILL hit between its transmitting mark and the end of DATA (at most once; reported
    # uncertain): a handful per kill at most.
    key_of = {message_id_for(d.key, DOMAIN): d.key for d in expected if d.status == "sent"}
    unexplained = outside_uncertain_window({key_of[mid] for mid in lost}, first.settings)
    records_of = {key: [(d["status"], d.get("reason"), bool(d.get("profile"))) for d in decided if d["key"] == key]
                  for key in list(unexplained)[:10]}
    assert not unexplained, f"{len(lost)} mails lost, {len(unexplained)} outside the uncertain window " \
                            f"(ledger state, then mail_decisions records): {dict(list(unexplained.items())[:10])}" \
                            f" {records_of}\n{workers[0].tail(30)}"
    kills = sum(1 for action, _ in steps if action == "kill")
    assert len(lost) <= kills * first.settings.smtp_pool_size, f"{len(lost)} mails uncertain after {kills} kills"
    assert not mailed_twice, f"{len(mailed_twice)} mails sent twice"
    assert {key for key, status in pairs if status == "sent"} == {d.key for d in expected if d.status == "sent"}
