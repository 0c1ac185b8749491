"""A 3-master Redis Cluster for the local stack, as one supervised process (stdlib only).

``infra/stack up redis-cluster`` runs this file; it starts one ``redis-server --cluster-enabled yes`` per
port as its children, joins them with ``redis-cli --cluster create`` the first time (the nodes' own
``nodes.conf`` remembers the cluster on later starts) and then waits. The stack stops it by PID like every
other service: the TERM goes to the whole process group, so the three servers stop with it; if one server
dies the others are stopped too, so the stack never reports a half cluster as up.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _server(port: int, data: Path) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    # Persistent like the single Redis (AOF fsynced every second); a short node timeout so a test that
    # stops a node sees the cluster react quickly.
    return subprocess.Popen([
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
        "--cluster-config-file", str(data / "nodes.conf"), "--cluster-node-timeout", "5000",
        "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
        "--dir", str(data), "--logfile", "",
    ], stdin=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster-dir", type=Path, required=True)
    parser.add_argument("--ports", required=True, help="comma-separated, one master each")
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    servers = [_server(port, args.cluster_dir / str(port)) for port in ports]

    def stop(*_: object, code: int = 0) -> None:
        for server in servers:
            if server.poll() is None:
                server.terminate()
        for server in servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        sys.exit(code)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = time.monotonic() + 20
    while not all(_ping(port) for port in ports):
        if time.monotonic() > deadline or any(s.poll() is not None for s in servers):
            print("redis-cluster: a node did not start", file=sys.stderr, flush=True)
            stop(code=1)
        time.sleep(0.1)
    created = args.cluster_dir / "created"
    if not created.exists():
        result = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL, check=False,
        )
        if result.returncode != 0:
            print("redis-cluster: redis-cli --cluster create failed", file=sys.stderr, flush=True)
            stop(code=1)
        created.write_text("created\n")
    print(f"redis-cluster: masters on {args.ports}", flush=True)
    while all(s.poll() is None for s in servers):
        time.sleep(0.5)
    print("redis-cluster: a node exited; stopping the others", file=sys.stderr, flush=True)
    stop(code=1)
    return 1


if __name__ == "__main__":
    sys.exit(main())
