"""The services of the local stack: how each is installed, configured, started and probed."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from stacklib.layout import INFRA_DIR, Layout
from stacklib.procs import StackError, tcp_banner, tcp_open


@dataclass(frozen=True, kw_only=True)
class Service:
    """How to bring one service up; every callable takes the stack's ``Layout``."""

    name: str
    install: Callable[[Layout], None]
    prepare: Callable[[Layout], None]
    argv: Callable[[Layout], list[str]]
    marker: Callable[[Layout], str]
    """A string in the running process's command line, tying a PID file to the process it names."""
    probe: Callable[[Layout], bool]
    ready_timeout: float
    stop_grace: float


# -- installing ------------------------------------------------------------------------------------
def _run(argv: Sequence[str], *, what: str, env: dict[str, str] | None = None, quiet: bool = False) -> None:
    """Run a set-up command; ``quiet`` keeps its output unless it fails."""
    print(f"stack: {what}: {' '.join(argv)}", file=sys.stderr, flush=True)
    result = subprocess.run(list(argv), env=env, check=False, stdin=subprocess.DEVNULL,
                            capture_output=quiet, text=True)
    if result.returncode != 0:
        output = f"\n{result.stdout}{result.stderr}"[-3000:] if quiet else ""
        raise StackError(f"{what}: `{' '.join(argv)}` failed with exit status {result.returncode}{output}")


def apt_install(packages: Sequence[str], *, what: str) -> None:
    """Install Debian packages without letting their own init scripts start anything.

    ``policy-rc.d`` answering 101 tells invoke-rc.d not to start services (the stack starts its own
    processes on its own ports); ``apt-get update`` only runs because something is missing.
    """
    if shutil.which("apt-get") is None:
        raise StackError(f"{what}: {' '.join(packages)} missing and apt-get not available; install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# written by kagoflow infra/stack during apt-get install\nexit 101\n")
        policy.chmod(0o755)
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    try:
        _run(["apt-get", *lock, "-q", "update"], what=what, env=env)
        _run(["apt-get", *lock, "-q", "-y", "--no-install-recommends",
              "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
              "install", *packages], what=what, env=env)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)


