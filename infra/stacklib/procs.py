"""Start, find and stop the stack's processes by PID file; port checks; readiness waits."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class StackError(Exception):
    """A problem the operator must act on; the message says which service, port or log file."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not a running service.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pid_file: Path, *, marker: str) -> int | None:
    """PID from the file if that process is alive and still ours (its command line contains ``marker``).

    The marker guards against PID reuse: after a reboot a stale PID file may name an unrelated process.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid) and marker in cmdline(pid):
        return pid
    return None


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in {errno.EADDRINUSE, errno.EACCES}:
                return True
            raise
    return False


def listener_pid(port: int) -> int | None:
    """PID of the process listening on a local TCP port (from /proc; None if unknown or not visible)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def port_owner(port: int) -> str:
    """Best effort `` by pid N (command)`` of the process listening on the port, for error messages."""
    pid = listener_pid(port)
    return f" by pid {pid} ({cmdline(pid)[:150].strip()})" if pid is not None else ""


def check_ports_free(service: str, ports: Sequence[int]) -> None:
    for port in ports:
        if port_in_use(port):
            raise StackError(
                f"{service}: port {port} on 127.0.0.1 is already in use{port_owner(port)} and not by this "
                f"stack's {service}; stop that process or choose other ports (see README, Configuration)"
            )


def spawn(argv: Sequence[str], *, log_file: Path, pid_file: Path, cwd: Path,
          env: dict[str, str] | None = None) -> int:
    """Start a detached process (own session, so ``down`` can signal its whole group) logging to a file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
            env=env, start_new_session=True, close_fds=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the service leads (children included); once only (ClickHouse treats a
    second TERM as "exit now")."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status if the process happens to be our child (started in this same run)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(pid: int, *, grace_seconds: float) -> bool:
    """TERM the process group, wait, then KILL it. Returns True if it had to be killed."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return False
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    return True


def log_tail(log_file: Path, *, lines: int = 25) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(service: str, *, pid: int, probe: Callable[[], bool], timeout: float, log_file: Path) -> None:
    """Poll ``probe`` until it answers True; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except OSError:
            pass
        _reap(pid)
        if not pid_alive(pid):
            raise StackError(
                f"{service}: the process (pid {pid}) exited during start-up; log: {log_file}\n"
                f"{log_tail(log_file)}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{service}: not ready after {timeout:.0f} s (pid {pid} still running); log: {log_file}\n"
                f"{log_tail(log_file)}"
            )
        time.sleep(0.1)


def tcp_banner(port: int, *, send: bytes = b"", timeout: float = 1.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if send:
            sock.sendall(send)
        return sock.recv(256)


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        return True
