"""Where the local stack keeps its files and which ports it uses, all derived from the environment.

Ports are read through the same ``KAGOFLOW_*`` variables as ``kagoflow.settings.Settings`` so that the stack
and every kagoflow process agree; the few ports kagoflow itself never dials (Kafka controller, ClickHouse
interserver) have their own ``KAGOFLOW_STACK_*`` variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kagoflow.settings import PROJECT_ROOT, Settings

INFRA_DIR = Path(__file__).resolve().parent.parent
"""``infra/`` of this checkout (also inside the Docker image, where the installed package lives elsewhere)."""
SERVICE_NAMES = ("kafka", "redis", "clickhouse", "smtp", "redis-cluster")
DEFAULT_SERVICES = ("kafka", "redis", "clickhouse", "smtp")
"""What ``infra/stack up`` starts without names; the Redis Cluster only when asked for (its tests)."""


def _port_of(hostport: str, *, what: str) -> int:
    """Port of the first ``host:port`` of a comma-separated bootstrap list."""
    first = hostport.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{what}={hostport!r}: expected host:port")
    if host not in {"127.0.0.1", "localhost"}:
        raise ValueError(f"{what}={hostport!r}: the local stack only listens on 127.0.0.1")
    return int(port)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Paths and ports of one local stack (one stack directory)."""

    root: Path
    settings: Settings
    kafka_port: int
    kafka_controller_port: int
    redis_port: int
    clickhouse_port: int
    clickhouse_http_port: int
    clickhouse_interserver_port: int
    smtp_port: int
    redis_cluster_port: int
    """First of the three consecutive ports of the 3-master Redis Cluster (``infra/stack up redis-cluster``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Layout:
        source = os.environ if env is None else env
        settings = Settings.from_env(source)
        root = Path(source.get("KAGOFLOW_STACK_DIR") or PROJECT_ROOT / ".stack").resolve()
        redis_port = urlsplit(settings.redis_url).port
        if redis_port is None:
            raise ValueError(f"KAGOFLOW_REDIS_URL={settings.redis_url!r}: the URL needs an explicit port")
        kafka_port = _port_of(settings.kafka_bootstrap, what="KAGOFLOW_KAFKA_BOOTSTRAP")
        return cls(
            root=root,
            settings=settings,
            kafka_port=kafka_port,
            kafka_controller_port=int(source.get("KAGOFLOW_STACK_KAFKA_CONTROLLER_PORT", kafka_port + 1)),
            redis_port=redis_port,
            clickhouse_port=settings.clickhouse_port,
            clickhouse_http_port=settings.clickhouse_http_port,
            clickhouse_interserver_port=int(source.get("KAGOFLOW_STACK_CLICKHOUSE_INTERSERVER_PORT", 19009)),
            smtp_port=settings.smtp_port,
            redis_cluster_port=int(source.get("KAGOFLOW_STACK_REDIS_CLUSTER_PORT", 17001)),
        )

    # -- folders -------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def data_dir(self, service: str) -> Path:
        return self.root / service

    @property
    def mail_dir(self) -> Path:
        """Every mail the SMTP sink received, one ``.eml`` file each, names sortable by arrival."""
        return self.root / "smtp" / "mail"

    @property
    def kafka_libs(self) -> Path:
        """Broker jars, shared by every stack dir of this checkout (they depend only on the pom)."""
        return Path(os.environ.get("KAGOFLOW_STACK_KAFKA_LIBS") or PROJECT_ROOT / ".stack" / "kafka-libs")

    def pid_file(self, service: str) -> Path:
        return self.run_dir / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"

    def ports(self, service: str) -> tuple[int, ...]:
        """Every port the service listens on, the client-facing one first."""
        return {
            "kafka": (self.kafka_port, self.kafka_controller_port),
            "redis": (self.redis_port,),
            "clickhouse": (self.clickhouse_port, self.clickhouse_http_port, self.clickhouse_interserver_port),
            "smtp": (self.smtp_port,),
            "redis-cluster": tuple(self.redis_cluster_port + i for i in range(3)),
        }[service]
