"""Customer data on the real stack (SPEC §13/§14): pool coupons exactly once across a worker SIGKILL, held-out
members get no mail, an order carrying an issued code shows as redeemed in ClickHouse, and a birthday rule
due a minute ahead delivers at that minute."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from kagoflow.adapters.clickhouse import ClickHouseArchive
from kagoflow.core.variants import is_held_out
from kagoflow.settings import Settings
from tests.agents.test_worker_mails import mails_to, profile, wait_for
from tests.agents.worker_proc import WorkerProcess, produce_sync

pytestmark = pytest.mark.integration
TOKYO = ZoneInfo("Asia/Tokyo")
DELAY_S = 5
CODES = [f"Q-{i:03d}" for i in range(40)]


def write_rules(directory: Path, birthday_at: str) -> Path:
    directory.mkdir()
    (directory / "coupons").mkdir()
    (directory / "coupons" / "quick.txt").write_text("\n".join(CODES) + "\n")
    (directory / "shop.yaml").write_text("timezone: Asia/Tokyo\n")
    (directory / "cart-pool.yaml").write_text(
        "id: cart-pool\nkind: abandonment\ntrigger: cart\nclock: action\n"
        f"send: {{after: {DELAY_S}s}}\ntemplate: cart\ncoupon: {{pool: quick, valid_days: 7}}\nholdout: 30\n")
    (directory / "birthday.yaml").write_text(
        "id: birthday\nkind: date\ndate: birthday\n"
        f'send: {{days_before: 0, at: "{birthday_at}"}}\ntemplate: birthday\n'
        "coupon: {generate: {prefix: BD-, length: 8}, valid_days: 30}\n")
    return directory


def body(message: object) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[attr-defined, no-any-return]


def test_pool_holdout_redemption_and_birthday_on_the_real_stack(stack: Settings, tmp_path: Path,
                                                               unique_name: object) -> None:
    local_now = datetime.now(TOKYO)
    at = (local_now + timedelta(seconds=90)).replace(second=0, microsecond=0)  # 30..90 s ahead
    if at.date() != local_now.date():
        pytest.skip("too close to shop-local midnight for a same-day birthday")
    database = unique_name("custarch")  # type: ignore[operator]
    worker = WorkerProcess.create(stack, tmp_path, rules_dir=write_rules(tmp_path / "rules", at.strftime("%H:%M")),
                                  clickhouse_database=database)
    worker.start()
    try:
        worker.wait_ready()
        domain = f"{worker.settings.app_id}.test"
        now = time.time_ns() // 1_000_000
        members = [f"c{i:02d}" for i in range(16)]
        held = {m for m in members if is_held_out(m, "cart-pool", 30)}
        assert held and len(held) < len(members)
        birthday = {**profile("bday", domain)[2], "birthday": local_now.date().replace(year=1990).isoformat()}
        records = [profile(m, domain) for m in members] + [("members", "bday", birthday)]
        records += [("beacons", m, {"event_id": f"{m}-1", "member_id": m, "type": "cart_add", "ts": now + i * 300,
                                    "product_id": "sku-1", "price": 1200}) for i, m in enumerate(members)]
        produce_sync(worker.settings, records)
        expected = len(members) - len(held)
        # kill while the cart mails are being decided and sent; the restarted worker finishes them
        wait_for(lambda: len(mails_to(domain)) >= expected // 3, timeout=DELAY_S + 60)
        worker.kill()
        worker.start()
        worker.wait_ready()
        wait_for(lambda: len(mails_to(domain)) >= expected, timeout=DELAY_S + 90)
        time.sleep(3)
        cart = [m for _, m in mails_to(domain) if not str(m["To"]).startswith("bday@")]
        by_recipient = Counter(str(m["To"]).split("@")[0] for m in cart)
        assert by_recipient == {m: 1 for m in members if m not in held}, worker.tail()
        codes = {str(m["To"]).split("@")[0]: next(c for c in CODES if c in body(m)) for m in cart}
        assert len(set(codes.values())) == len(codes), "a pool code went to two mails"
        assert set(codes.values()) <= set(CODES[:expected + 2]), "codes come from the start of the file"
        # the first member orders with its code: redeemed in ClickHouse
        buyer, code = sorted(codes.items())[0]
        produce_sync(worker.settings, [("orders", buyer, {
            "order_id": f"o-{buyer}", "member_id": buyer, "status": "ordered", "ordered_at": now + 60_000,
            "ts": now + 60_000, "coupon": code, "items": [{"product_id": "sku-1", "quantity": 1, "price": 1200}]})])
        archive = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port, database=database)
        try:
            def redeemed() -> list[tuple[object, ...]]:
                try:
                    return archive.query(f"SELECT code, redeemed FROM {database}.v_coupon_redemptions "
                                         "WHERE redeemed = 1")
                except Exception:  # the archiver may not have created the schema yet
                    return []
            wait_for(lambda: bool(redeemed()), timeout=90)
            assert [tuple(r) for r in redeemed()] == [(code, 1)], worker.tail()
            rows = archive.query(f"SELECT member_id, coupon FROM {database}.v_mail_decisions "
                                 "WHERE status = 'held_out'")
            assert {r[0] for r in rows} == held and all(r[1] == "" for r in rows), "held out: no coupon"
        finally:
            archive.close()
        # the birthday mail arrives at the shop-local minute of its rule
        wait_for(lambda: any(str(m["To"]).startswith("bday@") for _, m in mails_to(domain)), timeout=180)
        arrived, mail = next((t, m) for t, m in mails_to(domain) if str(m["To"]).startswith("bday@"))
        assert arrived >= at.timestamp(), "birthday mail before its minute"
        assert arrived <= at.timestamp() + 30, "birthday mail far after its minute"
        assert "BD-" in body(mail) and "お誕生日" in str(mail["Subject"])
    finally:
        worker.stop()
        cleanup = ClickHouseArchive(host=stack.clickhouse_host, port=stack.clickhouse_port, database=database)
        try:
            cleanup.query(f"DROP DATABASE IF EXISTS {database}")
        finally:
            cleanup.close()
