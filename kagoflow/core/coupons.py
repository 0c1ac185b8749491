"""Coupons of SPEC §13: the four rule forms, decision keys, code choice and expiry — pure logic.

A mail's code is a function of its *decision key* (fine points of §14), never of wall-clock chance, so a
replayed decision after a crash gets the same code: fixed codes are constant, generated codes are an HMAC
of the key, and pool codes are handed out by a ``CouponPool`` that remembers key → code (the Redis one in
``kagoflow.adapters.coupon_pool`` does so atomically across workers and restarts; ``MemoryCouponPool``
serves the backtest and the unit tests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from kagoflow.core.errors import RuleError
from kagoflow.core.shoptime import at_local_time, local_date

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_B32_TO_CODE = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CODE_ALPHABET)
"""RFC 4648 base32 ``A–Z2–7`` mapped one to one onto the code alphabet (no I, O, 0, 1: read-aloud safe)."""
MAX_VALID_DAYS = 3650
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
LOW_WATER = 0.10
"""A pool is reported as running low below this share of its codes."""
CouponForm = Literal["fixed", "pool", "generate"]


@dataclass(frozen=True, slots=True)
class CouponSpec:
    """A rule's ``coupon:``. ``value`` is the code (fixed), the pool name (pool) or the prefix (generate)."""

    form: CouponForm
    value: str
    length: int = 0
    valid_days: int | None = None

    def describe(self) -> str:
        valid = "" if self.valid_days is None else f", valid {self.valid_days}d"
        if self.form == "fixed":
            return f"coupon {self.value}{valid}"
        if self.form == "pool":
            return f"coupon from pool {self.value}{valid}"
        return f"coupon generated {self.value}+{self.length} chars{valid}"


@dataclass(frozen=True, slots=True)
class Coupon:
    """An issued coupon: what a decision carries and a template shows (``coupon.code``, ``coupon.expires``)."""

    code: str
    expires: str | None = None
    """Shop-local date ``YYYY-MM-DD`` (the coupon is valid to the end of that day), or None."""
    expires_ms: int | None = None
    """The end of that day: the first millisecond after it, in epoch ms."""


class CouponPool(Protocol):
    """Hands out pool codes in file order, one per decision key, and remembers which key got which code."""

    async def take(self, pool: str, decision_key: str) -> str | None:
        """The code of ``decision_key`` (the same one on every call); None when the pool is empty."""
        ...

    async def take_many(self, pool: str, decision_keys: list[str]) -> list[str | None]:
        """``take`` for each key in order (one round trip for a batch of decisions)."""
        ...

    async def remaining(self, pool: str) -> tuple[int, int]:
        """(codes left, codes in the pool file)."""
        ...


class MemoryCouponPool:
    """In-process ``CouponPool`` (backtest, tests): exact, but its memory ends with the process."""

    def __init__(self, pools: Mapping[str, list[str]]) -> None:
        self._codes = {name: list(codes) for name, codes in pools.items()}
        self._next = dict.fromkeys(self._codes, 0)
        self._given: dict[str, dict[str, str]] = {name: {} for name in self._codes}

    async def take(self, pool: str, decision_key: str) -> str | None:
        given = self._given[pool]
        code = given.get(decision_key)
        if code is not None:
            return code
        index = self._next[pool]
        codes = self._codes[pool]
        if index >= len(codes):
            return None
        self._next[pool] = index + 1
        given[decision_key] = codes[index]
        return codes[index]

    async def take_many(self, pool: str, decision_keys: list[str]) -> list[str | None]:
        return [await self.take(pool, key) for key in decision_keys]

    async def remaining(self, pool: str) -> tuple[int, int]:
        codes = self._codes[pool]
        return len(codes) - self._next[pool], len(codes)


class PoolEmpty(Exception):
    """The rule's pool has no unused code: the decision becomes ``skipped`` (``coupon_pool_empty``)."""

    def __init__(self, pool: str) -> None:
        super().__init__(pool)
        self.pool = pool


# -- decision keys (§14 fine points) ------------------------------------------------------------------------
def abandonment_key(member: str, rule: str, episode_ms: int) -> str:
    return f"{member}|{rule}|{episode_ms}"


def price_key(member: str, rule: str, send_ms: int) -> str:
    return f"{member}|{rule}|{send_ms}"


def date_key(member: str, rule: str, year: int) -> str:
    return f"{member}|{rule}|{year}"


def inactive_key(member: str, rule: str, since_ms: int) -> str:
    return f"{member}|{rule}|{since_ms}"


def scenario_key(member: str, scenario: str, order_id: str, step: int, send: int) -> str:
    return f"{member}|{scenario}|{order_id}|{step}|{send}"


# -- issuing -----------------------------------------------------------------------------------------------
def generated_code(secret: str, decision_key: str, prefix: str, length: int) -> str:
    """``prefix`` + the first ``length`` characters of base32(HMAC-SHA256(secret, key)) in the code alphabet."""
    digest = hmac.new(secret.encode(), decision_key.encode(), hashlib.sha256).digest()
    return prefix + base64.b32encode(digest).decode("ascii").translate(_B32_TO_CODE)[:length]


