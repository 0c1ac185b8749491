"""infra/stack up|down|status|logs [SERVICE...]: the local Kafka, Redis, ClickHouse and SMTP sink."""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kagoflow.settings import Settings
from stacklib.layout import DEFAULT_SERVICES, SERVICE_NAMES, Layout
from stacklib.procs import StackError, check_ports_free, listener_pid, read_pid, spawn, stop, wait_ready
from stacklib.provision import apply_schema, ensure_topics
from stacklib.services import SERVICES, Service


def _say(text: str) -> None:
    print(f"stack: {text}", file=sys.stderr, flush=True)


@contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One ``up``/``down`` at a time per stack dir (several test sessions may start the stack at once)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / "stack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def running_pid(layout: Layout, service: Service) -> int | None:
    """PID of the service this stack dir started, if it runs."""
    return read_pid(layout.pid_file(service.name), marker=service.marker(layout))


@dataclass(frozen=True)
class Running:
    pid: int
    root: Path
    """The stack dir that started it: this one, or another checkout's (see ``_other_stacks``)."""


def find_running(layout: Layout, service: Service) -> Running | None:
    pid = running_pid(layout, service)
    if pid is not None:
        return Running(pid, layout.root)
    return _other_stacks(layout, service)


def _other_stacks(layout: Layout, service: Service) -> Running | None:
    """The same service on the same port, started by another checkout's ``infra/stack`` (a second clone or
    worktree on this machine): it is used, not reported as a port clash, and never stopped from here.

    Recognised by the process's working directory ``<stack dir>/<service>`` and that stack's PID file.
    """
    pid = listener_pid(layout.ports(service.name)[0])
    if pid is None:
        return None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    if cwd.parent.name == service.name:  # a redis-cluster node runs in its own folder below the service's
        cwd = cwd.parent
    root = cwd.parent
    if cwd.name != service.name or root == layout.root:
        return None
    owner = read_pid(root / "run" / f"{service.name}.pid", marker="")
    if owner is None or owner not in {pid, _parent_pid(pid)}:  # the redis-cluster nodes are its children
        return None
    return Running(owner, root)


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _start(layout: Layout, service: Service) -> Running:
    """The running service, started first (installing what is missing) when it does not run."""
    running = find_running(layout, service)
    if running is not None:
        if running.root != layout.root:
            _say(f"{service.name}: using the one the stack in {running.root} runs (pid {running.pid})")
        return running
    layout.pid_file(service.name).unlink(missing_ok=True)
    service.install(layout)
    check_ports_free(service.name, layout.ports(service.name))
    service.prepare(layout)
    pid = spawn(service.argv(layout), log_file=layout.log_file(service.name),
                pid_file=layout.pid_file(service.name), cwd=layout.data_dir(service.name))
    return Running(pid, layout.root)


def up(layout: Layout, names: Sequence[str]) -> None:
    with _locked(layout):
        started = time.monotonic()
        # Start everything first, then wait: the services boot in parallel (Kafka's JVM is the slow one).
        procs = {name: _start(layout, SERVICES[name]) for name in names}
        for name, running in procs.items():
            service = SERVICES[name]
            wait_ready(name, pid=running.pid, probe=functools.partial(service.probe, layout),
                       timeout=service.ready_timeout, log_file=running.root / "logs" / f"{name}.log")
            _say(f"{name} up on 127.0.0.1:{layout.ports(name)[0]} (pid {running.pid}, "
                 f"{time.monotonic() - started:.1f} s)")
        provision(layout.settings, kafka="kafka" in names, clickhouse="clickhouse" in names)


def provision(settings: Settings, *, kafka: bool, clickhouse: bool) -> None:
    if kafka:
        created = ensure_topics(settings)
        _say(f"kafka topics ready on {settings.kafka_bootstrap} ({len(created)} created)")
    if clickhouse:
        count = apply_schema(settings)
        _say(f"clickhouse database {settings.clickhouse_database!r} ready on {settings.clickhouse_host}:"
             f"{settings.clickhouse_port} ({count} schema statements applied)")


