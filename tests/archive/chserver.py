"""A private ClickHouse server for tests that stop and restart it (the shared stack's server stays up).

Same binary as the stack (Debian's 18.16), own ports and data directory; stopped by its PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

BINARY = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"

_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/error.log</errorlog></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp}</tcp_port>
    <http_port>{http}</http_port>
    <interserver_http_port>{interserver}</interserver_http_port>
    <path>{root}/data/</path>
    <tmp_path>{root}/data/tmp/</tmp_path>
    <user_files_path>{root}/data/user_files/</user_files_path>
    <format_schema_path>{root}/data/format_schemas/</format_schema_path>
    <users_config>{root}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
</yandex>
"""
_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default/></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile>
        <quota>default</quota></default></users>
    <quotas><default/></quotas>
</yandex>
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return Path(BINARY).is_file()


class PrivateClickHouse:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tcp_port, self.http_port, interserver = _free_port(), _free_port(), _free_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.xml").write_text(_CONFIG.format(root=root, tcp=self.tcp_port, http=self.http_port,
                                                        interserver=interserver))
        (root / "users.xml").write_text(_USERS)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 30.0) -> None:
        self._proc = subprocess.Popen([BINARY, f"--config-file={self.root / 'config.xml'}"], cwd=self.root,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited with {self._proc.returncode}; see {self.root}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"clickhouse-server not ready within {timeout} s")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ping", timeout=1) as response:
                return bool(response.read().strip() == b"Ok.")
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
