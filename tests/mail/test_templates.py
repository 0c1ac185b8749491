from __future__ import annotations

import re
from pathlib import Path

import pytest

from kagoflow.core.errors import RuleError
from kagoflow.mail.context import MailMember, sample_contexts
from kagoflow.mail.templates import MailTemplates, TemplateError, check_templates
from kagoflow.settings import PROJECT_ROOT

TEMPLATES = PROJECT_ROOT / "templates"
DEFAULTS = ["cart", "favorite", "view", "price_drop", "restock"]


def _template_dir(tmp_path: Path, name: str, **files: str) -> Path:
    shutil_src = TEMPLATES / "cart"
    target = tmp_path / name
    target.mkdir(parents=True)
    for part in ("subject.txt", "text.j2", "html.j2"):
        (target / part).write_text((shutil_src / part).read_text(encoding="utf-8"), encoding="utf-8")
    for filename, content in files.items():
        (target / filename.replace("_dot_", ".")).write_text(content, encoding="utf-8")
    partials = tmp_path / "_partials"
    if not partials.exists():
        partials.mkdir()
        for f in (TEMPLATES / "_partials").iterdir():
            (partials / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path


def test_default_templates_pass_the_check() -> None:
    check_templates(TEMPLATES, DEFAULTS)
    for name in DEFAULTS:
        assert {"subject.txt", "text.j2", "html.j2", "html.mobile.j2"} <= {
            p.name for p in (TEMPLATES / name).iterdir()
        }


def test_member_name_is_escaped_in_html_but_kept_in_text() -> None:
    templates = MailTemplates(TEMPLATES)
    context = sample_contexts("pc")[0]
    evil = "<script>alert(1)</script>"
    context["member"] = MailMember("m1", evil, f"{evil} 様")
    for name in DEFAULTS:
        mail = templates.render(name, device="pc", context=context)
        assert evil not in mail.html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
        assert evil in mail.text


@pytest.mark.parametrize(("name", "count"), [("cart", 3), ("favorite", 4), ("view", 5)])
def test_product_block_shows_the_templates_count_with_prices(name: str, count: int) -> None:
    mail = MailTemplates(TEMPLATES).render(name, device="pc", context=sample_contexts("pc")[0])
    shown = sorted(set(re.findall(r"サンプル商品 (\d)", mail.text)))
    assert shown == [str(i) for i in range(1, count + 1)]
    assert "1,980円" in mail.text and "1,980円" in mail.html


def test_price_can_be_hidden(tmp_path: Path) -> None:
    root = _template_dir(
        tmp_path,
        "noprice",
        **{
            "text_dot_j2": '{% from "_partials/products.txt.j2" import product_list %}'
            "{{ product_list(products, count=5, show_price=false) }}{{ unsubscribe_url }}"
        },
    )
    mail = MailTemplates(root).render("noprice", device="pc", context=sample_contexts("pc")[0])
    assert "サンプル商品 5" in mail.text
    assert "円" not in mail.text


def test_device_variant_is_chosen_for_mobile_only() -> None:
    templates = MailTemplates(TEMPLATES)
    mobile = templates.render("cart", device="mobile", context=sample_contexts("mobile")[0])
    pc = templates.render("cart", device="pc", context=sample_contexts("pc")[0])
    assert "<table" not in mobile.html and '<img src="https://shop' not in mobile.html
    assert "<table" in pc.html
    assert mobile.text == pc.text


def test_subject_is_one_line_with_coupon_mark() -> None:
    mail = MailTemplates(TEMPLATES).render("cart", device=None, context=sample_contexts("pc")[0])
    assert "\n" not in mail.subject
    assert mail.subject.startswith("山田 太郎 様")
    assert "クーポン" in mail.subject


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ member.__class__.__init__.__globals__ }}",
        "{{ products.append(1) }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_sandbox_blocks_python_internals(tmp_path: Path, payload: str) -> None:
    root = _template_dir(tmp_path, "evil", **{"html_dot_j2": "<p>ok</p>\n<p>" + payload + "</p>\n"})
    with pytest.raises(TemplateError) as err:
        check_templates(root, ["evil"])
    assert err.value.file == "evil/html.j2"
    assert err.value.line == 2


