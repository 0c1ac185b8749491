"""The Faust application: topics, tables, agents, the tick timer and the worker's services.

Built by ``create_app(settings)`` rather than at import time, so tests and benchmarks can build an app
against their own topics and settings.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any, cast

import faust
import orjson
from faust.types import TP

from kagoflow.adapters.catalog_follower import CatalogFollower
from kagoflow.adapters.coupon_pool import RedisCouponPool
from kagoflow.adapters.decision_gate import DecisionGate
from kagoflow.adapters.engagement import KafkaEngagementSink
from kagoflow.adapters.kafka_admin import TopicSpec
from kagoflow.adapters.kafka_outbox import KafkaOutbox
from kagoflow.adapters.redis_store import RedisStore
from kagoflow.agents.catalog import make_catalog_agent
from kagoflow.agents.delivery import make_delivery_agent
from kagoflow.agents.offsets import PartitionOffsets
from kagoflow.agents.tables import bytes_table
from kagoflow.agents.web import add_routes
from kagoflow.core.behaviour import MemberState
from kagoflow.core.rules import RuleSet
from kagoflow.loading import load_ruleset
from kagoflow.mail.delivery import Deliverer
from kagoflow.settings import Settings, require_secrets, to_env
from kagoflow.streams.topics import Topics
from kagoflow.web.operator import bearer_auth, operator_url
from kagoflow.web.public import PublicServer, public_app
from kagoflow.worker.engine import member_topics as engine_topics
from kagoflow.worker.engine import metrics_document
from kagoflow.worker.engine_link import BATCH_EVENTS, EngineLink
from kagoflow.worker.processor import MemberProcessor, make_processor, wall_clock_ms

log = logging.getLogger(__name__)


class _NoAck:
    """The event of a record read past Faust (``agents/offsets.py``): nothing to acknowledge — the flush that
    covers it also covers the next Faust record, whose acknowledgement lets Faust commit past it."""

    def ack(self) -> bool:
        return True


NO_ACK = _NoAck()


@dataclass
class Kagoflow:
    """Everything a running worker holds, for the web views and tests."""

    app: faust.App
    settings: Settings
    ruleset: RuleSet
    processor: MemberProcessor | None
    """The member processor when it runs in this process (``engine_process`` off) ..."""
    link: EngineLink | None
    """... else the link to the member engine process."""
    catalog: CatalogFollower
    member_table: Any
    archiver: Any = None
    """The in-process ``kagoflow.archive.Archiver`` when ``archive_enabled``."""
    deliverer: Any = None

    async def member_state(self, member_id: str) -> MemberState | None:
        if self.processor is not None:
            return self.processor.member_state(member_id)
        assert self.link is not None
        raw = await self.link.query("s", member_id.encode())
        return MemberState.from_bytes(raw) if raw else None

    async def engine_metrics(self) -> dict[str, Any]:
        """``{"members": …, "archive": …}`` from wherever they run (this process or the engine's)."""
        if self.processor is not None:
            return metrics_document(self.processor, self.archiver)
        assert self.link is not None
        metrics: dict[str, Any] = orjson.loads(await self.link.query("m"))
        return metrics


def create_app(settings: Settings, *, ruleset: RuleSet | None = None) -> Kagoflow:
    require_secrets(settings)
    if ruleset is None:
        ruleset = load_ruleset(settings)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        store="rocksdb://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        table_standby_replicas=settings.standby_replicas,
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        # Faust's web server is the operator server (API, metrics; table_route forwards to the owner's
        # canonical_url). Its built-in views would show every member's raw state (/table), the cluster map
        # (/router), sensors and the service graph: all off. Tracking links have their own public server.
        web_enabled=True,
        web_bind=settings.operator_host,
        web_port=settings.operator_port,
        canonical_url=operator_url(settings),
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        web_application_options={"middlewares": [bearer_auth(settings.operator_token)]},
        key_serializer="raw",
        value_serializer="raw",
        logging_config=None,
    )
    member_table = bytes_table(app, "member-buckets", settings)
    names = Topics(settings.topic_prefix)
    catalog = CatalogFollower(bootstrap=settings.kafka_bootstrap, tz=ruleset.shop.timezone,
                              topic=Topics(settings.topic_prefix).catalog)
    store = RedisStore.from_url(settings.redis_url, prefix=f"{settings.app_id}:")
    outbox = DecisionGate(KafkaOutbox(bootstrap=settings.kafka_bootstrap, client_id=f"{settings.app_id}-outbox"),
                          store.client, prefix=f"{settings.app_id}:", topic=names.mail_decisions)
    engagement = KafkaEngagementSink(settings, topic=names.engagement)
    deliverer = Deliverer(settings, store=store, sink=engagement)

    coupons = RedisCouponPool(store.client, prefix=f"{settings.app_id}:")
    processor = None if settings.engine_process else make_processor(
        settings, ruleset, table=member_table, catalog=catalog, caps=store.caps, outbox=outbox,
        addresses=store, coupons=coupons)
    link = EngineLink(topics=engine_topics(names), env={**os.environ, **to_env(settings)}) \
        if settings.engine_process else None
    member_topics = app.topic(
        *engine_topics(names),  # one list for both processes: the engine link indexes topics by position
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    ticks = app.topic(names.ticks, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
    offsets = PartitionOffsets(app, engine_topics(names), bootstrap=settings.kafka_bootstrap)
    decision_offsets = PartitionOffsets(app, [names.mail_decisions], bootstrap=settings.kafka_bootstrap)
    kf = Kagoflow(app=app, settings=settings, ruleset=ruleset, processor=processor, link=link, catalog=catalog,
                  member_table=member_table, deliverer=deliverer)
    public = PublicServer(public_app(settings, sink=engagement, store=store, ready=catalog.caught_up.is_set),
                          host=settings.web_host, port=settings.web_port)

    @app.agent(member_topics, name="kagoflow-members")
    async def member_agent(stream: Any) -> None:  # a faust.Stream (StreamT lacks noack)
        await catalog.caught_up.wait()
        if link is not None:
            await forward_to_engine(stream, link, member_table, offsets)
            return
        assert processor is not None
        async for event in stream.noack().events():
            message = event.message
            start = offsets.admit(message)
            if start is None:
                continue
            for record in await offsets.missing(message, start) if start >= 0 else ():
                await processor.on_event(topic=record.topic, partition=record.partition, key=record.key,
                                         value=record.value, timestamp_ms=record.timestamp, offset=record.offset,
                                         event=NO_ACK)
            await processor.on_event(
                topic=message.topic, partition=message.partition, key=message.key, value=message.value,
                timestamp_ms=int(message.timestamp * 1000), offset=message.offset, event=event,
            )

    @app.timer(1.0, on_leader=True)
    async def produce_ticks() -> None:
        value = orjson.dumps({"now_ms": wall_clock_ms()})
        for partition in range(settings.partitions):
            await ticks.send(value=value, partition=partition)

    if processor is not None:  # one-process mode; the engine process runs its own reloader
        from kagoflow.worker.rules_reload import RulesReloader, swap_rules

        reloader = RulesReloader(settings.rules_dir, lambda: load_ruleset(settings),
                                 lambda rules: swap_rules(processor, rules))

        @app.timer(2.0)
        async def reload_rules() -> None:
            reloader.check()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == names.beacons}
        offsets.revoked(partitions)
        decision_offsets.revoked({tp.partition for tp in revoked if tp.topic == names.mail_decisions})
        if link is not None:
            await link.revoke(partitions)
        else:
            assert processor is not None
            processor.revoke(partitions)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == names.beacons}
        await offsets.assigned(partitions)
        await decision_offsets.assigned({tp.partition for tp in assigned if tp.topic == names.mail_decisions})
        (link if link is not None else cast(MemberProcessor, processor)).assign(partitions)

    @app.task
    async def start_services() -> None:
        if link is not None:
            await link.start()
        await outbox.start()
        if processor is not None:
            await coupons.load_all(ruleset.coupon_pools)
        await catalog.start()
        await engagement.start()
        await public.start()
        await deliverer.start()
        if settings.archive_enabled and link is None:  # else the engine process runs it
            from kagoflow.archive.archiver import Archiver

            kf.archiver = Archiver(settings)
            await kf.archiver.start()
            app.add_future(kf.archiver.run())

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_services(sender: Any, **_: Any) -> None:
        if kf.archiver is not None:
            await kf.archiver.stop()  # flushes the pending batch and leaves the group at once
        await public.stop()
        await deliverer.close()
        await engagement.close()
        await catalog.stop()
        await outbox.stop()
        if link is not None:
            await link.stop()

    make_catalog_agent(app, settings=settings, ruleset=ruleset, outbox=outbox)
    make_delivery_agent(app, settings=settings, catalog=catalog, store=store, deliverer=deliverer,
                        offsets=decision_offsets)
    add_routes(kf)
    return kf


