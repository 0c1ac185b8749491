"""Issue 6 through Kafka, the real worker and the SMTP sink: catalog changes in → price-drop and restock mails
to exactly the members watching the product.

Rules send immediately (an ``at: HH:MM`` send cannot be waited for in wall-clock time; its semantics —
next HH:MM, re-check, drop-and-recover gets nothing — are covered by ``tests/core/test_pricewatch.py``).
The rules' watch sets do not overlap (``cheap`` / ``back-in-stock``: cart, favorite; ``big-drop``: view), so
each change fires one rule for a given member.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kagoflow.settings import Settings
from tests.agents.support import (
    get_json,
    mails_to,
    member_doc,
    now_ms,
    products_of,
    read_dead_letters,
    recipient,
    text_of,
    wait_until,
)
from tests.agents.worker_proc import WorkerProcess, produce_sync

pytestmark = pytest.mark.integration

Record = tuple[str, str | None, dict[str, Any] | bytes]
DAY_MS = 24 * 3600 * 1000
QUIET_S = 3.0
"""How long a test keeps watching for mails that must not come, after the expected ones arrived."""


def write_rules(directory: Path) -> Path:
    directory.mkdir()
    (directory / "shop.yaml").write_text("timezone: Asia/Tokyo\ncaps: {day: 1}\n")
    (directory / "cheap.yaml").write_text(
        "id: cheap\nkind: price_drop\nwatch: [cart, favorite]\nwhen: {price_at_most: 1000}\n"
        "send: {immediately: true}\ntemplate: price_drop\n"
    )
    (directory / "big-drop.yaml").write_text(
        "id: big-drop\nkind: price_drop\nwatch: [view]\nwhen: {drop_percent: 30}\n"
        "send: {immediately: true}\ntemplate: price_drop\n"
    )
    (directory / "back-in-stock.yaml").write_text(
        "id: back-in-stock\nkind: restock\nwatch: [cart, favorite]\nwhen: {restocked_at_least: 1}\n"
        "send: {immediately: true}\ntemplate: restock\n"
    )
    return directory


@pytest.fixture(scope="module")
def worker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("pricewatch")
    with WorkerProcess.running(stack, tmp, rules_dir=write_rules(tmp / "rules")) as proc:
        yield proc


class Shop:
    """Records of one test: members with addresses in the test's own mail domain, unique event ids."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.domain = f"price-{tag}.test"
        self.n = 0

    def member(self, name: str, *, opt_in: bool = True) -> Record:
        member_id = f"{name}-{self.tag}"
        return ("members", member_id, {"member_id": member_id, "email": f"{member_id}@{self.domain}",
                                       "opt_in": opt_in, "name": name})

    def beacon(self, name: str, kind: str, product: str | None = None, **extra: Any) -> Record:
        self.n += 1
        member_id = f"{name}-{self.tag}"
        value: dict[str, Any] = {"event_id": f"{self.tag}-{self.n}", "member_id": member_id, "type": kind,
                                 "ts": now_ms(), "device": "pc"}
        if product is not None:
            value["product_id"] = self.product(product)
        value.update(extra)
        return ("beacons", member_id, value)

    def product(self, short: str) -> str:
        return f"{short}-{self.tag}"

    def catalog(self, short: str, *, price: int, stock: int, ts: int, name: str | None = None) -> Record:
        value: dict[str, Any] = {"product_id": self.product(short), "price": price, "stock": stock, "ts": ts,
                                 "url": f"https://shop.example.com/items/{short}"}
        if name is not None:
            value["name"] = name
        return ("catalog", self.product(short), value)


def wait_applied(worker: WorkerProcess, shop: Shop, expected: dict[str, dict[str, str]]) -> None:
    """Wait until each member's product states are exactly ``expected`` (short product names)."""
    def check() -> bool:
        for name, states in expected.items():
            doc = member_doc(worker, f"{name}-{shop.tag}")
            want = {shop.product(p): s for p, s in states.items()}
            if doc is None or {pid: e["state"] for pid, e in products_of(doc).items()} != want:
                return False
        return True

    wait_until(check, timeout=60, what="member states", worker=worker)


def wait_mails(worker: WorkerProcess, shop: Shop, count: int) -> dict[str, list[str]]:
    """Wait for ``count`` mails in the test's domain, then ``QUIET_S`` more; recipient → text parts."""
    wait_until(lambda: len(mails_to(shop.domain)) >= count, timeout=60, what=f"{count} mails", worker=worker)
    time.sleep(QUIET_S)
    out: dict[str, list[str]] = {}
    for message in mails_to(shop.domain):
        out.setdefault(recipient(message).removesuffix(f"-{shop.tag}"), []).append(text_of(message))
    return out


