"""The `membot` command. Exit codes: 0 done, 1 failed at run time, 2 bad usage or configuration."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.config import ConfigError, Settings, load_settings

log = logging.getLogger("membot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="membot", description="A chatbot that remembers each person.")
    parser.add_argument("--config", help="TOML config file (default: $MEMBOT_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = sub.add_parser("chat", help="chat in the terminal (piped stdin: one message a line)")
    chat.add_argument("--user", default=os.environ.get("USER") or "me", help="your user id on the console")
    chat.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)

    run = sub.add_parser("run", help="run the bot on every platform whose token is set")
    run.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)

    jobs = sub.add_parser("jobs", help="memory jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jobs_run = jobs_sub.add_parser("run", help="close idle sessions, write due memories now, and exit")
    jobs_run.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)

    memory = sub.add_parser("memory", help="show, export or forget one person's memory")
    memory_sub = memory.add_subparsers(dest="memory_command", required=True, metavar="ACTION")
    for action, text in (("show", "print the compressive memory"), ("export", "write all stored data as JSON"),
                         ("forget", "delete everything about the person")):
        p = memory_sub.add_parser(action, help=text)
        p.add_argument("--platform", required=True, help="console, telegram or discord")
        p.add_argument("--user", required=True, help="the user id on that platform")
        p.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
        if action == "export":
            p.add_argument("--out", help="file to write (default: stdout)")
        if action == "forget":
            p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    ev = sub.add_parser("eval", help="benchmarks of the memory")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    locomo = ev_sub.add_parser("locomo", help="replay LoCoMo conversations through the bot's pipeline")
    locomo.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    locomo.add_argument("--data", required=True, help="LoCoMo JSON (locomo10.json format)")
    locomo.add_argument("--conversations", help="comma-separated sample ids (default: all)")
    locomo.add_argument("--strategies", default="none,recent,sessions,compressive,hybrid")
    locomo.add_argument("--budgets", default="256,512,1024,2048")
    locomo.add_argument("--limit-sessions", type=int)
    locomo.add_argument("--limit-questions", type=int)
    locomo.add_argument("--answer-budgets", help="budgets at which answers are generated and scored (default 1024)")
    locomo.add_argument("--reuse", action="store_true",
                        help="reuse the memory databases an earlier run left in OUT/databases (re-score only)")
    locomo.add_argument("--answer-questions", type=int,
                        help="generate answers for only N questions of each conversation, spread over its list (cost)")
    locomo.add_argument("--no-answers", action="store_true", help="skip answer generation (recall only)")
    locomo.add_argument("--with-contexts", action="store_true",
                        help="keep every reply context in report.json (for checking answers by hand; large)")
    locomo.add_argument("--out", required=True, help="output folder")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("apscheduler", "httpx", "aiosqlite", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = getattr(args, "config_sub", None) or args.config
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"membot: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.logging.level)
    try:
        return asyncio.run(_dispatch(args, settings))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"membot: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one clear line, never a stack trace, unless debugging
        log.debug("fatal error", exc_info=True)
        print(f"membot: {exc}", file=sys.stderr)
        return 1


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "chat":
        return await _chat(settings, args.user)
    if args.command == "run":
        from bot.runner import run_platforms

        return await run_platforms(settings)
    if args.command == "jobs":
        return await _jobs_run(settings)
    if args.command == "memory":
        return await _memory(settings, args)
    if args.command == "eval":
        from memory.locomo.run import run_locomo_cli

        return await run_locomo_cli(settings, args)
    return 2


async def _open_app(settings: Settings, *, need_model: bool = True):
    from bot.app import App

    backend = None
    if not need_model:
        from models.fake import FakeBackend

        backend = FakeBackend()
        backend.name = "none"
    return await App.create(settings, backend=backend, memory_backend=backend)


async def _chat(settings: Settings, user: str) -> int:
    from bot.console import ConsoleChat

    app = await _open_app(settings)
    try:
        await app.start()
        return await ConsoleChat(app.dispatcher, user).run()
    finally:
        await app.close()


async def _jobs_run(settings: Settings) -> int:
    app = await _open_app(settings)
    try:
        await app.start(schedule=False)
        report = await app.jobs.run_until_idle()
        print("Memory jobs: " + report.summary() + ".")
        return 0
    finally:
        await app.close()


async def _memory(settings: Settings, args: argparse.Namespace) -> int:
    app = await _open_app(settings, need_model=False)
    try:
        d = app.dispatcher
        if await app.sessions.find_user(args.platform, args.user) is None:
            print(f"membot: no stored data for user {args.user!r} on {args.platform}", file=sys.stderr)
            return 1
        if args.memory_command == "show":
            print(await d.memory_text(args.platform, args.user))
        elif args.memory_command == "export":
            text = json.dumps(await d.export(args.platform, args.user), ensure_ascii=False, indent=2)
            if args.out:
                await asyncio.to_thread(Path(args.out).write_text, text + "\n", encoding="utf-8")
                print(f"Wrote {args.out}", file=sys.stderr)
            else:
                print(text)
        else:
            if not args.yes:
                if not sys.stdin.isatty():
                    print("membot: refusing to forget without confirmation; pass --yes", file=sys.stderr)
                    return 2
                answer = await asyncio.to_thread(input, f"Delete everything about {args.platform} user {args.user}? [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    print("Nothing was deleted.")
                    return 1
            print(await d.forget(args.platform, args.user, by_admin=True))
        return 0
    finally:
        await app.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
