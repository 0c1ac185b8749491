"""Redirect targets judged as a browser parses them (WHATWG), not as ``urllib.parse`` does."""

from __future__ import annotations

import pytest

from kagoflow.web.urls import UnsafeUrl, is_redirect_target, redirect_target, url_problem

SHOP = ("shop.example.com",)


@pytest.mark.parametrize("url", [
    "https://evil.example.net/phish",
    "https://shop.example.com.evil.net/",
    "https://shop.example.com%2eevil.net/",           # %2e in a host is a dot to a browser
    "https://evil.example.net\\@shop.example.com/",    # \ is / in http(s): the host is evil.example.net
    "https:\\\\evil.example.net",
    "https:evil.example.net/",                          # no slashes still has a host
    "https:///evil.example.net/",
    "https://user@shop.example.com/",                   # userinfo
    "https://shop.example.com:pass@evil.example.net/",
    "https://shop.example.com:8443/",                   # not the default port
    "http://shop.example.com/",                         # http outside local mode
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "//evil.example.net/",
    "/relative",
    "",
    "https://0x7f.1/",
    "https://shop.example.com./",
])
def test_targets_a_browser_would_take_elsewhere_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        redirect_target(url, domains=SHOP, local_mode=False)
    assert not is_redirect_target(url, domains=SHOP, local_mode=False)


@pytest.mark.parametrize(("url", "followed"), [
    ("https://shop.example.com/items/p1?utm_source=mail", "https://shop.example.com/items/p1?utm_source=mail"),
    ("HTTPS://SHOP.Example.COM/a", "https://shop.example.com/a"),
    ("https://shop.example.com:443/a", "https://shop.example.com/a"),
    ("  https://shop.example.com/a\tb\n ", "https://shop.example.com/ab"),  # tabs/newlines dropped, ends trimmed
    ("https://shop.example.com/é", "https://shop.example.com/%C3%A9"),
    ("https://ｓｈｏｐ.example.com/", "https://shop.example.com/"),  # full-width letters map to ASCII
    ("https://shop.example.com\\items\\p1", "https://shop.example.com/items/p1"),
])
def test_allowed_targets_are_followed_in_the_browsers_form(url: str, followed: str) -> None:
    assert redirect_target(url, domains=SHOP, local_mode=False) == followed


def test_http_only_in_local_mode() -> None:
    assert redirect_target("http://shop.example.com/x", domains=SHOP, local_mode=True) == "http://shop.example.com/x"
    assert not is_redirect_target("http://shop.example.com:8080/x", domains=SHOP, local_mode=True)


def test_configured_domains_match_case_insensitively() -> None:
    assert is_redirect_target("https://shop.example.com/", domains=("Shop.Example.com ",), local_mode=False)


def test_contract_check_names_the_problem_and_allows_any_plain_web_url() -> None:
    assert url_problem("https://cdn.example.net/img/1.png") is None
    assert url_problem("http://img/1.png") is None
    assert url_problem("https://user:pw@cdn.example.net/") == "must not carry a user name or password"
    assert url_problem("https://cdn.example.net:8443/") == "must use the default port"
    assert url_problem("ftp://cdn.example.net/") == "must be an http(s) URL"
    assert url_problem("not a url") == "not a URL"


def test_the_catalog_contract_refuses_urls_a_browser_would_read_differently() -> None:
    from kagoflow.core.errors import ContractError
    from kagoflow.streams.contract import parse_catalog

    def record(**fields: object) -> bytes:
        import orjson

        return orjson.dumps({"product_id": "p1", "name": "Tee", "price": 1000, "stock": 3, "ts": 1_700_000_000_000,
                             **fields})

    assert parse_catalog(record(url="https://shop.example.com/p/1")).url == "https://shop.example.com/p/1"
    for field, bad in (("url", "https://user@shop.example.com/p/1"), ("image_url", "https://cdn.example.net:81/x"),
                       ("url", "https://shop.example.com@evil.example.net/"), ("url", "https://exa mple.com/")):
        with pytest.raises(ContractError, match=f"^{field}: "):
            parse_catalog(record(**{field: bad}))