def down(layout: Layout, names: Sequence[str]) -> None:
    with _locked(layout):
        # Reverse order: producers of load (none here) before the stores they write to.
        for name in reversed(names):
            service = SERVICES[name]
            pid = running_pid(layout, service)
            if pid is None:
                layout.pid_file(name).unlink(missing_ok=True)
                continue
            killed = stop(pid, grace_seconds=service.stop_grace)
            layout.pid_file(name).unlink(missing_ok=True)
            _say(f"{name} stopped (pid {pid}{', killed after timeout' if killed else ''})")


def status_rows(layout: Layout, names: Sequence[str]) -> list[dict[str, object]]:
    """One row per service; ``stack`` is the stack dir whose process serves it (another checkout's, maybe)."""
    rows: list[dict[str, object]] = []
    for name in names:
        running = find_running(layout, SERVICES[name])
        root = running.root if running is not None else layout.root
        row: dict[str, object] = {
            "service": name, "port": layout.ports(name)[0], "pid": running.pid if running else None,
            "state": "up" if running is not None else "down", "stack": str(root),
            "log": str(root / "logs" / f"{name}.log"),
        }
        if name == "smtp":
            row["mail_dir"] = str(root / "smtp" / "mail")
        rows.append(row)
    return rows


def status(layout: Layout, names: Sequence[str], *, as_json: bool) -> int:
    rows = status_rows(layout, names)
    if as_json:
        print(json.dumps(rows))
    else:
        print(f"stack dir: {layout.root}")
        print(f"{'SERVICE':<15}{'PORT':<8}{'PID':<10}STATE")
        for row in rows:
            other = f" (run by the stack in {row['stack']})" if row["stack"] != str(layout.root) else ""
            print(f"{row['service']:<15}{row['port']!s:<8}{row['pid'] or '-'!s:<10}{row['state']}{other}")
    return 0 if all(row["state"] == "up" for row in rows) else 3


def logs(layout: Layout, name: str, *, lines: int, follow: bool) -> int:
    log_file = layout.log_file(name)
    if not log_file.exists():
        _say(f"{name}: no log yet ({log_file})")
        return 1
    argv = ["tail", f"-n{lines}", *(["-F"] if follow else []), str(log_file)]
    os.execvp(argv[0], argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infra/stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd, text in (("up", "install what is missing, start, wait until ready, create topics and schema"),
                      ("down", "stop the processes this stack started (by PID file)"),
                      ("status", "service, port, PID, up/down; exit status 3 if any is down")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("services", nargs="*", metavar="SERVICE",
                       help=f"any of {', '.join(SERVICE_NAMES)} (default: all but redis-cluster)")
        if cmd == "status":
            p.add_argument("--json", action="store_true", help="one JSON list on standard output")
    p = sub.add_parser("provision", help="only create the topics and apply the ClickHouse schema, on the "
                       "services KAGOFLOW_* point at (also an existing Kafka cluster / ClickHouse server)")
    p.add_argument("--skip-kafka", action="store_true")
    p.add_argument("--skip-clickhouse", action="store_true")
    p = sub.add_parser("logs", help="tail a service's log")
    p.add_argument("service", choices=SERVICE_NAMES)
    p.add_argument("-n", "--lines", type=int, default=100)
    p.add_argument("-f", "--follow", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(getattr(args, "services", [])) - set(SERVICE_NAMES))
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)} (choose from {', '.join(SERVICE_NAMES)})")
    try:
        if args.command == "provision":
            provision(Settings.from_env(), kafka=not args.skip_kafka, clickhouse=not args.skip_clickhouse)
            return 0
        layout = Layout.from_env()
        if args.command == "logs":
            return logs(layout, args.service, lines=args.lines, follow=args.follow)
        names = [n for n in SERVICE_NAMES if n in args.services] if args.services else list(DEFAULT_SERVICES)
        if args.command == "up":
            up(layout, names)
            return 0
        if args.command == "down":
            down(layout, names)
            return 0
        return status(layout, names, as_json=args.json)
    except (StackError, ValueError) as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
