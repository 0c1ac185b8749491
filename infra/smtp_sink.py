"""SMTP sink of the local stack: accepts every mail and stores it as one ``.eml`` file.

File names are ``<arrival ns>-<seq>.eml`` so that sorting names sorts by arrival. A file is written under
``<mail dir>/../tmp`` and renamed into the mail dir, so a reader never sees a half-written mail. The envelope
is kept as ``X-Envelope-From`` / ``X-Envelope-To`` headers prepended to the message, like an MTA's
``Return-Path`` / ``Delivered-To``.

    python infra/smtp_sink.py --port 10025 --mail-dir .stack/smtp/mail

``--reply-delay-ms`` stores each mail at once but answers its end of DATA only after that delay, like a
slow MTA: tests use it to keep mails queued for a connection and to kill a sender while the outcome of a
mail it wrote is unknown to it (the mail is then stored, never half-taken).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    def __init__(self, mail_dir: Path, *, reply_delay: float = 0.0) -> None:
        self.mail_dir = mail_dir
        self.reply_delay = reply_delay
        self.tmp_dir = mail_dir.parent / "tmp"
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count()
        self.received = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        rcpts = ", ".join(envelope.rcpt_tos)
        header = f"X-Envelope-From: <{envelope.mail_from or ''}>\r\nX-Envelope-To: {rcpts}\r\n".encode()
        name = f"{time.time_ns():020d}-{next(self._seq):08d}.eml"
        tmp = self.tmp_dir / name
        with open(tmp, "wb") as out:
            out.write(header)
            out.write(content)
        os.replace(tmp, self.mail_dir / name)
        self.received += 1
        if self.reply_delay:
            await asyncio.sleep(self.reply_delay)
        return "250 Message accepted for delivery"


async def serve(*, host: str, port: int, mail_dir: Path, reply_delay: float = 0.0) -> None:
    handler = MaildirHandler(mail_dir, reply_delay=reply_delay)
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(handler, hostname="kagoflow-smtp-sink", enable_SMTPUTF8=True, decode_data=False,
                    data_size_limit=50 * 1024 * 1024, ident="kagoflow smtp sink")

    server = await loop.create_server(factory, host=host, port=port)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"smtp sink listening on {host}:{port}, storing mail in {mail_dir}", flush=True)
    await stopping.wait()
    server.close()
    await server.wait_closed()
    print(f"smtp sink stopped after {handler.received} mails", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mail-dir", type=Path, required=True)
    parser.add_argument("--reply-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(host=args.host, port=args.port, mail_dir=args.mail_dir, reply_delay=args.reply_delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
