"""Tracking tokens for open pixels, click redirects and unsubscribe links: encrypted and authenticated.

A token is ``base64url(version, kind, nonce, AES-256-GCM(key, payload, aad=version+kind))``, the payload a
compact JSON array (decision key, member id, rule, send time, click target). Encryption keeps the member id
and the target out of the link (a forwarded mail, a proxy log or a link scanner sees an opaque string); the
authentication tag makes any altered byte, or a token made with another secret, invalid. Nothing is stored
server side, so any worker verifies any token. Both keys come from ``KAGOFLOW_TRACKING_SECRET`` (HKDF). The
nonce is synthetic — HMAC-SHA256 of kind and payload, as in SIV constructions — so equal payloads give equal
tokens (a resent mail is byte-identical) and different payloads never share a nonce (short of a 96-bit
collision), with no random source per token. Tokens never expire — an unsubscribe link in a mail from last
year must still work — so links of the former signed-only format (``payload.mac``, HMAC-SHA256) still
verify; new ones are never made in it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
from dataclasses import dataclass
from typing import Literal

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TokenKind = Literal["open", "click", "unsub"]
_KIND_CODE: dict[str, str] = {"open": "o", "click": "c", "unsub": "u"}
_CODE_KIND: dict[str, TokenKind] = {"o": "open", "c": "click", "u": "unsub"}
MAX_TOKEN_LENGTH = 4096
VERSION = b"\x02"
NONCE_BYTES = 12


class InvalidToken(ValueError):
    """The token is malformed, tampered with or of the wrong kind (deliberately without detail)."""


@dataclass(frozen=True, slots=True)
class TrackingToken:
    kind: TokenKind
    key: str
    """``Decision.key`` of the mail the link is in."""
    member_id: str
    rule_id: str
    sent_ms: int
    """When the mail was built; lets the open handler flag machine opens that follow the send at once."""
    url: str | None = None
    """Click target (click tokens only)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _keys(secret: str) -> tuple[AESGCM, hmac.HMAC]:
    """Cipher and nonce MAC for ``secret`` (HKDF-SHA256 to two 256-bit keys): derived once, ~7 tokens a mail."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=b"kagoflow tracking token v2")
    okm = hkdf.derive(secret.encode("utf-8"))
    return AESGCM(okm[:32]), hmac.new(okm[32:], digestmod="sha256")


def _nonce(nonce_mac: hmac.HMAC, header: bytes, payload: bytes) -> bytes:
    mac = nonce_mac.copy()
    mac.update(header)
    mac.update(payload)
    return mac.digest()[:NONCE_BYTES]


def sign(token: TrackingToken, *, secret: str) -> str:
    """The token's text for a link (deterministic: the same token content gives the same text)."""
    fields: list[object] = [token.key, token.member_id, token.rule_id, token.sent_ms]
    if token.url is not None:
        fields.append(token.url)
    header = VERSION + _KIND_CODE[token.kind].encode("ascii")
    payload = orjson.dumps(fields)
    aead, nonce_mac = _keys(secret)
    nonce = _nonce(nonce_mac, header, payload)
    return _b64(header + nonce + aead.encrypt(nonce, payload, header))


def verify(text: str, *, secret: str, kind: TokenKind | None = None) -> TrackingToken:
    """Return the token's content, or raise ``InvalidToken`` (no detail: a prober learns nothing)."""
    if len(text) > MAX_TOKEN_LENGTH or not text.isascii():
        raise InvalidToken()
    token = _verify_legacy(text, secret) if "." in text else _open(text, secret)
    if kind is not None and token.kind != kind:
        raise InvalidToken()
    if (token.kind == "click") != (token.url is not None):
        raise InvalidToken()
    return token


def _open(text: str, secret: str) -> TrackingToken:
    try:
        raw = _unb64(text)
    except (binascii.Error, ValueError):
        raise InvalidToken() from None
    # Only the canonical text: unused bits of the last base64 character must not give a second valid form.
    if _b64(raw) != text or len(raw) < 2 + NONCE_BYTES or raw[:1] != VERSION:
        raise InvalidToken()
    header, nonce, sealed = raw[:2], raw[2 : 2 + NONCE_BYTES], raw[2 + NONCE_BYTES :]
    code = header[1:].decode("latin-1")
    if code not in _CODE_KIND:
        raise InvalidToken()
    aead, nonce_mac = _keys(secret)
    try:
        payload = aead.decrypt(nonce, sealed, header)
    except InvalidTag:
        raise InvalidToken() from None
    if not hmac.compare_digest(nonce, _nonce(nonce_mac, header, payload)):  # only tokens ``sign`` makes
        raise InvalidToken()
    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidToken() from None
    return _token(_CODE_KIND[code], fields)


def _token(kind: TokenKind, fields: object) -> TrackingToken:
    if not isinstance(fields, list) or len(fields) not in (4, 5):
        raise InvalidToken()
    key, member_id, rule_id, sent_ms, *rest = fields
    if not all(isinstance(v, str) for v in (key, member_id, rule_id)) or type(sent_ms) is not int:
        raise InvalidToken()
    url = rest[0] if rest else None
    if url is not None and not isinstance(url, str):
        raise InvalidToken()
    return TrackingToken(kind=kind, key=key, member_id=member_id, rule_id=rule_id, sent_ms=sent_ms, url=url)


@functools.lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode("utf-8"), digestmod="sha256")


def _verify_legacy(text: str, secret: str) -> TrackingToken:
    """The former ``base64url(json).base64url(HMAC-SHA256)`` format, for links in mails already sent."""
    if text.count(".") != 1:
        raise InvalidToken()
    payload, mac_text = text.split(".")
    mac = _keyed(secret).copy()
    mac.update(payload.encode("ascii"))
    # Compare the canonical text form: decoding first would accept variants of the last base64 character.
    if not hmac.compare_digest(mac_text.encode("ascii"), _b64(mac.digest()).encode("ascii")):
        raise InvalidToken()
    try:
        fields = orjson.loads(_unb64(payload))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidToken() from None
    if not isinstance(fields, list) or not fields or fields[0] not in _CODE_KIND:
        raise InvalidToken()
    return _token(_CODE_KIND[fields[0]], fields[1:])
