"""Locale variants of templates (SPEC §13), the birthday / win-back defaults and ``coupon.code`` / ``.expires``."""

from __future__ import annotations

from kagoflow.mail.context import MailCoupon, sample_contexts
from kagoflow.mail.templates import MailTemplates, check_templates, locale_language
from kagoflow.settings import PROJECT_ROOT

TEMPLATES = PROJECT_ROOT / "templates"


def test_birthday_and_winback_defaults_pass_the_check_with_every_locale_variant() -> None:
    check_templates(TEMPLATES, ["birthday", "winback", "cart"])
    assert MailTemplates(TEMPLATES).languages("cart") == {"en"}


def test_member_locale_language_picks_the_variant_else_the_default() -> None:
    templates = MailTemplates(TEMPLATES)
    context = sample_contexts("pc")[0]
    english = templates.render("cart", device="pc", context=context, locale="en-US")
    assert "still in your cart" in english.text and "still in your cart" in english.html
    assert "items are waiting" in english.subject
    for locale in (None, "ja-JP", "fr", "zz-invalid-"):
        japanese = templates.render("cart", device="pc", context=context, locale=locale)
        assert "ショッピングカート" in japanese.text
    # no English variant of the mobile HTML: the language variant of the part wins over the device one
    mobile = templates.render("cart", device="mobile", context=context, locale="en")
    assert "still in your cart" in mobile.html


def test_coupon_code_and_expiry_are_shown() -> None:
    context = {**sample_contexts("pc")[0], "coupon": MailCoupon("BD-ABCD2345", "2026-07-15")}
    mail = MailTemplates(TEMPLATES).render("birthday", device="pc", context=context)
    assert "BD-ABCD2345" in mail.text and "2026-07-15" in mail.text
    assert "BD-ABCD2345" in mail.html and "2026-07-15" in mail.html
    assert "お誕生日" in mail.subject


def test_locale_language() -> None:
    assert [locale_language(x) for x in ("ja-JP", "en_US", "EN", None, "", "1x")] == ["ja", "en", "en", "", "", ""]
