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
from typing import NoReturn, TextIO

from bot.config import ConfigError, Settings, load_settings
from bot.text import redact

log = logging.getLogger("membot")


PLATFORMS = ("console", "telegram", "discord")
_CONFIG_HELP = "TOML config file (default: $MEMBOT_CONFIG, else built-in defaults)"


def version() -> str:
    """The installed package's version; from pyproject.toml when run from a checkout that is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("membot")
    except PackageNotFoundError:
        import tomllib

        try:
            project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text("utf-8"))
            return str(project["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), as the README promises, not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _readable_file(value: str) -> str:
    """`--data`: refuse a missing or unreadable file while parsing, before the model loads (which takes seconds)."""
    try:
        with open(value, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {exc.strerror or exc}") from None
    return value


def _parser() -> argparse.ArgumentParser:
    # --config is accepted before the command and after it (`membot chat --config c.toml`). After it, it is
    # stored as `config_sub` with no default, so a nested command's parser cannot reset a value given earlier.
    common = _Parser(add_help=False)
    common.add_argument("--config", dest="config_sub", default=argparse.SUPPRESS, metavar="FILE", help=_CONFIG_HELP)
    parser = _Parser(prog="membot", description="A chatbot that remembers each person.")
    parser.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"membot {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = sub.add_parser("chat", parents=[common], help="chat in the terminal (piped stdin: one message a line)")
    chat.add_argument("--user", default=os.environ.get("USER") or "me", help="your user id on the console")

    sub.add_parser("run", parents=[common], help="run the bot on every platform whose token is set")

    jobs = sub.add_parser("jobs", parents=[common], help="memory jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jobs_sub.add_parser("run", parents=[common], help="close idle sessions, write due memories now, and exit")

    memory = sub.add_parser("memory", parents=[common], help="show, export or forget one person's memory")
    memory_sub = memory.add_subparsers(dest="memory_command", required=True, metavar="ACTION")
    for action, text in (("show", "print the compressive memory"), ("export", "write all stored data as JSON"),
                         ("forget", "delete everything about the person")):
        p = memory_sub.add_parser(action, parents=[common], help=text)
        p.add_argument("--platform", required=True, choices=PLATFORMS, help=", ".join(PLATFORMS))
        p.add_argument("--user", required=True, help="the user id on that platform")
        if action == "export":
            p.add_argument("--out", help="file to write (default: stdout)")
        if action == "forget":
            p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    db = sub.add_parser("db", parents=[common], help="check, back up, migrate or copy the database")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("check", parents=[common],
                      help="check the whole database file (integrity and full-text index); exit 1 if damaged")
    backup = db_sub.add_parser("backup", parents=[common],
                               help="copy the database consistently (safe while the bot runs), readable by you only")
    backup.add_argument("out", metavar="FILE", help="the new backup file (must not exist)")
    db_sub.add_parser("migrate", parents=[common],
                      help="bring the database's schema up to date and exit (SQLite or PostgreSQL)")
    copy = db_sub.add_parser("copy", parents=[common],
                             help="copy the SQLite database into an empty PostgreSQL one, then compare them")
    copy.add_argument("--to", required=True, metavar="URL",
                      help="postgresql://user@host/database (password from storage.password_env or PGPASSWORD)")

    ev = sub.add_parser("eval", parents=[common], help="benchmarks of the memory")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    locomo = ev_sub.add_parser("locomo", parents=[common], help="replay LoCoMo conversations through the bot's pipeline",
                               description="Replay LoCoMo conversations through the bot's own memory pipeline and "
                                           "score what each memory strategy puts in the reply context "
                                           "(see docs/locomo.md).")
    locomo.add_argument("--data", required=True, type=_readable_file, metavar="FILE",
                        help="the LoCoMo JSON file (locomo10.json format)")
    locomo.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: report.md, report.json and the memory databases (OUT/databases)")
    locomo.add_argument("--conversations", metavar="IDS", help="comma-separated sample ids (default: all)")
    locomo.add_argument("--strategies", default="none,recent,sessions,compressive,hybrid", metavar="LIST",
                        help="comma-separated memory strategies to compare (default: %(default)s)")
    locomo.add_argument("--budgets", default="256,512,1024,2048", metavar="LIST",
                        help="comma-separated reply-context token budgets to measure (default: %(default)s)")
    locomo.add_argument("--limit-sessions", type=int, metavar="N",
                        help="replay only the first N sessions of each conversation, and ask only the questions "
                             "about them (default: all)")
    locomo.add_argument("--limit-questions", type=int, metavar="N",
                        help="ask at most N questions per conversation (default: all)")
    locomo.add_argument("--answer-budgets", metavar="LIST",
                        help="budgets at which answers are generated and scored (default: 1024 if measured, "
                             "else the largest budget)")
    locomo.add_argument("--answer-questions", type=int, metavar="N",
                        help="generate answers for only N questions of each conversation, spread over its list (cost)")
    locomo.add_argument("--no-answers", action="store_true", help="skip answer generation (recall only)")
    locomo.add_argument("--reuse", action="store_true",
                        help="reuse the memory databases an earlier run left in OUT/databases (re-score only)")
    locomo.add_argument("--with-contexts", action="store_true",
                        help="keep every reply context in report.json (for checking answers by hand; large)")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("apscheduler", "httpx", "aiosqlite", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def write_private(path: Path, text: str) -> None:
    """An export holds private conversations: readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


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
        print(f"membot: {redact(str(exc))}", file=sys.stderr)  # secrets never leave, whatever the error
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
    if args.command == "db":
        if args.db_command in ("migrate", "copy"):
            return await _db_move(settings, args)
        return await asyncio.to_thread(_db, settings, args)
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


