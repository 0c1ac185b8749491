"""Kafka topic names of kagoflow: inputs of SPEC §1, outputs, and internal co-partitioned topics.

Names can carry a prefix (``KAGOFLOW_TOPIC_PREFIX``) so several deployments or test runs share one
cluster without reading each other's records.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def beacons(self) -> str:
        return self._name("beacons")

    @property
    def members(self) -> str:
        return self._name("members")

    @property
    def catalog(self) -> str:
        return self._name("catalog")

    @property
    def orders(self) -> str:
        return self._name("orders")

    @property
    def mail_decisions(self) -> str:
        """Every decision (sent / capped / suppressed / skipped) with its reason; key = member id."""
        return self._name("mail_decisions")

    @property
    def engagement(self) -> str:
        """Deliveries, opens, clicks and unsubscribes; key = member id."""
        return self._name("engagement")

    @property
    def coupons_issued(self) -> str:
        """Every coupon code sent to a member (SPEC §13); key = code, for the shop's cart system."""
        return self._name("coupons_issued")

    @property
    def ticks(self) -> str:
        """One record per partition per second: idle partitions still fire due mails and flush state."""
        return self._name("kagoflow-ticks")

    @property
    def catalog_events(self) -> str:
        """Price/stock triggers broadcast to every partition of the member agent."""
        return self._name("kagoflow-catalog-events")

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.beacons, self.members, self.catalog, self.orders)

    def all(self) -> tuple[str, ...]:
        """Every topic the worker needs, dead-letter topics included (also of the catalog triggers: the member
        path parks any record it fails on, and auto-creation is off on a real cluster)."""
        return (*self.inputs, *(dlq(t) for t in self.inputs), self.mail_decisions, self.engagement,
                dlq(self.engagement),  # the member partitions read engagement too (bad records park here)
                self.ticks, self.catalog_events, dlq(self.catalog_events), self.coupons_issued)

    def kind(self, topic: str) -> str:
        """The unprefixed name of one of our topics (``'beacons'`` for ``'t1-beacons'``)."""
        return topic[len(self.prefix):] if self.prefix and topic.startswith(self.prefix) else topic


def dlq(topic: str) -> str:
    """Dead-letter topic of an input topic."""
    return f"{topic}.dlq"


DEFAULT = Topics()