def expiry(send_ms: int, valid_days: int | None, tz: ZoneInfo) -> tuple[str | None, int | None]:
    """The shop-local date ``valid_days`` after the send's date, and the first ms after that day."""
    if valid_days is None:
        return None, None
    last_day = local_date(send_ms, tz) + timedelta(days=valid_days)
    return last_day.isoformat(), at_local_time(last_day + timedelta(days=1), (0, 0), tz)


async def issue(spec: CouponSpec, decision_key: str, send_ms: int, *, tz: ZoneInfo, secret: str,
          pool: CouponPool | None, taken: str | None = None) -> Coupon:
    """The coupon of one mail. Raises ``PoolEmpty`` when a pool has no code left for this key.
    ``taken``: the pool code already taken for this key (a batch took it with ``take_many``)."""
    if spec.form == "fixed":
        code = spec.value
    elif spec.form == "generate":
        code = generated_code(secret, decision_key, spec.value, spec.length)
    else:
        if taken is None and pool is not None:
            taken = await pool.take(spec.value, decision_key)
        if taken is None:
            raise PoolEmpty(spec.value)
        code = taken
    expires, expires_ms = expiry(send_ms, spec.valid_days, tz)
    return Coupon(code, expires, expires_ms)


def running_low(left: int, total: int) -> bool:
    return total > 0 and left < total * LOW_WATER


# -- rule parsing ------------------------------------------------------------------------------------------
def parse_coupon(value: object, *, file: str, rules_dir: Path | None = None, key: str = "coupon") -> CouponSpec:
    """Any of the four §13 forms; a pool must exist as ``<rules_dir>/coupons/<pool>.txt`` (when given)."""
    if isinstance(value, str):
        return CouponSpec("fixed", _code(value, file=file, key=key))
    if not isinstance(value, Mapping) or not value:
        raise RuleError(file, key, value, "must be a code, {code, valid_days}, {pool, valid_days} or "
                                          "{generate: {prefix, length}, valid_days}")
    forms = [name for name in ("code", "pool", "generate") if name in value]
    for name, item in value.items():
        if name not in ("code", "pool", "generate", "valid_days"):
            raise RuleError(file, f"{key}.{name}", item, "unknown key (use code, pool or generate, valid_days)")
    if len(forms) != 1:
        raise RuleError(file, key, dict(value), "give exactly one of code, pool, generate")
    valid_days = None
    if "valid_days" in value:
        valid_days = value["valid_days"]
        if not isinstance(valid_days, int) or isinstance(valid_days, bool) or not 0 <= valid_days <= MAX_VALID_DAYS:
            raise RuleError(file, f"{key}.valid_days", valid_days,
                            f"must be a whole number of days, 0..{MAX_VALID_DAYS}")
    form = forms[0]
    if form == "code":
        return CouponSpec("fixed", _code(value["code"], file=file, key=f"{key}.code"), valid_days=valid_days)
    if form == "pool":
        name = value["pool"]
        if not isinstance(name, str) or not POOL_NAME.match(name):
            raise RuleError(file, f"{key}.pool", name, "must be a pool name (letters, digits, - and _)")
        if rules_dir is not None:
            read_pool(pool_path(rules_dir, name), file=file, key=f"{key}.pool")
        return CouponSpec("pool", name, valid_days=valid_days)
    gen = value["generate"]
    if not isinstance(gen, Mapping):
        raise RuleError(file, f"{key}.generate", gen, "must be {prefix: TEXT, length: 4..32}")
    for name, item in gen.items():
        if name not in ("prefix", "length"):
            raise RuleError(file, f"{key}.generate.{name}", item, "unknown key (use prefix, length)")
    prefix = gen.get("prefix", "")
    if not isinstance(prefix, str) or len(prefix) > 16 or any(c.isspace() or not c.isprintable() for c in prefix):
        raise RuleError(file, f"{key}.generate.prefix", prefix, "must be up to 16 printable characters, no spaces")
    length = gen.get("length")
    if not isinstance(length, int) or isinstance(length, bool) or not 4 <= length <= 32:
        raise RuleError(file, f"{key}.generate.length", length, "must be a whole number 4..32")
    return CouponSpec("generate", prefix, length=length, valid_days=valid_days)


def _code(value: object, *, file: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() or not c.isprintable() for c in value):
        raise RuleError(file, key, value, "must be a coupon code (printable, no spaces)")
    return value


def pool_path(rules_dir: Path, name: str) -> Path:
    return rules_dir / "coupons" / f"{name}.txt"


def read_pool(path: Path, *, file: str | None = None, key: str = "coupon.pool") -> list[str]:
    """The codes of a pool file in file order: one per line; blank lines and ``#`` comments are skipped.
    A missing file or a code listed twice (it would go to two mails) is a load error."""
    where = file or str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RuleError(where, key, path.stem, f"no pool file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(where, key, path.stem, f"cannot read pool file {path}: {exc}") from None
    codes: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        code = line.strip()
        if not code or code.startswith("#"):
            continue
        if any(c.isspace() for c in code):
            raise RuleError(str(path), f"line {number}", code, "a code must not contain spaces")
        if code in seen:
            raise RuleError(str(path), f"line {number}", code, "code listed twice")
        seen.add(code)
        codes.append(code)
    return codes
