"""The archive consumer as its own process, until SIGINT / SIGTERM.

``python -m kagoflow.archive [--topic KAFKA_TOPIC[=KIND] ...] [--group ID]``. Settings come from
``KAGOFLOW_*``; by default every archived kind is consumed (``<topic_prefix><kind>``) by ``<app_id>-archive``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import orjson

from kagoflow.archive.archiver import Archiver
from kagoflow.archive.rows import ARCHIVE_TOPICS
from kagoflow.settings import Settings

METRICS_LOG_SECONDS = 30.0


async def serve(settings: Settings, *, topics: dict[str, str] | None = None,
                group_id: str | None = None) -> None:
    archiver = Archiver(settings, topics=topics, group_id=group_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await archiver.start()
    task = asyncio.create_task(archiver.run(), name="archiver")
    log = logging.getLogger("kagoflow.archive")
    log.info("archive: consuming %s as group %s", ",".join(archiver.topics), archiver.group_id)
    while not stop.is_set() and not task.done():
        try:
            await asyncio.wait_for(stop.wait(), timeout=METRICS_LOG_SECONDS)
        except TimeoutError:
            log.info("archive: %s", orjson.dumps(archiver.metrics.snapshot()).decode())
    await archiver.stop()
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    log.info("archive: stopped %s", orjson.dumps(archiver.metrics.snapshot()).decode())


def _topic(value: str) -> tuple[str, str]:
    name, _, kind = value.partition("=")
    kind = kind or name
    if not name or kind not in ARCHIVE_TOPICS:
        raise argparse.ArgumentTypeError(f"{value!r}: expected KAFKA_TOPIC[=KIND], KIND in {ARCHIVE_TOPICS}")
    return name, kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kagoflow.archive", description=__doc__.splitlines()[0])
    parser.add_argument("--topic", type=_topic, action="append", default=[],
                        help="Kafka topic to archive, as NAME or NAME=KIND (repeatable; default: all kinds)")
    parser.add_argument("--group", help="consumer group id (default: <app_id>-archive)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings, topics=dict(args.topic) or None, group_id=args.group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
