"""Scenarios on the real stack (SPEC §12): orders in → the step mails in the SMTP sink at the right times; an
open through the tracking endpoint moves a run on; a purchase stops it; an unsubscribe through the tracking
endpoint suppresses the member and every member id with the same address; the backtest over the same
inputs (orders, profiles and the engagement topic) decides the same."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kagoflow.backtest import run_backtest
from kagoflow.settings import Settings
from tests.agents.support import _read_topic, mails_to, now_ms, recipient, text_of, wait_until
from tests.agents.worker_proc import WorkerProcess, produce_sync

pytestmark = pytest.mark.integration

REPEAT_S = 15
"""Delay of the repeated step 2 and of step 3 (long enough to open a mail in between)."""
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"


def write_rules(directory: Path, *, repeat_s: int = REPEAT_S) -> Path:
    directory.mkdir()
    (directory / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    (directory / "follow-t.yaml").write_text(f"""
id: follow-t
kind: scenario
start: {{status: [ordered], products: {{include: [kit]}}}}
end: {{status: [cancelled], purchased: any}}
steps:
  - send: {{anchor: ordered, after: 0m}}
    template: thanks
  - send: {{anchor: previous, after: {repeat_s}s}}
    template: shipped
    repeat: {{while: unopened, times: 3, then: end}}
  - send: {{anchor: previous, after: {repeat_s}s}}
    template: review