async def forward_to_engine(stream: Any, link: EngineLink, table: Any, offsets: PartitionOffsets) -> None:
    """The member agent with the engine in its own process: records go to the engine as they are; the
    bucket values it hands back are stored (and the records they cover acked) while a record of their
    partition is current, as Faust requires for table writes. Each record goes once, in offset order
    (``offsets``: Faust can hand over a record fetched before a rebalance after seeking back)."""
    await link.started.wait()
    submit, apply, ready, admit = link.submit, link.apply, link.ready, offsets.admit
    records = stream.noack()
    async for _ in records:  # what ``.events()`` does, minus one async generator per record
        event = records.current_event
        if event is None:
            continue
        message = event.message
        partition = message.partition
        if link.dump_pending:
            await link.dump(table)
        if partition in ready:
            apply(partition, table)
        start = admit(message)
        if start is None:
            continue
        if start >= 0:  # records Faust lost across a rebalance: in order, before this one
            for record in await offsets.missing(message, start):
                submit(NO_ACK, record.topic, partition, record.offset, record.timestamp, record.value, record.key)
        submit(event, message.topic, partition, message.offset, int(message.timestamp * 1000), message.value,
               message.key)
        if link.batched >= BATCH_EVENTS:
            await link.send_batch()


def worker_topics(app: faust.App, settings: Settings) -> list[TopicSpec]:
    """Every topic the worker uses: kagoflow's own and Faust's internal ones (changelogs, leader election),
    created before Faust starts (see ``kagoflow.adapters.kafka_admin``)."""
    specs = [TopicSpec(name, settings.partitions) for name in Topics(settings.topic_prefix).all()]
    specs.append(TopicSpec(f"{app.conf.id}-__assignor-__leader", 1))
    for table in app.tables.values():
        changelog = table.changelog_topic
        specs.append(TopicSpec(changelog.get_topic_name(), changelog.partitions or settings.partitions,
                               {"cleanup.policy": "compact"}))
    return specs


def run_worker(settings: Settings) -> int:
    """Run the worker until interrupted (``kagoflow worker``)."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    # Member state is many small long-lived objects: full collections cost ~5 µs per event at the default
    # thresholds (measured with /metrics-like traffic); collect young objects much less often.
    gc.set_threshold(50_000, 20, 20)
    kf = create_app(settings)
    if settings.create_topics:
        from kagoflow.adapters.kafka_admin import ensure_topics

        loop.run_until_complete(ensure_topics(
            bootstrap=settings.kafka_bootstrap, topics=worker_topics(kf.app, settings),
            replication=settings.replication_factor,
        ))
    worker = faust.Worker(kf.app, loglevel=settings.log_level.upper(), quiet=True, loop=loop)
    worker.execute_from_commandline()
    return 0
