"""Kafka record → ClickHouse row, one mapper per archived topic.

Input topics are parsed with the §1 contract (a record the contract rejects is skipped here; the Faust
worker puts it on the DLQ). ``mail_decisions`` carries ``Decision.to_json()``; ``engagement`` carries the
mail engineer's delivery / open / click / unsubscribe events (format in ``streams/CONTRACT.md``).
Each mapper returns a tuple in the order of its table's ``COLUMNS`` entry (see infra/clickhouse/schema.sql).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from kagoflow.core.decisions import Decision
from kagoflow.core.errors import ContractError
from kagoflow.streams import contract

MAIL_DECISIONS: Final = "mail_decisions"
ENGAGEMENT: Final = "engagement"
COUPONS_ISSUED: Final = "coupons_issued"
ARCHIVE_TOPICS: Final = (*contract.INPUT_TOPICS, MAIL_DECISIONS, ENGAGEMENT, COUPONS_ISSUED)
DECISION_STATUSES: Final = frozenset(
    {"sent", "capped", "suppressed", "skipped", "held_out", "started", "ended", "converted"}
)
"""Mail decisions, plus the life records of scenario runs (``started`` / ``ended`` / ``converted``)."""
DELIVERY_RESULTS: Final = frozenset(
    {"delivered", "deferred", "bounced", "failed", "duplicate", "suppressed", "uncertain"}
)
"""``status`` of a ``delivery`` event (kagoflow.mail.delivery); stored as the event name."""
ENGAGEMENT_EVENTS: Final = frozenset({"open", "click", "unsubscribe", *DELIVERY_RESULTS})

Row = tuple[Any, ...]
Mapper = Callable[[bytes, int, int, int | None], Row | list[Row]]
"""(value, kafka partition, kafka offset, kafka timestamp ms) → row (a list of rows: a batch record);
raises ``ContractError``."""

_KAFKA = ("kafka_partition", "kafka_offset")
COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "beacons": ("ts_ms", "event_id", "member_id", "type", "product_id", "product_ids", "order_id", "price",
                "quantity", "device", "shop_id", *_KAFKA),
    "members": ("ts_ms", "member_id", "email", "opt_in", "name", "device", "locale", "purchase_count",
                *_KAFKA, "birthday", "gender", "registered_at"),
    "catalog": ("ts_ms", "product_id", "price", "stock", "name", "url", "image_url", "on_sale", *_KAFKA),
    "orders": ("ts_ms", "order_id", "member_id", "status", "ordered_at", "shipped_at", "delivered_at",
               "item_product_ids", "item_quantities", "item_prices", "coupon", "total", *_KAFKA),
    "mail_decisions": ("decision_key", "member_id", "rule_id", "kind", "status", "reason", "products",
                       "at_ms", "due_ms", "episode", "template", "coupon", "sender_name", "cap_exempt",
                       "step", "variant", "send", "order_id", *_KAFKA),
    "engagement": ("at_ms", "event", "decision_key", "member_id", "rule_id", "url", "detail", "suspected_bot",
                   *_KAFKA),
    "coupons_issued": ("code", "member_id", "rule_id", "decision_key", "kind", "variant", "issued_ms", "expires",
                       "expires_ms", *_KAFKA),
}


def _seconds(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


def beacon_row(value: bytes, partition: int, offset: int, timestamp: int | None) -> Row | list[Row]:
    """One row, or a list of rows for a batch record (``{"batch": […]}``): its valid beacons (the bad ones
    are the worker's dead letters), all with the record's partition and offset."""
    data = contract.beacon_record(value)
    if isinstance(data, dict):
        return _beacon_row(contract.beacon_fields(data), partition, offset)
    rows: list[Row] = []
    for index in range(len(data)):
        try:
            rows.append(_beacon_row(contract.batch_item(data, index), partition, offset))
        except ContractError:
            continue
    return rows


def _beacon_row(fields: contract.BeaconFields, partition: int, offset: int) -> Row:
    event_id, member_id, kind, ts, product_id, price, quantity, device, shop_id, product_ids, order_id = fields
    return (ts, event_id, member_id, kind, product_id or "", list(product_ids), order_id or "", price,
            quantity, device or "", shop_id, partition, offset)


def member_row(value: bytes, partition: int, offset: int, timestamp: int | None) -> Row:
    m = contract.parse_member(value, default_ts=timestamp)
    return (m.ts, m.member_id, m.email or "", 1 if m.opt_in else 0, m.name, m.device or "", m.locale,
            m.purchase_count, partition, offset, m.birthday, m.gender, _seconds(m.registered_at))


def catalog_row(value: bytes, partition: int, offset: int, timestamp: int | None) -> Row:
    c = contract.parse_catalog(value, default_ts=timestamp)
    on_sale = None if c.on_sale is None else int(c.on_sale)
    return (c.ts, c.product_id, c.price, c.stock, c.name, c.url, c.image_url, on_sale, partition, offset)


def order_row(value: bytes, partition: int, offset: int, timestamp: int | None) -> Row:
    o = contract.parse_order(value, default_ts=timestamp)
    return (o.ts, o.order_id, o.member_id, o.status, o.ordered_at // 1000, _seconds(o.shipped_at),
            _seconds(o.delivered_at), [i.product_id for i in o.items], [i.quantity for i in o.items],
            [i.price for i in o.items], o.coupon or "", o.total, partition, offset)


def _object(value: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"record: not valid JSON: {exc}") from None
    if type(data) is not dict:
        raise ContractError("record: not a JSON object")
    return data


def decision_row(value: bytes, partition: int, offset: int, timestamp: int | None) -> Row:
    """``Decision.to_json()``; scenario decisions add ``step`` (1..7, 0 for life records), ``variant`` (A/B),
    ``send`` (the j-th send of a repeated step) and ``order_id``."""
    data = _object(value)
    try:
        d = Decision.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractError(f"decision: {type(exc).__name__}: {exc}") from None
    if d.status not in DECISION_STATUSES:
        raise ContractError(f"status: unknown {d.status!r}")
    _check_decision(d)
    step = data.get("step") or 0
    variant = data.get("variant") or ""
    send = data.get("send") or 0
    order_id = data.get("order_id") or ""
    if type(step) is not int or not 0 <= step <= 255 or type(variant) is not str:
        raise ContractError("step/variant: step must be an integer 0..255, variant a string")
    if type(send) is not int or not 0 <= send <= 255 or type(order_id) is not str:
        raise ContractError("send/order_id: send must be an integer 0..255, order_id a string")
    return (d.key, d.member_id, d.rule_id, d.kind, d.status, d.reason, list(d.products), d.at_ms, d.due_ms,
            d.episode, d.template, d.coupon or "", d.sender_name or "", int(d.cap_exempt), step, variant,
            send, order_id, partition, offset)


def _check_decision(d: Decision) -> None:
    """``Decision.from_json`` trusts its producer; a mistyped field must be rejected here, not in the
    middle of a ClickHouse insert, where it would fail the whole batch."""
    for field in ("member_id", "rule_id", "kind", "reason", "episode", "template"):
        if type(getattr(d, field)) is not str:
            raise ContractError(f"{field}: must be a string")
    for field in ("coupon", "sender_name"):
        if getattr(d, field) is not None and type(getattr(d, field)) is not str:
            raise ContractError(f"{field}: must be a string")
    if not all(type(p) is str for p in d.products):
        raise ContractError("products: must be a list of strings")
    for field in ("at_ms", "due_ms"):
        if not contract.TS_MIN_MS <= getattr(d, field) < contract.TS_MAX_MS:
            raise ContractError(f"{field}: out of range")


@dataclass(frozen=True, slots=True)
class Engagement:
    """What happened to a mail after the decision: delivery result, open, click or unsubscribe."""

    event: str
    at_ms: int
    member_id: str
    decision_key: str = ""
    rule_id: str = ""
    url: str = ""
    detail: str = ""
    suspected_bot: bool = False
    """An open or click a machine probably made (privacy proxy, scanner): reports leave it out."""


def parse_engagement(value: bytes, *, default_ts: int | None = None) -> Engagement:
    """The mail side's event (kagoflow.mail.engagement): ``type`` (``open`` | ``click`` | ``unsubscribe`` |
    ``delivery`` with ``status`` = the delivery result; ``event`` is an alias of ``type``), ``at_ms`` (or
    ``ts`` / ``at``: epoch ms or ISO-8601 with offset, else the Kafka timestamp), ``key`` (or
    ``decision_key``), ``member_id`` (else the decision key's first ``|`` field), optional ``rule`` /
    ``rule_id``, ``url``, ``detail`` / ``reason``, ``suspected_bot``."""
    data = _object(value)
    event = data.get("type", data.get("event"))
    if event == "delivery":
        event = data.get("status")
        if type(event) is not str or event not in DELIVERY_RESULTS:
            raise ContractError(f"status: unknown delivery result {event!r}")
    if type(event) is not str or event not in ENGAGEMENT_EVENTS:
        raise ContractError(f"type: unknown {event!r}")
    raw_ts = next((data[k] for k in ("at_ms", "ts", "at") if data.get(k) is not None), default_ts)
    if raw_ts is None:
        raise ContractError("at_ms: missing")
    at_ms = contract.parse_ts(raw_ts, "at_ms")
    key = _str(data, "key") or _str(data, "decision_key")
    member_id = _str(data, "member_id") or key.split("|", 1)[0]
    if not member_id:
        raise ContractError("member_id: missing")
    bot = data.get("suspected_bot")
    if bot is not None and type(bot) is not bool:
        raise ContractError("suspected_bot: must be true or false")
    return Engagement(event=event, at_ms=at_ms, member_id=member_id, decision_key=key,
                      rule_id=_str(data, "rule") or _str(data, "rule_id"), url=_str(data, "url"),
                      detail=_str(data, "detail") or _str(data, "reason"), suspected_bot=bool(bot))


def _str(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if value is None:
        return ""
    if type(value) is not str or len(value) > contract.MAX_URL:
        raise ContractError(f"{field}: must be a string of at most {contract.MAX_URL} characters")
    return value


def engagement_row(value: bytes, partition: int, offset: int, timestamp: int | None) -> Row:
    e = parse_engagement(value, default_ts=timestamp)
    return (e.at_ms, e.event, e.decision_key, e.member_id, e.rule_id, e.url, e.detail, int(e.suspected_bot),
            partition, offset)


def coupon_row(value: bytes, partition: int, offset: int, timestamp: int | None) -> Row:
    """``IssuedCoupon.to_json()`` (SPEC §13): one code sent to one member."""
    data = _object(value)
    code, member, rule, key = (data.get(f) for f in ("code", "member_id", "rule", "key"))
    if not all(type(v) is str and v for v in (code, member, rule, key)):
        raise ContractError("coupon: code, member_id, rule and key must be non-empty strings")
    issued, expires_ms = data.get("issued_ms"), data.get("expires_ms")
    if type(issued) is not int or not contract.TS_MIN_MS <= issued < contract.TS_MAX_MS:
        raise ContractError("issued_ms: out of range")
    if expires_ms is not None and type(expires_ms) is not int:
        raise ContractError("expires_ms: must be an integer")
    expires, kind, variant = data.get("expires") or "", data.get("kind") or "", data.get("variant") or ""
    if not all(type(v) is str for v in (expires, kind, variant)):
        raise ContractError("expires/kind/variant: must be strings")
    return (code, member, rule, key, kind, variant, issued, expires, expires_ms, partition, offset)


MAPPERS: Final[dict[str, tuple[str, Mapper]]] = {
    contract.BEACONS: ("beacons", beacon_row),
    contract.MEMBERS: ("members", member_row),
    contract.CATALOG: ("catalog", catalog_row),
    contract.ORDERS: ("orders", order_row),
    MAIL_DECISIONS: ("mail_decisions", decision_row),
    ENGAGEMENT: ("engagement", engagement_row),
    COUPONS_ISSUED: ("coupons_issued", coupon_row),
}
"""topic → (table, mapper)."""
