"""The ``kagoflow`` command. Subcommands import their implementation lazily so ``--help`` stays fast.

A bad argument prints usage and exits with status 2 (argparse); a bad rule directory or input file
prints one line naming the file, key and value and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kagoflow.core.errors import ContractError, RuleError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kagoflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("worker", help="run the streaming worker (Faust agents, archive, web server)")
    sub.add_parser("collect", help="run the HTTP beacon collector (POST /beacons → partition-batched records)")

    rules = sub.add_parser("rules", help="rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    check = rules_sub.add_parser("check", help="validate a rules directory and describe each rule")
    check.add_argument("dir", type=Path, help="rules directory (shop.yaml + one YAML file per rule)")

    bt = sub.add_parser("backtest", help="replay recorded inputs through the decision core on a virtual clock")
    bt.add_argument("--rules", type=Path, required=True, help="rules directory")
    bt.add_argument("--beacons", type=Path, required=True, help="beacons JSONL")
    bt.add_argument("--members", type=Path, help="members JSONL")
    bt.add_argument("--catalog", type=Path, help="catalog JSONL")
    bt.add_argument("--orders", type=Path, help="orders JSONL")
    bt.add_argument("--engagement", type=Path, help="engagement JSONL (opens, clicks, unsubscribes; SPEC §12)")
    bt.add_argument("--out", type=Path, help="decisions JSONL (default: standard output)")
    bt.add_argument("--no-progress", action="store_true", help="no progress bar on standard error")

    for name, text in (("preview", "render a rule's mail for a member"), ("test-send", "send a test mail")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--rule", required=True, help="rule id")
        p.add_argument("--member", required=True, help="member id")
        p.add_argument("--rules-dir", type=Path, help="rules directory (default: settings)")
        if name == "preview":
            p.add_argument("--html", type=Path, default=Path("preview.html"), help="where to write the HTML part")
        else:
            p.add_argument("--to", required=True, help="recipient address")

    console = sub.add_parser("console", help="run the staff web console (KAGOFLOW_CONSOLE_HOST:PORT)")
    console_sub = console.add_subparsers(dest="console_command", metavar="SUBCOMMAND")
    console_sub.add_parser("hash-password", help="read a password, print a KAGOFLOW_CONSOLE_USERS hash")

    demo = sub.add_parser("demo", help="produce the sample data set to Kafka (used by infra/demo)")
    demo.add_argument("--members", type=int, default=8, help="number of sample members")
    demo.add_argument("--watch", type=Path, help="print the mails arriving in this folder (the SMTP sink's)")
    demo.add_argument("--watch-seconds", type=float, default=90, help="how long to watch at most")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (RuleError, ContractError) as exc:
        print(f"kagoflow: error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"kagoflow: error: {exc.filename}: file not found", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    from kagoflow.settings import Settings

    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a bad KAGOFLOW_* value: name it, no traceback
        print(f"kagoflow: error: {exc}", file=sys.stderr)
        return 2
    if args.command in {"worker", "preview", "test-send"}:  # they sign tracking tokens
        from kagoflow.settings import secret_problems

        problems = secret_problems(settings)
        for problem in problems:
            print(f"kagoflow: error: {problem}", file=sys.stderr)
        if problems:
            return 2
    if args.command == "worker":
        from kagoflow.agents.app import run_worker

        return run_worker(settings)
    if args.command == "collect":
        from kagoflow.collector.server import run_collector

        return run_collector(settings)
    if args.command == "rules":
        from kagoflow.loading import load_ruleset

        ruleset = load_ruleset(settings, args.dir)
        for line in ruleset.describe():
            print(line)
        return 0
    if args.command == "backtest":
        from kagoflow.backtest import run_backtest

        return run_backtest(
            rules_dir=args.rules,
            beacons=args.beacons,
            members=args.members,
            catalog=args.catalog,
            orders=args.orders,
            engagement=args.engagement,
            out=args.out,
            progress=not args.no_progress,
        )
    if args.command in {"preview", "test-send"}:
        from kagoflow.mail import commands

        rules_dir = args.rules_dir or settings.rules_dir
        if args.command == "preview":
            return commands.preview(settings, rules_dir=rules_dir, rule_id=args.rule, member_id=args.member,
                                    html_out=args.html)
        return commands.test_send(settings, rules_dir=rules_dir, rule_id=args.rule, member_id=args.member,
                                  to=args.to)
    if args.command == "console":
        from kagoflow.console import cli as console_cli

        return console_cli.main(settings, args.console_command)
    if args.command == "demo":
        from kagoflow.demo import produce_sample

        return produce_sample(settings, members=args.members, watch=args.watch, watch_seconds=args.watch_seconds)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