def _need_binaries(binaries: dict[str, str], *, what: str) -> None:
    """``binaries`` maps executable → Debian package; installs the packages of missing executables."""
    missing = sorted({pkg for exe, pkg in binaries.items() if shutil.which(exe) is None})
    if missing:
        apt_install(missing, what=what)
    still = [exe for exe in binaries if shutil.which(exe) is None]
    if still:
        raise StackError(f"{what}: {', '.join(still)} still not on PATH after installing {missing}")


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _install_kafka(layout: Layout) -> None:
    _need_binaries({"java": "openjdk-17-jre-headless", "mvn": "maven"}, what="kafka")
    pom = INFRA_DIR / "kafka" / "pom.xml"
    libs = layout.kafka_libs
    stamp = libs / ".pom.sha256"
    want = _file_sha256(pom)
    if stamp.is_file() and stamp.read_text().strip() == want:
        return
    staging = libs.with_name(libs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _run(["mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies",
          f"-DoutputDirectory={staging}"],
         what="kafka: fetching broker jars from Maven Central")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    stamp.write_text(want + "\n")


def _install_redis(layout: Layout) -> None:
    _need_binaries({"redis-server": "redis-server"}, what="redis")


def _install_clickhouse(layout: Layout) -> None:
    _need_binaries({"clickhouse-server": "clickhouse-server"}, what="clickhouse")


def _install_nothing(layout: Layout) -> None:
    """The SMTP sink is aiosmtpd from the venv (infra/bootstrap installed it)."""


# -- configuring -----------------------------------------------------------------------------------
def _render(template: Path, target: Path, **values: object) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    text = Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    target.write_text(text)


def _kafka_properties(layout: Layout) -> Path:
    return layout.data_dir("kafka") / "server.properties"


def _prepare_kafka(layout: Layout) -> None:
    log_dirs = layout.data_dir("kafka") / "data"
    _render(INFRA_DIR / "kafka" / "server.properties", _kafka_properties(layout),
            broker_port=layout.kafka_port, controller_port=layout.kafka_controller_port,
            log_dirs=log_dirs, partitions=layout.settings.partitions)
    if (log_dirs / "meta.properties").is_file():
        return
    cluster_id = _kafka_cluster_id()
    _run(["java", *_kafka_jvm_common(layout), "kafka.tools.StorageTool", "format",
          "-t", cluster_id, "-c", str(_kafka_properties(layout))], what="kafka: formatting KRaft storage",
         quiet=True)


def _kafka_jvm_common(layout: Layout) -> list[str]:
    return [
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{INFRA_DIR / 'kafka' / 'log4j.properties'}",
        "-cp", f"{layout.kafka_libs}/*",
    ]


def _kafka_argv(layout: Layout) -> list[str]:
    heap = os.environ.get("KAGOFLOW_STACK_KAFKA_HEAP", "512m")
    return [
        "java", f"-Xmx{heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError", _kafka_marker(layout), *_kafka_jvm_common(layout),
        "kafka.Kafka", str(_kafka_properties(layout)),
    ]


def _kafka_marker(layout: Layout) -> str:
    return f"-Dkagoflow.stack={layout.root}"


def _prepare_redis(layout: Layout) -> None:
    layout.data_dir("redis").mkdir(parents=True, exist_ok=True)


def _redis_argv(layout: Layout) -> list[str]:
    # Persistent like a real deployment: the send ledger, cap counters and suppression list must survive a
    # Redis restart (an unsubscribed member mailed again, a mail sent twice). AOF fsynced every second loses
    # at most the last second on a machine crash, nothing on a Redis crash; no RDB snapshots besides.
    return [
        "redis-server", "--port", str(layout.redis_port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
        "--dir", str(layout.data_dir("redis")), "--logfile", "", "--databases", "16",
    ]


def _kafka_cluster_id() -> str:
    """A KRaft cluster id (16 random bytes, URL-safe base64) that does not start with "-": the storage tool
    would read such an id as an option ("argument --cluster-id/-t: expected one argument", 1 start in 64).
    Kafka's own ``Uuid.randomUuid`` skips those ids for the same reason."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _prepare_redis_cluster(layout: Layout) -> None:
    layout.data_dir("redis-cluster").mkdir(parents=True, exist_ok=True)


def _redis_cluster_argv(layout: Layout) -> list[str]:
    ports = ",".join(str(p) for p in layout.ports("redis-cluster"))
    return [sys.executable, str(INFRA_DIR / "stacklib" / "redis_cluster.py"),
            "--cluster-dir", str(layout.data_dir("redis-cluster")), "--ports", ports]


def _redis_cluster_ok(layout: Layout) -> bool:
    """Every slot is served (``cluster_state:ok``) as every master sees it, not merely the first node listening
    (a node that has not yet heard of the others answers CLUSTERDOWN)."""
    return all(b"cluster_state:ok" in tcp_banner(port, send=b"CLUSTER INFO\r\n")
               for port in layout.ports("redis-cluster"))


def _clickhouse_config(layout: Layout) -> Path:
    return layout.data_dir("clickhouse") / "config.xml"


def _prepare_clickhouse(layout: Layout) -> None:
    data = layout.data_dir("clickhouse") / "data"
    for sub in ("tmp", "user_files", "format_schemas"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    _render(INFRA_DIR / "clickhouse" / "config.xml", _clickhouse_config(layout),
            tcp_port=layout.clickhouse_port, http_port=layout.clickhouse_http_port,
            interserver_port=layout.clickhouse_interserver_port, data_dir=data,
            users_xml=INFRA_DIR / "clickhouse" / "users.xml")


def _clickhouse_argv(layout: Layout) -> list[str]:
    return ["clickhouse-server", f"--config-file={_clickhouse_config(layout)}"]


def _clickhouse_ping(layout: Layout) -> bool:
    url = f"http://127.0.0.1:{layout.clickhouse_http_port}/ping"
    with urllib.request.urlopen(url, timeout=1.0) as response:
        return bool(response.read().strip() == b"Ok.")


def _prepare_smtp(layout: Layout) -> None:
    layout.mail_dir.mkdir(parents=True, exist_ok=True)


def _smtp_argv(layout: Layout) -> list[str]:
    return [sys.executable, str(INFRA_DIR / "smtp_sink.py"), "--port", str(layout.smtp_port),
            "--mail-dir", str(layout.mail_dir)]


SERVICES: dict[str, Service] = {
    "kafka": Service(
        name="kafka", install=_install_kafka, prepare=_prepare_kafka, argv=_kafka_argv, marker=_kafka_marker,
        probe=lambda layout: tcp_open(layout.kafka_port), ready_timeout=90.0, stop_grace=30.0,
    ),
    "redis": Service(
        name="redis", install=_install_redis, prepare=_prepare_redis, argv=_redis_argv,
        marker=lambda layout: "redis-server",
        probe=lambda layout: tcp_banner(layout.redis_port, send=b"PING\r\n").startswith(b"+PONG"),
        ready_timeout=20.0, stop_grace=10.0,
    ),
    "redis-cluster": Service(
        name="redis-cluster", install=_install_redis, prepare=_prepare_redis_cluster, argv=_redis_cluster_argv,
        marker=lambda layout: f"--cluster-dir {layout.data_dir('redis-cluster')}", probe=_redis_cluster_ok,
        ready_timeout=30.0, stop_grace=15.0,
    ),
    "clickhouse": Service(
        name="clickhouse", install=_install_clickhouse, prepare=_prepare_clickhouse, argv=_clickhouse_argv,
        marker=lambda layout: str(_clickhouse_config(layout)), probe=_clickhouse_ping,
        ready_timeout=60.0, stop_grace=20.0,
    ),
    "smtp": Service(
        name="smtp", install=_install_nothing, prepare=_prepare_smtp, argv=_smtp_argv,
        marker=lambda layout: f"--mail-dir {layout.mail_dir}",
        probe=lambda layout: tcp_banner(layout.smtp_port).startswith(b"220"),
        ready_timeout=20.0, stop_grace=10.0,
    ),
}
