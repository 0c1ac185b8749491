"""``kagoflow preview`` and ``kagoflow test-send``: a rule's mail for one member, as it would go out now.

The member's profile and product states come from the running worker's operator API (the worker owns that
state), the rule from the rules directory, the templates from ``settings.templates_dir``. Tracking links in
a preview are real signed links; a test send goes to the given address only, never touches the send ledger,
caps or suppression list, and its subject starts with ``[TEST]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kagoflow.adapters.smtp import SmtpError, SmtpPool
from kagoflow.core.catalog import ProductInfo
from kagoflow.core.coupons import CouponSpec
from kagoflow.core.decisions import Decision
from kagoflow.mail.context import MemberProfile, mail_context
from kagoflow.mail.message import MessageError, compose
from kagoflow.mail.templates import MailTemplates, RenderedMail
from kagoflow.settings import Settings
from kagoflow.web.operator import local_operator_url, operator_headers


class CommandError(Exception):
    """A problem the operator can fix (worker down, unknown rule or member); printed as one line."""


@dataclass(frozen=True, slots=True)
class MailInput:
    decision: Decision
    profile: MemberProfile
    products: list[ProductInfo]
    has_profile: bool


def _get_json(settings: Settings, path: str) -> dict[str, Any] | None:
    """GET a worker API document; None on 404."""
    url = f"{local_operator_url(settings)}{path}"
    try:
        request = urllib.request.Request(url, headers=operator_headers(settings))
        with urllib.request.urlopen(request, timeout=10) as response:
            data = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise CommandError(f"worker API {url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandError(
            f"worker not reachable at {url}: {reason} (is `kagoflow worker` running?)"
        ) from None
    if not isinstance(data, dict):
        raise CommandError(f"worker API {url} answered an unexpected document")
    return data


def _wanted_states(rule: Any) -> frozenset[str]:
    if getattr(rule, "kind", "") == "abandonment":
        return frozenset({rule.trigger})
    return frozenset(getattr(rule, "watch", ()) or ("cart", "favorite", "view"))


def _passes_product_filter(rule: Any, product_id: str) -> bool:
    include = getattr(rule, "include", None)
    exclude = getattr(rule, "exclude", None) or frozenset()
    return (not include or product_id in include) and product_id not in exclude


def load_mail_input(settings: Settings, *, rules_dir: Path, rule_id: str, member_id: str) -> MailInput:
    from kagoflow.core.rules import load_rules

    ruleset = load_rules(
        rules_dir, templates_dir=settings.templates_dir, min_delay_seconds=settings.min_delay_seconds
    )
    rule: Any = ruleset.by_id.get(rule_id)
    if rule is None:
        raise CommandError(f"no rule {rule_id!r} in {rules_dir} (rules: {', '.join(sorted(ruleset.by_id))})")
    member = _get_json(settings, f"/api/members/{urllib.parse.quote(member_id, safe='')}")
    if member is None:
        raise CommandError(f"the worker knows no member {member_id!r}")
    raw_profile = member.get("profile")
    profile = (
        MemberProfile.from_json(member_id, raw_profile)
        if raw_profile
        else MemberProfile(member_id=member_id, email="")
    )
    states = _wanted_states(rule)
    product_ids = [
        str(entry["product_id"])
        for entry in member.get("products") or []
        if entry.get("state") in states and _passes_product_filter(rule, str(entry["product_id"]))
    ]
    products: list[ProductInfo] = []
    for product_id in product_ids:
        info = _get_json(settings, f"/api/products/{urllib.parse.quote(product_id, safe='')}")
        if info is not None:
            products.append(ProductInfo.from_json(info))
    now = time.time_ns() // 1_000_000
    decision = Decision(
        member_id=member_id,
        rule_id=rule_id,
        kind=rule.kind,
        status="sent",
        reason="",
        products=tuple(product_ids),
        due_ms=now,
        at_ms=now,
        episode=f"preview-{now}",
        template=rule.template,
        coupon=_preview_coupon(getattr(rule, "coupon", None)),
        sender_name=rule.sender_name or ruleset.shop.sender_name,
        cap_exempt=rule.kind != "abandonment",
    )
    return MailInput(decision=decision, profile=profile, products=products, has_profile=bool(raw_profile))


def _preview_coupon(spec: object) -> str | None:
    """What a preview shows for the rule's coupon: the fixed code, or a placeholder for pool/generated."""
    if not isinstance(spec, CouponSpec):
        return None
    if spec.form == "fixed":
        return spec.value
    return f"{spec.value}PREVIEW" if spec.form == "generate" else f"({spec.value} pool)"


