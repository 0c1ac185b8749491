"""Engagement events (delivery results, opens, clicks, unsubscribes) and where they go.

Event shape (one JSON object, keyed by member id on the ``engagement`` topic)::

    {"type": "delivery" | "open" | "click" | "unsubscribe", "key", "member_id", "rule", "at_ms",
     "url"?, "suspected_bot"?, "status"?, "detail"?}

``key`` is the decision's idempotency key, so the archive joins every event to the mail decision.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

EventType = Literal["delivery", "open", "click", "unsubscribe"]


class EngagementSink(Protocol):
    async def emit(self, event: dict[str, Any]) -> None: ...


def engagement_event(
    type: EventType, *, key: str, member_id: str, rule: str, at_ms: int, **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {"type": type, "key": key, "member_id": member_id, "rule": rule, "at_ms": at_ms}
    event.update({name: value for name, value in extra.items() if value is not None})
    return event


class MemorySink:
    """Keeps events in a list: for previews, benchmarks and tests of the HTTP handlers."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def of_type(self, type: EventType) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type]