""")
    return directory


def profile(member: str, email: str) -> tuple[str, str, dict[str, Any]]:
    return ("members", member, {"member_id": member, "email": email, "opt_in": True, "name": f"会員 {member}"})


def order(member: str, order_id: str, at: int, products: tuple[str, ...] = ("kit",)) -> tuple[str, str, dict[str, Any]]:
    return ("orders", member, {"order_id": order_id, "member_id": member, "status": "ordered", "ordered_at": at,
                               "ts": at, "items": [{"product_id": p, "quantity": 1, "price": 1500} for p in products]})


def subjects_of(domain: str, member: str) -> list[str]:
    return [str(m["Subject"]) for m in mails_to(domain) if recipient(m) == member]


def html_of(message: Any) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def decisions_of(settings: Settings, *, expect: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    return asyncio.run(_read_topic(settings, settings.topic_prefix + "mail_decisions", expect=expect,
                                   timeout=timeout))


def brief(decisions: list[dict[str, Any]], member: str) -> list[tuple[Any, ...]]:
    return [(d["status"], d["reason"], d.get("step"), d.get("send"), d.get("order_id"))
            for d in decisions if d["member_id"] == member]


@pytest.fixture
def worker(stack: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess.create(stack, tmp_path, rules_dir=write_rules(tmp_path / "rules"))
    proc.start()
    yield proc
    proc.stop()


def test_step_mails_opens_purchases_unsubscribes_and_backtest_parity(worker: WorkerProcess, tag: str,
                                                                     tmp_path: Path) -> None:
    worker.wait_ready()
    settings = worker.settings
    domain = f"{tag}.test"
    seq, opener, buyer, unsub, twin = (f"{name}-{tag}" for name in ("seq", "opener", "buyer", "unsub", "twin"))
    start = now_ms()
    records = [profile(m, f"{m}@{domain}") for m in (seq, opener, buyer, unsub)]
    records.append(profile(twin, f"{unsub}@{domain}".upper()))  # same address, other member id
    records += [order(m, f"o-{m}", start) for m in (seq, opener, buyer, unsub)]
    produce_sync(settings, records)
    produced = list(records)

    # thank-you mails at once
    wait_until(lambda: all(subjects_of(domain, m) for m in (seq, opener, buyer, unsub)), timeout=90,
               what="the thank-you mails", worker=worker)
    assert all("ご注文ありがとうございます" in subjects_of(domain, m)[0] for m in (seq, opener, buyer))
    thanks = next(m for m in mails_to(domain) if recipient(m) == seq)
    assert f"o-{seq}" in text_of(thanks)  # the order block names the order

    # the buyer buys again (another order, no kit): the run converts, nothing more goes out
    later = order(buyer, f"o2-{buyer}", now_ms(), products=("refill",))
    produce_sync(settings, [later])
    produced.append(later)
    # the unsubscriber clicks the one-click unsubscribe of the thank-you mail
    mail = next(m for m in mails_to(domain) if recipient(m) == unsub)
    link = re.search(r"<(http[^>]+/u/[^>]+)>", str(mail["List-Unsubscribe"]))
    assert link is not None
    request = urllib.request.Request(link.group(1), data=b"List-Unsubscribe=One-Click", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    time.sleep(2)  # the unsubscribe travels through the engagement topic to the member's partition
    twin_order = order(twin, f"o-{twin}", now_ms())
    produce_sync(settings, [twin_order])
    produced.append(twin_order)

    # the opener opens the first "shipped" mail (as a person would: a browser, seconds after it arrived)
    def first_shipped() -> Any:
        return next((m for m in mails_to(domain) if recipient(m) == opener and "発送" in str(m["Subject"])), None)

    shipped = wait_until(first_shipped, timeout=REPEAT_S + 90, what="the opener's first shipped mail", worker=worker)
    time.sleep(6)  # opens within 5 s of the send are flagged as machine opens
    pixel = re.search(r'src="(http[^"]+/o/[^"]+)"', html_of(shipped))
    assert pixel is not None
    with urllib.request.urlopen(urllib.request.Request(pixel.group(1), headers={"User-Agent": BROWSER}),
                                timeout=10) as response:
        assert response.status == 200

    # seq: thanks + 3 × shipped, then the run ends when step 3 would be due (~4 × REPEAT_S); the opener gets
    # the review instead of the next repeat (without the open: 3 × shipped and no review)
    wait_until(lambda: len(subjects_of(domain, seq)) >= 4 and any("レビュー" in s for s in subjects_of(domain, opener)),
               timeout=4 * REPEAT_S + 120, what="seq's step mails and the opener's review mail", worker=worker)
    time.sleep(REPEAT_S + 4)  # anything that should not come would come now
    assert [s.split("、", 1)[1][:6] for s in subjects_of(domain, seq)] == [
        "ご注文ありが", "ご注文の商品", "ご注文の商品", "ご注文の商品"]
    # thanks, shipped, review — or, when the open reached the member's partition only after the next repeat
    # fell due (a loaded machine), one more shipped before the review
    opened = subjects_of(domain, opener)
    assert len(opened) in (3, 4) and "レビュー" in opened[-1], opened
    assert all("レビュー" not in s for s in opened[:-1]), opened
    assert len(subjects_of(domain, buyer)) == 1
    assert len(subjects_of(domain, unsub)) == 1
    assert subjects_of(domain, twin) == []

    decisions = decisions_of(settings, expect=10_000, timeout=10)
    assert brief(decisions, seq) == [
        ("started", "", 0, 0, f"o-{seq}"), ("sent", "", 1, 1, f"o-{seq}"), ("sent", "", 2, 1, f"o-{seq}"),
        ("sent", "", 2, 2, f"o-{seq}"), ("sent", "", 2, 3, f"o-{seq}"),
        ("ended", "repeat_exhausted", 0, 0, f"o-{seq}"),
    ]
    assert [d[:4] for d in brief(decisions, opener)][-2:] == [("sent", "", 3, 1), ("ended", "completed", 0, 0)]
    shipped_sends = [d[3] for d in brief(decisions, opener) if d[0] == "sent" and d[2] == 2]
    assert shipped_sends == list(range(1, len(opened) - 1)), shipped_sends
    assert [d[:2] for d in brief(decisions, buyer)] == [("started", ""), ("sent", ""), ("converted", "")]
    assert [d[:3] for d in brief(decisions, unsub)] == [
        ("started", "", 0), ("sent", "", 1), ("suppressed", "unsubscribed", 2), ("ended", "suppressed", 0)]
    assert ("suppressed", "unsubscribed", 1) in [d[:3] for d in brief(decisions, twin)]
    # spacing: each repeat follows the previous send by REPEAT_S (loaded machine: generous upper bound)
    sent = [d["at_ms"] for d in decisions if d["member_id"] == seq and d["status"] == "sent"]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(REPEAT_S * 1000 <= gap <= REPEAT_S * 1000 + 10_000 for gap in gaps), gaps

    # live = backtest over the same orders, profiles and engagement records
    engagement = asyncio.run(_read_topic(settings, settings.topic_prefix + "engagement", expect=10_000,
                                         timeout=5))
    # the open was a person's (not flagged as a machine open) and names the shipped step (SPEC §12)
    opens = [e for e in engagement if e.get("type") == "open" and e["member_id"] == opener]
    assert [(e["suspected_bot"], e["step"], e["rule"]) for e in opens] == [(False, 2, "follow-t")], opens
    files = {}
    for kind in ("members", "orders"):
        path = files[kind] = tmp_path / f"{kind}.jsonl"
        path.write_bytes(b"".join(orjson.dumps({**value, "ts": value.get("ts", start - 1000)}) + b"\n"
                                  for topic, _, value in produced if topic == kind))
    files["engagement"] = tmp_path / "engagement.jsonl"
    files["engagement"].write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in
                                             sorted(engagement, key=lambda e: e["at_ms"])))
    beacons = tmp_path / "beacons.jsonl"
    beacons.write_bytes(b"")
    out = tmp_path / "decisions.jsonl"
    run_backtest(rules_dir=settings.rules_dir, beacons=beacons, members=files["members"],
                 orders=files["orders"], engagement=files["engagement"], out=out, progress=False,
                 settings=settings)
    replayed = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    for member in (seq, opener, buyer, unsub, twin):
        assert brief(replayed, member) == brief(decisions, member), member


def test_sigkill_with_runs_pending_sends_every_due_step_exactly_once(stack: Settings, tmp_path: Path,
                                                                     tag: str) -> None:
    rules = write_rules(tmp_path / "rules", repeat_s=5)
    domain = f"{tag}.test"
    members = [f"k{i}-{tag}" for i in range(8)]
    with WorkerProcess.running(stack, tmp_path, rules_dir=rules) as worker:
        start = now_ms()
        records = [profile(m, f"{m}@{domain}") for m in members]
        records += [order(m, f"o-{m}", start + i * 700) for i, m in enumerate(members)]
        produce_sync(worker.settings, records)
        # steps at +0 s, +5 s, +10 s, +15 s per member, members 0.7 s apart: kill in the middle
        wait_until(lambda: len(mails_to(domain)) >= 12, timeout=120, what="some step mails", worker=worker)
        before = len(mails_to(domain))
        worker.kill()
        worker.start()
        worker.wait_ready()
        wait_until(lambda: len(mails_to(domain)) >= 4 * len(members), timeout=180, what="every step mail",
                   worker=worker)
        time.sleep(8)
        counts = Counter((recipient(m), str(m["Subject"])) for m in mails_to(domain))
        per_member = Counter(member for member, _ in counts.elements())
        assert per_member == {m: 4 for m in members}, worker.tail()
        assert all(n == 1 for (_, subject), n in counts.items() if "ご注文ありがとう" in subject)
        assert before < 4 * len(members), "the kill did not land among pending steps"