def _warn(text: str) -> None:
    print(f"kagoflow: warning: {text}", file=sys.stderr)


def _explain(mail_input: MailInput) -> None:
    if not mail_input.has_profile:
        _warn("the member has no profile (no email): rendered without name; the rule would not send")
    elif not mail_input.profile.opt_in:
        _warn("the member has not opted in: the rule would not send")
    if not mail_input.decision.products:
        _warn("no product of the member is in a state this rule mails: the rule would not send now")


def render_preview(settings: Settings, mail_input: MailInput) -> RenderedMail:
    now = time.time_ns() // 1_000_000
    context = mail_context(
        mail_input.decision,
        profile=mail_input.profile,
        products=mail_input.products,
        settings=settings,
        sent_ms=now,
    )
    templates = MailTemplates(settings.templates_dir)
    return templates.render(mail_input.decision.template, device=mail_input.profile.device, context=context,
                            locale=mail_input.profile.locale)


def preview(settings: Settings, *, rules_dir: Path, rule_id: str, member_id: str, html_out: Path) -> int:
    """Print subject and text part; write the HTML part to ``html_out``."""
    try:
        mail_input = load_mail_input(settings, rules_dir=rules_dir, rule_id=rule_id, member_id=member_id)
    except CommandError as exc:
        print(f"kagoflow: error: {exc}", file=sys.stderr)
        return 1
    _explain(mail_input)
    rendered = render_preview(settings, mail_input)
    html_out.write_text(rendered.html, encoding="utf-8")
    print(f"Subject: {rendered.subject}")
    print(f"Template: {mail_input.decision.template} (device: {mail_input.profile.device or 'pc'})")
    print(f"Products: {', '.join(mail_input.decision.products) or '(none)'}")
    print()
    print(rendered.text, end="" if rendered.text.endswith("\n") else "\n")
    print(f"(HTML part written to {html_out})", file=sys.stderr)
    return 0


def test_send(settings: Settings, *, rules_dir: Path, rule_id: str, member_id: str, to: str) -> int:
    """Send the member's mail for the rule to ``to`` (subject prefixed ``[TEST]``)."""
    try:
        mail_input = load_mail_input(settings, rules_dir=rules_dir, rule_id=rule_id, member_id=member_id)
        mail = compose(
            mail_input.decision,
            profile=mail_input.profile,
            products=mail_input.products,
            settings=settings,
            templates=MailTemplates(settings.templates_dir),
            sent_ms=time.time_ns() // 1_000_000,
            to_address=to,
            subject_prefix="[TEST] ",
        )
    except (CommandError, MessageError) as exc:
        print(f"kagoflow: error: {exc}", file=sys.stderr)
        return 1
    _explain(mail_input)

    async def send() -> str:
        pool = SmtpPool.from_settings(settings, size=1)
        try:
            return await pool.send(
                sender=mail.sender, recipient=mail.recipient, data=mail.data, smtputf8=mail.smtputf8
            )
        finally:
            await pool.close()

    try:
        reply = asyncio.run(send())
    except SmtpError as exc:
        print(f"kagoflow: error: SMTP {settings.smtp_host}:{settings.smtp_port}: {exc}", file=sys.stderr)
        return 1
    print(f"sent {mail.message_id} to {mail.recipient}: {reply}")
    return 0


test_send.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name
