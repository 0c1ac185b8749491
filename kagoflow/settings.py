"""One settings object for every process, read from ``KAGOFLOW_*`` environment variables.

Every field has a default that matches the local stack started by ``infra/stack`` so that a fresh
checkout works without configuration. ``Settings.from_env()`` is the only place that reads the
environment; everything else receives a ``Settings`` instance.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACKING_SECRET = "change-me-in-production"
MIN_SECRET_BYTES = 32


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True, kw_only=True)
class Settings:
    """All knobs of kagoflow. Environment variable = ``KAGOFLOW_`` + field name upper-cased."""

    # -- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:19092"
    """Comma-separated bootstrap servers."""
    partitions: int = 4
    """Partition count of the input topics (and of every co-partitioned internal topic)."""
    topic_prefix: str = ""
    """Prefix of every topic name, so several deployments or test runs can share one cluster."""
    create_topics: bool = True
    """Create missing topics (SPEC §1 inputs, DLQs, internal topics) at worker start."""
    replication_factor: int = 1
    """Replication factor of the topics the worker creates (changelogs); 3 on a production cluster."""
    app_id: str = "kagoflow"
    """Faust application id = consumer group id; prefix of changelog topic names."""
    # -- Redis (caps, send ledger, suppression list) --------------------------------------------
    redis_url: str = "redis://127.0.0.1:16379/0"
    # -- ClickHouse archive ----------------------------------------------------------------------
    clickhouse_host: str = "127.0.0.1"
    clickhouse_port: int = 19000
    """Native-protocol TCP port."""
    clickhouse_http_port: int = 18123
    clickhouse_database: str = "kagoflow"
    shop_timezone: str = "Asia/Tokyo"
    """Time zone of the shop's days in the archive's views and the console's reports (IANA name)."""
    archive_batch_rows: int = 20000
    """An archive batch is inserted when it holds this many rows ..."""
    archive_batch_seconds: float = 2.0
    """... or when its oldest row has waited this long."""
    archive_enabled: bool = True
    """Run the ClickHouse archiver inside the worker (in its member engine process when ``engine_process``;
    else run ``python -m kagoflow.archive`` apart)."""
    # -- SMTP delivery ---------------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 10025
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_pool_size: int = 4
    smtp_rate_per_second: float = 0.0
    """Per-shop mail rate limit in mails/s; 0 = unlimited."""
    mail_from_address: str = "shop@example.com"
    mail_sender_name: str = "kagoflow shop"
    shop_url: str = "https://shop.example.com/"
    """Shop top page linked from every mail (must be on one of ``shop_domains``)."""
    smtp_timeout_seconds: float = 30.0
    """Per-command SMTP timeout; a command that times out counts as a lost connection."""
    smtp_retry_seconds: float = 300.0
    """How long one mail keeps being retried after temporary (4xx / connection) failures before giving up."""
    mail_unsubscribe_mailto: str = ""
    """Optional address added to ``List-Unsubscribe`` as a ``mailto:`` alternative; empty = none."""
    dkim_selector: str = ""
    """DKIM selector (``<selector>._domainkey.<domain>`` holds the public key); empty = mails are not signed."""
    dkim_domain: str = ""
    """Signing domain (``d=``); empty = the domain of ``mail_from_address`` (aligned for DMARC)."""
    dkim_private_key_file: str = ""
    """PEM file of the DKIM private key (RSA, 2048 bits); needed with a selector."""
    # -- Rules, templates, tracking --------------------------------------------------------------
    rules_dir: Path = PROJECT_ROOT / "rules"
    templates_dir: Path = PROJECT_ROOT / "templates"
    tracking_secret: str = DEFAULT_TRACKING_SECRET
    """Key of open/click/unsubscribe tokens (encrypted and authenticated). The default only works in
    ``local_mode``: elsewhere the worker refuses to start without a secret of at least 32 bytes."""
    public_base_url: str = "http://127.0.0.1:16066"
    """Base URL of the worker's public server as mail recipients reach it (pixel, redirect, unsubscribe)."""
    shop_domains: tuple[str, ...] = ("shop.example.com",)
    """Click redirects only go to https URLs (http too in ``local_mode``) on exactly these hosts."""
    local_mode: bool = False
    """The local stack, the demo and the tests: accepts the default / short tracking secret, a short operator
    token, http click targets, an http ``public_base_url`` (unsubscribe link), the default console session secret
    and non-Secure console cookies. Never set it in production."""
    # -- Worker ----------------------------------------------------------------------------------
    web_port: int = 16066
    """Public server (tracking links and ``/health`` only): what mail recipients reach."""
    web_host: str = "127.0.0.1"
    operator_port: int = 16067
    """Operator server: member / product API and ``/metrics`` (and the staff console's calls)."""
    operator_host: str = "127.0.0.1"
    """Bind address of the operator server; anything but a loopback address needs ``operator_token``."""
    operator_token: str = ""
    """Bearer token the operator server requires (``Authorization: Bearer …``) when set; empty = no token,
    allowed only while ``operator_host`` is a loopback address."""
    operator_url: str = ""
    """How other workers reach this worker's operator server (requests for a member are forwarded to the
    worker that owns it); empty = ``http://operator_host:operator_port``."""
    data_dir: Path = PROJECT_ROOT / ".kagoflow"
    """Faust table stores (RocksDB) and other worker-local data."""
    state_flush_seconds: float = 10.0
    """Changed member state is written to its table at most once per this interval per partition.

    Each table write costs a changelog record through Faust's producer (~150 µs), so the interval decides
    throughput: a member active in a session is written once instead of once per beacon. Events are acked
    only after the write, so a crash replays at most this much (de-duplicated by event id)."""
    state_buckets: int = 256
    """Member state is stored as this many buckets per partition (one table value each), so a flush writes
    at most this many changelog records per partition. Part of the stored layout: a worker refuses state
    written with another count. Size it for ~200 members per bucket (members per partition / 200): fewer,
    bigger buckets rewrite more bytes per flush, more, smaller ones cost more records (~300 µs each)."""
    engine_process: bool = True
    """Run the member engine (parsing, behaviour state, timers, decisions) in a process of its own beside
    the Faust worker process, which then only moves records, table writes and acks. Faust's per-record
    path fills one core by itself; with the engine beside it a worker uses two (see README "Architecture").
    ``false``: everything in the Faust process."""
    standby_replicas: int = 0
    """Other workers keep a warm copy of each partition's member table (Faust standby replicas): a partition
    that moves to a worker holding its standby skips most of the changelog replay, at the cost of that
    worker reading every changelog record (see README "Scaling out")."""
    state_cache_mb: int = 256
    """Encoded member state kept in memory (decoded buckets), beyond the decoded states being worked on."""
    rocksdb_block_cache_mb: int = 64
    rocksdb_write_buffer_mb: int = 16
    # -- Beacon collector (``kagoflow collect``) ---------------------------------------------------
    collector_host: str = "127.0.0.1"
    collector_port: int = 16068
    """``POST /beacons`` for storefront JavaScript and shop servers (CORS: ``shop_domains``)."""
    collector_linger_ms: int = 50
    """Beacons of one partition arriving within this window become one Kafka record (``{"batch": […]}``)."""
    collector_batch_bytes: int = 256 * 1024
    """A batch record is sent early when it reaches this size (at most 512 KiB, the contract's bound)."""
    collector_max_body_bytes: int = 256 * 1024
    """Largest request body; larger ones get 413."""
    collector_max_beacons: int = 500
    """Most beacons in one request; more get 413."""
    collector_rate_per_ip: float = 20.0
    """Requests per second per client address (token bucket, ``collector_rate_burst`` saved up); 0 = off."""
    collector_rate_burst: int = 40
    collector_trust_forwarded: bool = False
    """Count the rate per the last ``X-Forwarded-For`` address (set it only behind the shop's own proxy)."""
    collector_max_pending: int = 100_000
    """Beacons waiting for Kafka's acknowledgement; beyond it requests get 503 (Kafka is behind)."""
    collector_ack_timeout_seconds: float = 5.0
    """A request whose beacons Kafka has not acknowledged within this time gets 503 (retry; repeats are
    dropped by ``event_id``); while a batch is older, new requests get 503 at once."""
    collector_retry_after_seconds: int = 5
    """``Retry-After`` of a 503."""
    min_delay_seconds: int = 15 * 60
    """Floor of abandonment delays; lower it only for demos (``KAGOFLOW_MIN_DELAY_SECONDS``)."""
    log_level: str = "info"
    # -- Operator console (``kagoflow console``) -------------------------------------------------
    console_host: str = "127.0.0.1"
    console_port: int = 16070
    console_users: tuple[str, ...] = ()
    """Staff logins, comma-separated ``name:scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` entries
    (``kagoflow console hash-password`` prints one)."""
    console_session_secret: str = "change-me-in-production"
    """Key that signs console session cookies (also CSRF tokens); must be changed outside local mode."""
    console_session_minutes: int = 480
    """A session expires this long after login."""
    operator_api_url: str = ""
    """Base URL of a worker's operator API (live member state, metrics) as the console reaches it, with
    ``operator_token``; empty = this machine's operator server (``operator_url`` / ``operator_port``)."""

    def __post_init__(self) -> None:
        for name in ("partitions", "state_buckets", "state_cache_mb", "collector_linger_ms", "collector_batch_bytes",
                     "collector_max_body_bytes", "collector_max_beacons", "collector_max_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"KAGOFLOW_{name.upper()}={getattr(self, name)!r}: must be at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``KAGOFLOW_*`` variables; unknown values raise ``ValueError`` naming them."""
        source = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f"KAGOFLOW_{f.name.upper()}"
            if name not in source:
                continue
            raw = source[name]
            kind = type(getattr(_DEFAULTS, f.name))
            try:
                values[f.name] = _convert(kind, raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r}: {exc}") from None
        return cls(**values)  # type: ignore[arg-type]


def secret_problems(settings: Settings) -> list[str]:
    """Why these settings must not run a worker or sign tokens (empty = fine). Secrets have no working
    defaults outside ``local_mode``; an operator server off loopback needs a token in any mode."""
    problems: list[str] = []
    if not settings.local_mode:
        secret = settings.tracking_secret
        if secret == DEFAULT_TRACKING_SECRET or len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
            problems.append(f"KAGOFLOW_TRACKING_SECRET: set a random secret of at least {MIN_SECRET_BYTES} bytes "
                            "(the default or a short one lets anybody forge unsubscribe and click links; "
                            "KAGOFLOW_LOCAL_MODE=1 allows it on a development machine)")
        token = settings.operator_token
        if token and len(token.encode("utf-8")) < MIN_SECRET_BYTES:
            problems.append(f"KAGOFLOW_OPERATOR_TOKEN: at least {MIN_SECRET_BYTES} bytes")
    if not settings.operator_token and not is_loopback(settings.operator_host):
        problems.append(f"KAGOFLOW_OPERATOR_TOKEN: required while the operator server binds "
                        f"KAGOFLOW_OPERATOR_HOST={settings.operator_host!r} (not a loopback address)")
    return problems


def require_secrets(settings: Settings) -> None:
    """Raise ``ValueError`` naming every variable that ``secret_problems`` objects to."""
    problems = secret_problems(settings)
    if problems:
        raise ValueError("refusing to start: " + "; ".join(problems))


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP; a name that merely resolves there does not count (it may change)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def to_env(settings: Settings) -> dict[str, str]:
    """The ``KAGOFLOW_*`` variables that make ``Settings.from_env`` return ``settings`` (for child processes)."""
    env: dict[str, str] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"KAGOFLOW_{f.name.upper()}"] = str(value)
    return env


def _convert(kind: type, raw: str) -> object:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError("expected true/false")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is tuple:
        return _split(raw)
    if issubclass(kind, Path):
        return Path(raw)
    return raw


_DEFAULTS = Settings()
__all__ = ["PROJECT_ROOT", "Settings", "is_loopback", "require_secrets", "secret_problems", "to_env"]