def test_price_drop_mails_the_watching_members_once_with_the_dropped_product(worker: WorkerProcess,
                                                                             tag: str) -> None:
    shop = Shop(tag)
    now = now_ms()
    produce_sync(worker.settings, [
        shop.catalog("tea", price=2000, stock=10, ts=now - 60_000, name="Matcha Tea"),
        shop.catalog("pot", price=1800, stock=3, ts=now - 60_000, name="Iron Teapot"),
        # first seen yesterday: today's reference price is 5000
        shop.catalog("cup", price=5000, stock=8, ts=now - DAY_MS, name="Raku Cup"),
        *(shop.member(n) for n in ("carter", "faver", "viewer", "remover", "buyer", "other", "cupviewer")),
        shop.member("no-consent", opt_in=False),
    ])
    produce_sync(worker.settings, [
        shop.beacon("carter", "cart_add", "tea"), shop.beacon("carter", "cart_add", "pot"),
        shop.beacon("faver", "favorite_add", "tea"),
        shop.beacon("viewer", "view", "tea"),  # view is not watched by `cheap`
        shop.beacon("remover", "cart_add", "tea"), shop.beacon("remover", "cart_remove", "tea"),
        shop.beacon("buyer", "cart_add", "tea"), shop.beacon("buyer", "purchase", product_ids=[shop.product("tea")]),
        shop.beacon("other", "cart_add", "unrelated"),
        shop.beacon("cupviewer", "view", "cup"), shop.beacon("cupviewer", "view", "tea"),
        shop.beacon("no-consent", "cart_add", "tea"),
    ])
    wait_applied(worker, shop, {
        "carter": {"tea": "cart", "pot": "cart"}, "faver": {"tea": "favorite"}, "viewer": {"tea": "view"},
        "remover": {}, "buyer": {}, "other": {"unrelated": "cart"}, "cupviewer": {"cup": "view", "tea": "view"},
        "no-consent": {"tea": "cart"},
    })
    before = worker.metrics()["members"]["decisions"]
    now = now_ms()
    produce_sync(worker.settings, [
        shop.catalog("tea", price=900, stock=10, ts=now),  # 2000 → 900: at most 1000
        shop.catalog("pot", price=1700, stock=3, ts=now),  # a change that fires nothing
        shop.catalog("cup", price=3000, stock=8, ts=now),  # 40 % below today's reference
        shop.catalog("cup", price=2500, stock=8, ts=now + 1),  # fires again, but once per member and day
        ("catalog", shop.product("tea"), {"product_id": shop.product("tea"), "price": -1, "stock": 1, "ts": now}),
    ])
    mails = wait_mails(worker, shop, 3)
    assert Counter({name: len(texts) for name, texts in mails.items()}) == {
        "carter": 1, "faver": 1, "cupviewer": 1}
    assert "Matcha Tea" in mails["carter"][0] and "Iron Teapot" not in mails["carter"][0]
    assert "Matcha Tea" in mails["faver"][0]
    assert "Raku Cup" in mails["cupviewer"][0] and "Matcha Tea" not in mails["cupviewer"][0]
    status, product = get_json(worker, f"/api/products/{shop.product('tea')}")
    assert status == 200 and (product["price"], product["name"]) == (900, "Matcha Tea"), product
    assert get_json(worker, f"/api/products/{shop.product('nothing')}")[0] == 404
    letters = read_dead_letters(worker.settings, "catalog", expect=1)
    assert [letter["reason"].split(":")[0] for letter in letters] == ["price"]  # and the feed went on
    after = worker.metrics()["members"]["decisions"]
    assert after.get("suppressed", 0) - before.get("suppressed", 0) == 1  # no-consent watched tea


def test_restock_mails_watchers_when_stock_comes_back_from_zero(worker: WorkerProcess, tag: str) -> None:
    shop = Shop(tag)
    now = now_ms()
    produce_sync(worker.settings, [
        shop.catalog("kettle", price=4000, stock=0, ts=now - 60_000, name="Copper Kettle"),
        shop.catalog("whisk", price=1500, stock=2, ts=now - 60_000, name="Bamboo Whisk"),
        *(shop.member(n) for n in ("carter", "faver", "viewer", "whisker")),
    ])
    produce_sync(worker.settings, [
        shop.beacon("carter", "cart_add", "kettle"), shop.beacon("faver", "favorite_add", "kettle"),
        shop.beacon("viewer", "view", "kettle"), shop.beacon("whisker", "cart_add", "whisk"),
    ])
    wait_applied(worker, shop, {"carter": {"kettle": "cart"}, "faver": {"kettle": "favorite"},
                                "viewer": {"kettle": "view"}, "whisker": {"whisk": "cart"}})
    now = now_ms()
    produce_sync(worker.settings, [
        shop.catalog("kettle", price=4000, stock=5, ts=now),  # 0 → 5
        shop.catalog("whisk", price=1500, stock=7, ts=now),  # 2 → 7 is no restock
        shop.catalog("kettle", price=4000, stock=0, ts=now + 1),
        shop.catalog("kettle", price=4000, stock=4, ts=now + 2),  # restocked again the same day: no new mail
    ])
    mails = wait_mails(worker, shop, 2)
    assert {name: len(texts) for name, texts in mails.items()} == {"carter": 1, "faver": 1}
    assert all("Copper Kettle" in texts[0] and "Bamboo Whisk" not in texts[0] for texts in mails.values())


def test_watchers_are_found_after_a_worker_crash(worker: WorkerProcess, tag: str) -> None:
    """The product → watchers index is rebuilt from the stored states after a SIGKILL and restart."""
    shop = Shop(tag)
    now = now_ms()
    produce_sync(worker.settings, [
        shop.catalog("bowl", price=2400, stock=6, ts=now - 60_000, name="Chawan Bowl"),
        shop.member("carter"), shop.member("faver"),
    ])
    produce_sync(worker.settings, [shop.beacon("carter", "cart_add", "bowl"),
                                   shop.beacon("faver", "favorite_add", "bowl")])
    wait_applied(worker, shop, {"carter": {"bowl": "cart"}, "faver": {"bowl": "favorite"}})
    flushes = worker.metrics()["members"]["flushes"]
    wait_until(lambda: worker.metrics()["members"]["flushes"] > flushes + 1, timeout=10, what="a flush")
    worker.kill()
    worker.start()
    worker.wait_ready()
    produce_sync(worker.settings, [shop.catalog("bowl", price=990, stock=6, ts=now_ms())])
    mails = wait_mails(worker, shop, 2)
    assert {name: len(texts) for name, texts in mails.items()} == {"carter": 1, "faver": 1}
    assert all("Chawan Bowl" in texts[0] for texts in mails.values())
    assert products_of(member_doc(worker, f"carter-{tag}"))  # state survived too
