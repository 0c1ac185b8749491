"""Delivering decided mails exactly once: suppression, ledger reservation, SMTP with retries, confirmation.

For each ``sent`` decision:
1. render and build the message (a template or address problem fails here, before anything is recorded);
2. one Redis call: a ledger entry for the decision's key wins (``duplicate`` when it was sent or failed,
   ``uncertain`` when it was ``transmitting`` but never confirmed — a crash or a connection lost between
   writing the end of DATA and reading its reply: counted and reported, never resent; a ``reserved`` entry
   is a crash before that moment — nothing can have been delivered — and is taken over and sent), else a
   suppressed member or address gives ``suppressed``, else the key is reserved for this send;
3. SMTP with exponential backoff on 4xx and lost connections, for at most ``retry_seconds``; just before the
   end of DATA is written the entry becomes ``transmitting`` (back to ``reserved`` after a 4xx); a 5xx puts
   the member and address on the suppression list (``failed``);
4. the ledger entry is confirmed, and a ``delivery`` engagement event goes to the sink.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from kagoflow.adapters.redis_calls import Coalescer
from kagoflow.adapters.redis_store import LostReservation, RedisStore, StoreUnavailable
from kagoflow.adapters.smtp import SmtpPermanentError, SmtpPool, SmtpTemporaryError, SmtpUncertainError
from kagoflow.core.catalog import ProductInfo
from kagoflow.core.decisions import Decision
from kagoflow.mail.context import MemberProfile
from kagoflow.mail.dkimsign import signer_for
from kagoflow.mail.engagement import EngagementSink, engagement_event
from kagoflow.mail.message import MessageError, OutgoingMail, compose
from kagoflow.mail.ratelimit import TokenBucket
from kagoflow.mail.templates import MailTemplates, TemplateError
from kagoflow.settings import Settings

log = logging.getLogger(__name__)

NOT_A_BOUNCE = frozenset({500, 501, 502, 503, 504, 530, 534, 535, 538})
"""5xx replies about our own protocol use or authentication: the mail fails, the member is not suppressed."""
UNDO_TIMEOUT_S = 5.0
"""How long a send cancelled during its ``transmitting`` mark waits to put the entry back to ``reserved``."""
DeliveryStatus = Literal["delivered", "duplicate", "suppressed", "failed", "uncertain"]
DeliveryJob = tuple[Decision, MemberProfile, Sequence[ProductInfo]]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    status: DeliveryStatus
    detail: str = ""
    message_id: str | None = None
    attempts: int = 0


def check_mail_settings(settings: Settings) -> None:
    """Refuse to start on settings that would send mails receivers reject or that break RFC 8058: an http
    unsubscribe URL outside local mode, incomplete DKIM settings (``DkimError``)."""
    if not settings.local_mode and not settings.public_base_url.startswith("https://"):
        raise ValueError(
            f"KAGOFLOW_PUBLIC_BASE_URL={settings.public_base_url!r}: the unsubscribe link must be https "
            "(RFC 8058; http only with KAGOFLOW_LOCAL_MODE=1)"
        )
    if signer_for(settings) is None and not settings.local_mode:
        log.warning("mails are not DKIM-signed (KAGOFLOW_DKIM_SELECTOR unset): Gmail and Yahoo reject bulk mail "
                    "without DKIM")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        *,
        store: RedisStore,
        sink: EngagementSink,
        pool: SmtpPool | None = None,
        templates: MailTemplates | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        retry_seconds: float | None = None,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 30.0,
        concurrency: int | None = None,
    ) -> None:
        check_mail_settings(settings)
        self.settings = settings
        self.store = store
        self.sink = sink
        self.pool = pool or SmtpPool.from_settings(settings)
        self.templates = templates or MailTemplates(settings.templates_dir)
        self.clock = clock
        self.retry_seconds = settings.smtp_retry_seconds if retry_seconds is None else retry_seconds
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.concurrency = concurrency or max(8, 4 * self.pool.size)
        self.bucket = TokenBucket(settings.smtp_rate_per_second)
        self._render_thread = ThreadPoolExecutor(1, thread_name_prefix="kagoflow-render")
        """Renders run here, one at a time (the templates' compiled cache is this thread's alone)."""
        self._render: Coalescer[Callable[[], OutgoingMail], OutgoingMail] = Coalescer(self._render_batch)
        """Mails composed in the same event-loop turn go to the thread together (one hand-over, not one each)."""
        self._in_flight: set[str] = set()
        self.metrics: Counter[str] = Counter()
        """delivered / duplicate / suppressed / failed / uncertain per result, plus retried (SMTP attempts
        repeated) and emit_failed (engagement events the sink refused)."""

    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()
        self._render_thread.shutdown(wait=False)

    async def deliver(
        self, decision: Decision, *, profile: MemberProfile, products: Sequence[ProductInfo]
    ) -> DeliveryResult:
        """Send the mail of a ``sent`` decision at most once. Raises ``StoreUnavailable`` when Redis is
        away; the caller retries later, and a decision whose mail went out before Redis failed comes back
        as ``duplicate`` or ``uncertain``, never as a second mail."""
        if decision.status != "sent":
            raise ValueError(f"only 'sent' decisions are delivered, got {decision.status!r}")
        if decision.key in self._in_flight:
            # Same decision handed in twice at once: not a crash leftover, so not "uncertain".
            result = DeliveryResult("duplicate", "already in flight")
        else:
            self._in_flight.add(decision.key)
            try:
                result = await self._deliver(decision, profile, products)
            finally:
                self._in_flight.discard(decision.key)
        self.metrics[result.status] += 1
        await self._emit(decision, result)
        return result

    async def deliver_many(self, jobs: Iterable[DeliveryJob]) -> list[DeliveryResult]:
        """Deliver concurrently (at most ``concurrency`` at once); results in job order. An exception (Redis
        unavailable) cancels the rest and propagates."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(job: DeliveryJob) -> DeliveryResult:
            async with gate:
                return await self.deliver(job[0], profile=job[1], products=job[2])

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(job)) for job in jobs]
        return [task.result() for task in tasks]

    async def _deliver(
        self, decision: Decision, profile: MemberProfile, products: Sequence[ProductInfo]
    ) -> DeliveryResult:
        if not profile.opt_in:
            return DeliveryResult("suppressed", "no_consent")
        now = self.clock()
        build = functools.partial(
            compose,
            decision,
            profile=profile,
            products=products,
            settings=self.settings,
            templates=self.templates,
            sent_ms=now,
        )
        try:
            # Off the event loop: a template running to its render budget must not stall the worker.
            mail = await self._render.call(build)
        except (TemplateError, MessageError) as exc:
            return DeliveryResult("failed", f"build: {exc}")
        reservation = await self.store.reserve(
            decision.key, member_id=decision.member_id, email=profile.email, now_ms=now
        )
        if reservation.suppressed is not None:
            return DeliveryResult("suppressed", reservation.suppressed)
        if reservation.existing is not None:
            entry = reservation.existing
            if entry.state == "transmitting":
                await self.store.note_uncertain(decision.key)
                detail = f"end of DATA written at {entry.at_ms}, never confirmed; not resent"
                return DeliveryResult("uncertain", detail)
            return DeliveryResult("duplicate", f"already {entry.state} at {entry.at_ms}")
        if reservation.resumed is not None:
            self.metrics["resumed"] += 1
            log.info("resending %s: reserved at %d, never transmitted", decision.key, reservation.resumed.at_ms)
        return await self._send_reserved(decision, mail, reservation.token)

    async def _render_batch(self, builds: list[Callable[[], OutgoingMail]]) -> list[OutgoingMail | Exception]:
        return await asyncio.get_running_loop().run_in_executor(self._render_thread, _build_all, builds)

    async def _send_reserved(self, decision: Decision, mail: OutgoingMail, token: str) -> DeliveryResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_seconds
        delay = self.retry_base_delay
        attempts = 0
        marked = False

        async def before_end() -> None:
            nonlocal marked
            mark = asyncio.ensure_future(
                self.store.mark_transmitting(decision.key, token=token, now_ms=self.clock()))
            try:
                await asyncio.shield(mark)
            except asyncio.CancelledError:
                await self._undo_cancelled_mark(decision.key, token, mark)
                raise
            marked = True

        while True:
            attempts += 1
            await self.bucket.acquire()
            try:
                reply = await self.pool.send(
                    sender=mail.sender,
                    recipient=mail.recipient,
                    data=mail.data,
                    smtputf8=mail.smtputf8,
                    before_end=before_end,
                )
            except LostReservation as exc:
                return DeliveryResult("duplicate", str(exc), mail.message_id, attempts)
            except SmtpPermanentError as exc:
                detail = f"bounce: {exc}"
                if exc.code not in NOT_A_BOUNCE:
                    await self.store.suppress(
                        member_id=decision.member_id, email=mail.recipient, reason=detail, now_ms=self.clock()
                    )
                else:
                    detail = f"refused: {exc}"
                await self.store.confirm(decision.key, state="failed", now_ms=self.clock(), detail=detail)
                return DeliveryResult("failed", detail, mail.message_id, attempts)
            except SmtpUncertainError as exc:
                await self.store.note_uncertain(decision.key)
                return DeliveryResult("uncertain", str(exc), mail.message_id, attempts)
            except SmtpTemporaryError as exc:
                if marked:  # refused (4xx) or lost before the end of DATA: certainly not delivered
                    await self.store.mark_transmitting(decision.key, token=token, now_ms=self.clock(), undo=True)
                    marked = False
                wait = delay * random.uniform(0.5, 1.0)
                if loop.time() + wait > deadline:
                    await self.store.release(decision.key)
                    detail = f"gave up after {attempts} attempts: {exc}"
                    return DeliveryResult("failed", detail, mail.message_id, attempts)
                self.metrics["retried"] += 1
                log.info("smtp temporary failure for %s (attempt %d): %s", decision.key, attempts, exc)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.retry_max_delay)
                continue
            await self._confirm_sent(decision.key, mail.message_id)
            return DeliveryResult("delivered", reply, mail.message_id, attempts)

    async def _undo_cancelled_mark(self, key: str, token: str, mark: asyncio.Future[None]) -> None:
        """Cancelled (the worker stopping: SIGTERM, a rebalance) while the ``transmitting`` mark was on its
        way: the end of DATA will not be written, so the entry goes back to ``reserved`` — left
        ``transmitting``, the next owner would report the mail uncertain and never send it."""
        try:
            await asyncio.wait_for(asyncio.shield(mark), UNDO_TIMEOUT_S)
            await asyncio.wait_for(self.store.mark_transmitting(key, token=token, now_ms=self.clock(), undo=True),
                                   UNDO_TIMEOUT_S)
        except BaseException as exc:  # the cancellation goes on whatever happens here
            log.warning("%s may be left 'transmitting' by a cancelled send (%s): it will be reported uncertain",
                        key, type(exc).__name__)

    async def _confirm_sent(self, key: str, message_id: str) -> None:
        """The mail is out: try hard to record it (a short Redis hiccup must not leave it 'uncertain')."""
        for delay in (0.2, 0.5, 1.0, 2.0, 4.0):
            try:
                await self.store.confirm(key, state="sent", now_ms=self.clock(), detail=message_id)
                return
            except StoreUnavailable:
                log.warning("ledger confirmation of %s failed; retrying in %.1fs", key, delay)
                await asyncio.sleep(delay)
        await self.store.confirm(key, state="sent", now_ms=self.clock(), detail=message_id)

    async def _emit(self, decision: Decision, result: DeliveryResult) -> None:
        event = engagement_event(
            "delivery",
            key=decision.key,
            member_id=decision.member_id,
            rule=decision.rule_id,
            at_ms=self.clock(),
            status=result.status,
            detail=result.detail,
        )
        try:
            await self.sink.emit(event)
        except Exception:
            # The mail's fate is already recorded in the ledger; a sink outage must not turn it into a retry.
            self.metrics["emit_failed"] += 1
            log.exception("engagement sink refused a delivery event for %s", decision.key)


def _build_all(builds: list[Callable[[], OutgoingMail]]) -> list[OutgoingMail | Exception]:
    """Each build's mail, or its exception (one bad mail must not fail the others composed with it)."""
    results: list[OutgoingMail | Exception] = []
    for build in builds:
        try:
            results.append(build())
        except Exception as exc:
            results.append(exc)
    return results
