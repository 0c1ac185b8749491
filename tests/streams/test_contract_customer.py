"""The §13 profile fields of the ``members`` contract: optional, validated, bad values → ContractError (DLQ)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kagoflow.core.errors import ContractError
from streams.contract import parse_member

BASE: dict[str, Any] = {"member_id": "m1", "email": "a@example.com", "opt_in": True, "ts": 1_790_000_000_000}


def parse(**fields: Any) -> Any:
    return parse_member(orjson.dumps({**BASE, **fields}))


def test_new_fields_are_optional_and_parsed() -> None:
    plain = parse()
    assert (plain.birthday, plain.gender, plain.registered_at, plain.total_amount) == (None, None, None, None)
    full = parse(birthday="2000-02-29", gender="other", registered_at="2024-04-01T10:00:00+09:00",
                 total_amount=12000.5, first_purchase_at=1_700_000_000_000, last_purchase_at="2025-01-01T00:00:00Z")
    assert (full.birthday, full.gender, full.total_amount) == ("2000-02-29", "other", 12000.5)
    assert full.registered_at == 1_711_933_200_000
    assert (full.first_purchase_at, full.last_purchase_at) == (1_700_000_000_000, 1_735_689_600_000)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("birthday", "2001-02-29", "birthday"),
    ("birthday", "1990/06/15", "birthday"),
    ("birthday", "1990-6-15", "birthday"),
    ("birthday", 19900615, "birthday"),
    ("birthday", "1850-01-01", "birthday"),
    ("gender", "f", "gender"),
    ("gender", 1, "gender"),
    ("registered_at", "yesterday", "registered_at"),
    ("total_amount", -1, "total_amount"),
])
def test_invalid_values_name_the_field(field: str, value: Any, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        parse(**{field: value})
    assert info.value.reason.startswith(reason)