def test_undefined_variable_names_file_and_line(tmp_path: Path) -> None:
    root = _template_dir(tmp_path, "typo", **{"text_dot_j2": "line one\n\n{{ memebr.name }}\n"})
    with pytest.raises(TemplateError) as err:
        check_templates(root, ["typo"])
    assert (err.value.file, err.value.line) == ("typo/text.j2", 3)
    assert "memebr" in str(err.value)
    assert isinstance(err.value, RuleError)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    root = _template_dir(tmp_path, "broken", **{"subject_dot_txt": "ok\n{% if coupon %}never closed\n"})
    with pytest.raises(TemplateError) as err:
        check_templates(root, ["broken"])
    assert err.value.file == "broken/subject.txt"
    assert err.value.line is not None and err.value.line >= 2


def test_missing_template_or_part_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="nosuch"):
        check_templates(TEMPLATES, ["nosuch"])
    root = _template_dir(tmp_path, "partial")
    (root / "partial" / "html.j2").unlink()
    with pytest.raises(TemplateError, match=r"partial/html\.j2"):
        check_templates(root, ["partial"])


def test_template_names_cannot_escape_the_directory() -> None:
    templates = MailTemplates(TEMPLATES)
    assert not templates.exists("../etc")
    assert not templates.exists("_partials")
    assert templates.exists("cart")


# -- render budget (issue 11) ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}", "longer than 1s"),
        ("{{ 'x' * 10**9 }}", "past 1,000,000 characters"),
        ("{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
         "past 1,000,000 characters"),
        ("{% for i in range(99999) %}{{ 'y' * 50 }}{% endfor %}", "output over 1,000,000 characters"),
        ("{{ 'x'|center(10**9) }}", "width of 1000000000"),
        ("{{ 2 ** 100000000 }}", "exponent 100000000"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ],
    ids=["loop", "repeat", "doubling", "output", "filter-width", "power", "recursion"],
)
def test_a_template_over_its_budget_fails_the_check_naming_file_and_line(
    tmp_path: Path, body: str, problem: str
) -> None:
    import time

    templates_dir = _template_dir(tmp_path, "greedy", html_dot_j2="<p>hello</p>\n\n" + body + "\n")
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        check_templates(templates_dir, ["greedy"])
    assert time.monotonic() - started < 10
    assert str(info.value).startswith("templates/greedy/html.j2:3: "), str(info.value)
    assert problem in str(info.value)


def test_memory_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    def exhaust(value: object) -> str:
        raise MemoryError("simulated")

    templates = MailTemplates(_template_dir(tmp_path, "hungry", subject_dot_txt="hi\n{{ 1|exhaust }}\n"))
    templates.env.filters["exhaust"] = exhaust
    with pytest.raises(TemplateError, match=r"^templates/hungry/subject.txt:2: MemoryError: simulated"):
        templates.render("hungry", device="pc", context=sample_contexts("pc")[0])


async def test_a_slow_template_fails_its_mail_without_stalling_the_event_loop(tmp_path: Path) -> None:
    import asyncio
    import time
    from dataclasses import replace

    from kagoflow.mail.delivery import Deliverer
    from kagoflow.mail.engagement import MemorySink
    from kagoflow.settings import Settings
    from tests.mail.helpers import mail_settings, make_decision, make_products, make_profile

    loop_body = "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"
    templates_dir = _template_dir(tmp_path, "cart", text_dot_j2="hello\n" + loop_body + "\n")
    settings = replace(mail_settings(Settings()), templates_dir=templates_dir)
    deliverer = Deliverer(settings, store=None, sink=MemorySink())  # type: ignore[arg-type]  # never reached
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    result = await deliverer.deliver(make_decision("m-slow"), profile=make_profile("m-slow"),
                                     products=make_products())
    ticking.cancel()
    assert result.status == "failed"
    assert result.detail.startswith("build: templates/cart/text.j2:2: render took longer than 1s")
    assert len(gaps) > 20 and max(gaps) < 0.5, max(gaps)
    await deliverer.close()