class JobsProgress:
    """`membot jobs run` on a backlog takes minutes on a CPU: show "memory jobs: done/total" redrawn in place on
    a terminal. Silent when the stream is not a terminal (piped or logged), where a redrawn line is noise.

    Called by JobRunner after each batch with the jobs just processed and the jobs still due; the total grows
    while it runs, since each session memory written queues a compression."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.done = 0
        self._shown = 0  # width of the line on screen, to blank it out

    def __call__(self, processed: int, remaining: int) -> None:
        self.done += processed
        if not self.enabled:
            return
        text = f"memory jobs: {self.done}/{self.done + remaining} done"
        self.stream.write("\r" + text.ljust(self._shown))
        self.stream.flush()
        self._shown = len(text)

    def close(self) -> None:
        """Blank the progress line so the summary (on stdout) starts on a clean line."""
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


async def _db_move(settings: Settings, args: argparse.Namespace) -> int:
    """`membot db migrate` (either backend) and `membot db copy --to URL` (SQLite to PostgreSQL)."""
    from memory.store import Store, StoreError, is_postgres

    password = settings.storage.password()
    if args.db_command == "migrate":
        store = await Store.open(settings.storage.target(), password=password)
        await store.close()
        print(f"{_shown(settings)}: schema up to date")
        return 0
    from memory.copy import copy_sqlite_to_postgres
    from memory.postgres_store import PostgresStore, where
    from memory.sqlite_store import RunLock

    if settings.storage.url is not None:
        print("membot: db copy reads the SQLite database (storage.path); unset storage.url for it", file=sys.stderr)
        return 2
    if not is_postgres(args.to):
        print("membot: --to takes a postgresql://user@host/database URL", file=sys.stderr)
        return 2
    source = settings.storage.resolved_path()
    if not source.exists():
        print(f"membot: {source} does not exist: nothing to copy", file=sys.stderr)
        return 1
    lock = RunLock(source)
    lock.acquire()  # no bot writes to the file meanwhile (and none is running now: one line if it is)
    try:
        target = PostgresStore(args.to, password=password)
        await target.connect()
        try:
            report = await copy_sqlite_to_postgres(source, target)
        except StoreError as exc:
            print(f"membot: {exc}", file=sys.stderr)
            return 1
        finally:
            await target.close()
    finally:
        lock.release()
    print(f"Copied {source} to {where(args.to)}: {report.summary()}.")
    print(f'Now set [storage] url = "{args.to}" (and remove path) to run on PostgreSQL.')
    return 0


def _shown(settings: Settings) -> str:
    from memory.postgres_store import where

    return where(settings.storage.url) if settings.storage.url else str(settings.storage.resolved_path())


def _db(settings: Settings, args: argparse.Namespace) -> int:
    """`membot db check` / `membot db backup FILE`: on the file itself, without loading a model."""
    from memory.sqlite_store import backup_file, check_file

    if settings.storage.url is not None:
        print(f"membot: db {args.db_command} is for SQLite files; on PostgreSQL use its own tools "
              "(pg_dump for a backup, amcheck for a check)", file=sys.stderr)
        return 2
    path = settings.storage.resolved_path()
    if args.db_command == "check":
        problems = check_file(path)
        for problem in problems[:20]:
            print(f"{path}: {problem}")
        if problems:
            print(f"membot: database {path} is damaged ({len(problems)} problem(s)); restore a backup",
                  file=sys.stderr)
            return 1
        print(f"{path}: ok")
        return 0
    pages = backup_file(path, Path(args.out))
    print(f"Backed up {path} to {args.out} ({pages} pages)")
    return 0


async def _jobs_run(settings: Settings) -> int:
    app = await _open_app(settings)
    progress = JobsProgress(sys.stderr)
    try:
        await app.start(schedule=False)
        try:
            report = await app.jobs.run_until_idle(progress=progress)
        finally:
            progress.close()
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
                await asyncio.to_thread(write_private, Path(args.out), text + "\n")
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
            print(await d.erase(args.platform, args.user, by_admin=True))
        return 0
    finally:
        await app.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
