"""``kagoflow console`` (serve) and ``kagoflow console hash-password``."""

from __future__ import annotations

import getpass
import sys

from kagoflow.settings import Settings


def main(settings: Settings, command: str | None) -> int:
    if command == "hash-password":
        from kagoflow.console.auth import hash_password

        if sys.stdin.isatty():
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                print("kagoflow: error: passwords differ", file=sys.stderr)
                return 1
        else:
            password = sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            print("kagoflow: error: password: at least 8 characters", file=sys.stderr)
            return 1
        print(hash_password(password))
        return 0
    from kagoflow.console.app import ConfigError, run

    try:
        run(settings)
    except ConfigError as exc:
        print(f"kagoflow: error: {exc}", file=sys.stderr)
        return 2
    return 0
