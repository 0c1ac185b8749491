"""Coupon forms of §13: parsing, expiry in the shop zone, pool order / empty, generated code format."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kagoflow.core.coupons import (
    CODE_ALPHABET,
    Coupon,
    CouponSpec,
    MemoryCouponPool,
    PoolEmpty,
    abandonment_key,
    date_key,
    expiry,
    generated_code,
    inactive_key,
    issue,
    parse_coupon,
    price_key,
    read_pool,
    running_low,
    scenario_key,
)
from kagoflow.core.errors import RuleError
from kagoflow.core.shoptime import from_local

TOKYO = ZoneInfo("Asia/Tokyo")
UTC = ZoneInfo("UTC")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_fixed_code_without_expiry() -> None:
    spec = parse_coupon("CART10", file="r")
    assert spec == CouponSpec("fixed", "CART10")
    assert run(issue(spec, "k", 0, tz=TOKYO, secret="s", pool=None)) == Coupon("CART10")


def test_valid_days_expire_at_the_end_of_the_shop_local_day() -> None:
    # 2026-03-01 23:30 in Tokyo is still 2026-03-01 14:30 UTC; 16:00 UTC is already 2 March in Tokyo.
    send = from_local(datetime(2026, 3, 1, 23, 30, tzinfo=TOKYO))
    assert expiry(send, 7, TOKYO) == ("2026-03-08", from_local(datetime(2026, 3, 9, tzinfo=TOKYO)))
    late_utc = from_local(datetime(2026, 3, 1, 16, 0, tzinfo=UTC))
    assert expiry(late_utc, 7, TOKYO)[0] == "2026-03-09"
    assert expiry(late_utc, 7, UTC)[0] == "2026-03-08"
    assert expiry(send, 0, TOKYO)[0] == "2026-03-01", "valid_days 0: the day of the send"
    assert expiry(send, None, TOKYO) == (None, None)
    spec = parse_coupon({"code": "CART10", "valid_days": 7}, file="r")
    coupon = run(issue(spec, "k", send, tz=TOKYO, secret="s", pool=None))
    assert (coupon.code, coupon.expires) == ("CART10", "2026-03-08")


def test_pool_hands_out_codes_in_file_order_once_per_key() -> None:
    pool = MemoryCouponPool({"spring": ["A1", "A2", "A3"]})
    spec = CouponSpec("pool", "spring", valid_days=14)

    async def scenario() -> list[str]:
        codes = [(await issue(spec, key, 0, tz=TOKYO, secret="s", pool=pool)).code for key in ("k1", "k2", "k1")]
        assert await pool.remaining("spring") == (1, 3)
        return codes

    assert run(scenario()) == ["A1", "A2", "A1"]


def test_empty_pool_raises_pool_empty_and_a_replay_still_gets_its_code() -> None:
    pool = MemoryCouponPool({"p": ["ONLY"]})
    spec = CouponSpec("pool", "p")

    async def scenario() -> None:
        assert (await issue(spec, "k1", 0, tz=TOKYO, secret="s", pool=pool)).code == "ONLY"
        with pytest.raises(PoolEmpty) as info:
            await issue(spec, "k2", 0, tz=TOKYO, secret="s", pool=pool)
        assert info.value.pool == "p"
        assert (await issue(spec, "k1", 0, tz=TOKYO, secret="s", pool=pool)).code == "ONLY"

    run(scenario())


def test_running_low_below_ten_percent() -> None:
    assert not running_low(10, 100)
    assert running_low(9, 100)
    assert not running_low(0, 0)


def test_generated_code_format_and_stability() -> None:
    code = generated_code("secret", "m1|bd|2026", "BD-", 8)
    assert re.fullmatch(rf"BD-[{CODE_ALPHABET}]{{8}}", code)
    assert code == generated_code("secret", "m1|bd|2026", "BD-", 8), "stable for the same key"
    assert code != generated_code("secret", "m1|bd|2027", "BD-", 8)
    assert code != generated_code("other", "m1|bd|2026", "BD-", 8)
    # the exact derivation of §14: base32 of HMAC-SHA256, A-Z2-7 mapped one to one onto the alphabet
    digest = hmac.new(b"secret", b"m1|bd|2026", hashlib.sha256).digest()
    b32 = base64.b32encode(digest).decode()[:8]
    mapped = "".join(CODE_ALPHABET["ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".index(c)] for c in b32)
    assert code == "BD-" + mapped
    assert len(generated_code("s", "k", "", 32)) == 32
    assert not set("IO01") & set(generated_code("s", "k", "", 32))


def test_generated_codes_do_not_collide_over_many_keys() -> None:
    codes = {generated_code("s", f"m{i}|r|0", "", 10) for i in range(20000)}
    assert len(codes) == 20000


def test_decision_keys_per_kind() -> None:
    assert abandonment_key("m", "cart-1h", 123) == "m|cart-1h|123"
    assert price_key("m", "pd", 5) == "m|pd|5"
    assert date_key("m", "birthday", 2026) == "m|birthday|2026"
    assert inactive_key("m", "winback", 7) == "m|winback|7"
    assert scenario_key("m", "salt", "o1", 2, 1) == "m|salt|o1|2|1"


def test_parse_generate_and_pool(tmp_path: Path) -> None:
    spec = parse_coupon({"generate": {"prefix": "KF-", "length": 10}, "valid_days": 30}, file="r")
    assert spec == CouponSpec("generate", "KF-", length=10, valid_days=30)
    (tmp_path / "coupons").mkdir()
    (tmp_path / "coupons" / "spring.txt").write_text("# spring sale\nS1\n\n  S2  \n", encoding="utf-8")
    assert parse_coupon({"pool": "spring"}, file="r", rules_dir=tmp_path) == CouponSpec("pool", "spring")
    assert read_pool(tmp_path / "coupons" / "spring.txt") == ["S1", "S2"]


@pytest.mark.parametrize(("value", "key"), [
    ("", "coupon"),
    ("TWO WORDS", "coupon"),
    (5, "coupon"),
    ({"code": "A", "pool": "b"}, "coupon"),
    ({"code": "A", "valid_days": -1}, "coupon.valid_days"),
    ({"code": "A", "valid_days": 3651}, "coupon.valid_days"),
    ({"code": "A", "expires": 3}, "coupon.expires"),
    ({"pool": "../x"}, "coupon.pool"),
    ({"pool": "missing"}, "coupon.pool"),
    ({"generate": {"prefix": "X", "length": 3}}, "coupon.generate.length"),
    ({"generate": {"prefix": "X", "length": 33}}, "coupon.generate.length"),
    ({"generate": {"prefix": "A B", "length": 8}}, "coupon.generate.prefix"),
    ({"generate": {"length": 8, "alphabet": "x"}}, "coupon.generate.alphabet"),
])
def test_bad_coupon_names_file_key_and_value(tmp_path: Path, value: Any, key: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_coupon(value, file="rules/r.yaml", rules_dir=tmp_path)
    assert (info.value.file, info.value.key) == ("rules/r.yaml", key)


def test_pool_file_with_a_duplicate_code_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("A\nB\nA\n", encoding="utf-8")
    with pytest.raises(RuleError) as info:
        read_pool(path)
    assert info.value.key == "line 3" and info.value.value == "A"
