"""What happens to the engine's decisions before they are emitted: address suppression → caps → coupons.

Shared by the worker and the backtest so the same inputs give the same decisions (SPEC §14 fine points:
consent → caps → holdout → coupon → ``sent``). A mail to an address listed for another member id is
``suppressed`` first, as the core decides a member who unsubscribed (``kagoflow.core.suppression``): it
consumes no cap and no coupon. Only ``sent`` counts against the caps (SPEC §11), and a mail whose coupon
comes from a pool is only ``sent`` once it has its code, so:

- a mail without a pool coupon is checked and counted at once (one atomic check-and-count);
- a pool-coupon mail is first *checked* (nothing counted; ``capped`` when full), then takes its code (an
  empty pool makes it ``skipped`` with nothing counted), and only then is counted. That count fails only if
  another worker counted the member in between (a rebalance race): the mail is ``capped`` and its code stays
  assigned to its decision key (a replay finds the same code again), never to another mail.

Every step answers a replayed decision as it did the first time (keyed by the decision key), so a batch
replayed after a crash gets the same decisions, counted once, with the same codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

from kagoflow.core.behaviour import MemberState
from kagoflow.core.caps import CapLimits, CapStore, acquire_caps, apply_caps, cap_batches
from kagoflow.core.couponing import CouponStep, IssuedCoupon
from kagoflow.core.decisions import Decision
from kagoflow.core.suppression import AddressBook, listed_reasons, suppress_listed


async def finish_decisions(
    decisions: list[Decision], *, caps: CapStore, limits: CapLimits, tz: ZoneInfo, coupons: CouponStep,
    state_of: Callable[[str], MemberState | None], addresses: AddressBook | None,
    email_of: Callable[[str], str | None], wait: Callable[[Exception], Awaitable[None]] | None = None,
) -> tuple[list[Decision], list[IssuedCoupon]]:
    """The emitted decisions and the coupons issued to them. Store calls are batched per step (one Redis
    round trip each); a batch holding a second capped mail of a member whose pool-coupon mail is not yet
    counted is done in parts (``caps.cap_batches``), so that mail is decided first.

    ``wait``: when a store fails, await it and retry the failed part only (a done part changed member
    states, which a retry would redo); None: the error propagates."""
    final: list[Decision] = []
    issued: list[IssuedCoupon] = []

    async def admit(sent: list[Decision]) -> set[str]:
        return await acquire_caps(sent, caps, limits=limits, tz=tz)

    if addresses is not None:  # consent before caps; the read is retried, the state change made once
        while True:
            try:
                listed = await listed_reasons(decisions, addresses, email_of)
                break
            except Exception as exc:
                if wait is None:
                    raise
                await wait(exc)
        decisions = suppress_listed(decisions, listed, state_of)
    for part in cap_batches(decisions, coupons.pooled, limits=limits):
        while True:
            try:  # every store call below answers a repeated key alike: a retried part is decided alike
                checked = await apply_caps(part, caps, limits=limits, tz=tz, deferred=coupons.pooled)
                done, got = await coupons.apply(checked, state_of, admit)  # member states change last
                break
            except Exception as exc:
                if wait is None:
                    raise
                await wait(exc)
        final += done
        issued += got
    return final, issued
