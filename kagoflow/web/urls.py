"""Which URLs kagoflow lets a mail link redirect to, judged the way a browser reads them.

Python's ``urllib.parse`` and browsers disagree on exactly the inputs an attacker would use: ``\\`` is a
``/`` to a browser in http(s) URLs, tabs and newlines inside a URL are dropped, ``https:evil.com`` and
``https:///evil.com`` have a host, ``%2e`` and full-width letters in a host are decoded, ``0x7f.1`` is an
IPv4 address. So URLs are parsed with ada (``ada_url``, the WHATWG URL parser Node.js uses) and judged on
what the browser will see; the redirect then goes to the parser's serialisation (``href``), never to the
raw text, so what was checked is what is followed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import ada_url

DEFAULT_PORTLESS = ""
"""WHATWG drops a port equal to the scheme's default (``:443`` on https): an empty port means 'default'."""


class UnsafeUrl(ValueError):
    """A URL kagoflow refuses to link or redirect to; the message says why (never echoes the URL)."""


def parse_web_url(url: str, *, allow_http: bool = True) -> ada_url.URL:
    """The URL as a browser parses it, if it is an http(s) URL without credentials on the default port;
    else ``UnsafeUrl`` with the reason. Pure: the catalog contract uses it without any settings."""
    try:
        parsed = ada_url.URL(url)
    except (ValueError, TypeError):
        raise UnsafeUrl("not a URL") from None
    schemes = ("https:", "http:") if allow_http else ("https:",)
    if parsed.protocol not in schemes:
        raise UnsafeUrl("must be an https URL" if not allow_http else "must be an http(s) URL")
    if parsed.username or parsed.password:
        raise UnsafeUrl("must not carry a user name or password")
    if parsed.port != DEFAULT_PORTLESS:
        raise UnsafeUrl("must use the default port")
    if not parsed.hostname:
        raise UnsafeUrl("has no host")
    return parsed


def url_problem(url: str) -> str | None:
    """Contract check of a catalog ``url`` / ``image_url``: None if fine, else the reason."""
    try:
        parse_web_url(url)
    except UnsafeUrl as exc:
        return str(exc)
    return None


def redirect_target(url: str, *, domains: Iterable[str], local_mode: bool) -> str:
    """The URL to redirect a click to (the browser's serialisation of ``url``), or ``UnsafeUrl``: only https
    (http too in local mode), default port, no credentials, host exactly one of ``domains``."""
    parsed = parse_web_url(url, allow_http=local_mode)
    if parsed.hostname not in _hosts(tuple(domains)):
        raise UnsafeUrl("host is not one of the shop's domains")
    return str(parsed.href)


def is_redirect_target(url: str, *, domains: Iterable[str], local_mode: bool) -> bool:
    try:
        redirect_target(url, domains=domains, local_mode=local_mode)
    except UnsafeUrl:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _hosts(domains: tuple[str, ...]) -> frozenset[str]:
    """The configured shop domains in the form the parser reports hosts (lower case, punycode)."""
    hosts: set[str] = set()
    for domain in domains:
        try:
            hosts.add(str(ada_url.URL(f"https://{domain.strip()}/").hostname))
        except ValueError:
            continue  # a domain that is no host name matches nothing
    return frozenset(hosts)
