"""Memory truth on scripted people: does the memory hold what each person said, and nothing they did not?

Eight people (bench/personas.json) tell the bot about themselves over two sessions a few days apart, through
the production pipeline (App, dispatcher, sessions, the memory jobs, the reply context) on the default
configuration, with the embedded model unless `--config` names another. Then each asks questions in a new
session. Printed as one JSON object, per person and overall:

- precision: the share of stored memory lines (session-memory facts, profile, relationship and event
  sentences) with no name, place, number or other specific term absent from that person's own words;
- fact_recall: the share of the person's stated facts found in one line of the compressive memory;
- stale_kept: corrected facts still present in the compressive memory (should be 0);
- answer_rate: the share of questions whose reply contains the expected answer, for the configured memory
  strategy and for `none` (no memory) as the baseline.

Everything is read back the way a person reads it: their `/export`. The metric is computed here, from the
script's own text, independently of the memory code it judges. `--code DIR` runs another checkout's
pipeline (e.g. a worktree of an older commit) with this same script and metric, for the "before" figures.

    .venv/bin/python bench/personas.py > personas.json
    git worktree add /tmp/before <commit> && .venv/bin/python bench/personas.py --code /tmp/before
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PERSONAS = HERE / "personas.json"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="membot config file (default: the defaults: embedded model, hybrid)")
    parser.add_argument("--code", help="run the pipeline of this checkout instead of this one (for baselines)")
    parser.add_argument("--people", type=int, default=0, help="only the first N people (0: all)")
    parser.add_argument("--quick", action="store_true", help="the first two people only (a smoke run)")
    parser.add_argument("--baseline-strategy", default="none", help="memory strategy asked as the baseline ('' for none)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--db", help="keep the database here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --db: the conversations and memories are already there; ask the questions only")
    parser.add_argument("--rescore", help="recompute the figures from an earlier run's JSON output, run nothing")
    return parser.parse_args()


# ---- the metric (independent of memory/: plain text rules over the script's own words) -----------------

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE = re.compile(rf"\b(?:\d{{1,2}} (?:{_MONTHS}) \d{{4}}|(?:{_MONTHS}) \d{{4}}|(?:{_MONTHS}) \d{{1,2}},? \d{{4}})\b")
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)?", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
# Words that start a sentence without being a name: pronouns, articles, a few adverbs.
_PLAIN = frozenset(
    """the a an i me my we our you your she he they her his their them it its this that these those there
    here then and but or so also if as yes no not yesterday today tomorrow tonight actually last next when
    while after before during on in at by for with from to of what who how why where which hi hello hey
    thanks thank sure oh wow great good well nice dear let do does did is are was were be been has have had
    can could will would should may might must one some many all both each every just very really""".split()
)


def _norm(token: str) -> str:
    """Lower case, without an English clitic ("They're" -> "they", "Alice's" -> "alice")."""
    token = token.lower().replace("\u2019", "'")
    return re.sub(r"'(?:s|re|ve|ll|d|m|t)$", "", token)


def specific_terms(line: str) -> list[str]:
    """Names, places, numbers and other specific terms: tokens with a digit or a capital letter (outside
    dates the system resolved, which are checked separately), except plain sentence openers."""
    out = []
    for token in _TOKEN.findall(_DATE.sub(" ", line)):
        if any(ch.isdigit() for ch in token) or token[:1].isupper():
            if _norm(token) in _PLAIN:
                continue
            out.append(_norm(token))
    return out


def unsupported_terms(line: str, own_words: set[str], names: set[str], years: set[int]) -> list[str]:
    # A year the system resolved from "three years ago" stands in brackets after the phrase: "(2023)".
    line = re.sub(r"\((\d{4})\)", lambda m: "" if int(m.group(1)) in years else m.group(0), line)
    bad = [t for t in specific_terms(line) if t not in own_words and t not in names]
    # A date the system resolved from the person's words is theirs when its year is near the conversation.
    for match in _DATE.finditer(line):
        year = int(match.group(0)[-4:])
        if year not in years:
            bad.append(match.group(0))
    return bad


def memory_lines(export: dict[str, Any]) -> tuple[list[str], list[str], dict[str, str]]:
    """(all stored lines, the compressive memory's lines, its parts) from a person's export."""
    session_lines = [str(f) for s in export.get("sessions", []) for f in
                     ((s.get("session_memory") or {}).get("facts") or [])]
    versions = [v for v in export.get("compressive_memory", []) if v.get("scope") == "all"]
    latest = versions[-1] if versions else {"profile": "", "relationship": "", "events": ""}
    parts = {k: str(latest.get(k) or "") for k in ("profile", "relationship", "events")}
    compressive: list[str] = []
    for key, text in parts.items():
        for raw in text.splitlines():
            body = raw.split(": ", 1)[1] if key == "events" and ": " in raw else raw
            compressive += [s.strip() for s in _SENTENCE.split(body) if s.strip()]
    return session_lines + compressive, compressive, parts


def fact_found(fact: dict[str, Any], lines: list[str]) -> bool:
    for line in lines:
        low = line.lower()
        if all(any(re.search(rf"\b{re.escape(alt.lower())}", low) for alt in group) for group in fact["words"]):
            return True
    return False


# ---- the replay -----------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench._common import DEFAULT_MODEL_CACHE, log
    from bot.app import App
    from bot.config import load_settings
    from bot.incoming import IncomingMessage

    people = json.loads(PERSONAS.read_text())["people"]
    if args.people or args.quick:
        people = people[: args.people or 2]
    folder = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="membot-personas-"))
    folder.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"storage.path": str(folder / "personas.sqlite3"), "logging.level": "WARNING"}
    settings = load_settings(Path(args.config) if args.config else None, overrides=overrides)
    if settings.model.backend == "embedded" and not settings.model.cache_dir:
        overrides["model.cache_dir"] = str(DEFAULT_MODEL_CACHE)
        settings = load_settings(Path(args.config) if args.config else None, overrides=overrides)
    clock = Clock()
    app = await App.create(settings, clock=clock)
    await app.start(schedule=False)
    bot_name = settings.bot.name
    timings: dict[str, float] = {}

    def message(person: dict[str, Any], text: str, chat: str = "") -> IncomingMessage:
        return IncomingMessage(platform="console", user_id=person["id"], display_name=person["name"],
                               chat_id=f"console:{person['id']}{chat}", chat_kind="console", text=text)

    def start_of(person: dict[str, Any]) -> float:
        return datetime.fromisoformat(person["start"].replace("Z", "+00:00")).timestamp()

    transcript: dict[str, list[dict[str, str]]] = {p["id"]: [] for p in people}
    try:
        rounds = 0 if args.reuse else max(len(p["sessions"]) for p in people)
        t0 = time.perf_counter()
        for index in range(rounds):
            for person in people:
                if index >= len(person["sessions"]):
                    continue
                session = person["sessions"][index]
                clock.now = start_of(person) + session["day"] * 86_400
                for text in session["messages"]:
                    reply = await app.dispatcher.handle(message(person, text))
                    transcript[person["id"]].append({"user": text, "bot": reply.text})
                    clock.now += 45
                await app.dispatcher.handle(message(person, "/end"))
            log(f"round {index + 1}/{rounds}: conversations replayed; writing memories")
            clock.now = max(start_of(p) for p in people) + 40 * 86_400
            await app.jobs.run_until_idle()
        timings["conversations_and_memory_s"] = round(time.perf_counter() - t0, 1)

        answers: dict[str, dict[str, list[str]]] = {p["id"]: {} for p in people}
        run_id = int(time.time())
        strategies = [settings.memory.strategy] + (
            [args.baseline_strategy] if args.baseline_strategy not in ("", settings.memory.strategy) else [])
        for strategy in strategies:
            app.dispatcher.context.strategy = strategy
            t0 = time.perf_counter()
            for person in people:
                last_day = max(s["day"] for s in person["sessions"])
                replies = []
                for number, question in enumerate(person["questions"]):
                    # Each question in a chat of its own: no earlier answer in the context.
                    clock.now = start_of(person) + (last_day + 1) * 86_400 + number * 60
                    reply = await app.dispatcher.handle(message(person, question["q"], f":q{number}:{strategy}:{run_id}"))
                    replies.append(reply.text)
                answers[person["id"]][strategy] = replies
            timings[f"questions_{strategy}_s"] = round(time.perf_counter() - t0, 1)
            log(f"questions answered with memory strategy {strategy}")

        exports = {}
        for person in people:
            reply = await app.dispatcher.handle(message(person, "/export"))
            exports[person["id"]] = json.loads(reply.document or b"{}")
    finally:
        await app.close()

    raw = {"people": people, "strategies": strategies, "bot_name": bot_name, "exports": exports,
           "answers": answers, "transcript": transcript}
    result = score(raw)
    result.update({
        "code": args.code or str(HERE.parent),
        "model": app.worker.name,
        "strategy": settings.memory.strategy,
        "quick": args.quick,
        "timings": timings,
        "raw": raw,
    })
    return result


def score(raw: dict[str, Any]) -> dict[str, Any]:
    """The figures from a run's raw material (also `--rescore FILE` on an earlier run's JSON)."""
    people, strategies, bot_name = raw["people"], raw["strategies"], raw["bot_name"]
    exports, answers, transcript = raw["exports"], raw["answers"], raw["transcript"]

    def start_of(person: dict[str, Any]) -> float:
        return datetime.fromisoformat(person["start"].replace("Z", "+00:00")).timestamp()

    per_person: dict[str, Any] = {}
    totals = {"lines": 0, "supported": 0, "facts": 0, "found": 0, "questions": 0, "stale": 0, "stale_kept": 0}
    answered = {s: 0 for s in strategies}
    for person in people:
        own_text = " ".join(m for s in person["sessions"] for m in s["messages"])
        own_words = {_norm(t) for t in _TOKEN.findall(own_text)}
        years = set()
        for s in person["sessions"]:
            year = datetime.fromtimestamp(start_of(person) + s["day"] * 86_400).year
            years.update(range(year - 10, year + 2))
        names = {person["name"].lower(), bot_name.lower()}
        lines, compressive, parts = memory_lines(exports[person["id"]])
        bad = {line: unsupported_terms(line, own_words, names, years) for line in lines}
        unsupported = {line: terms for line, terms in bad.items() if terms}
        found = [fact_found(f, compressive) for f in person["facts"]]
        stale_text = " ".join(parts.values()).lower()
        stale_kept = [g for g in person.get("stale", []) if any(re.search(rf"\b{a.lower()}\b", stale_text) for a in g)]
        rates = {}
        for strategy in strategies:
            hits = [any(a.lower() in r.lower() for a in q["answers"])
                    for q, r in zip(person["questions"], answers[person["id"]][strategy], strict=True)]
            answered[strategy] += sum(hits)
            rates[strategy] = round(sum(hits) / len(hits), 3)
        per_person[person["id"]] = {
            "precision": round(1 - len(unsupported) / len(lines), 3) if lines else None,
            "memory_lines": len(lines),
            "unsupported_lines": [{"line": k, "terms": v} for k, v in unsupported.items()],
            "fact_recall": round(sum(found) / len(found), 3),
            "facts_missing": [f["words"] for f, ok in zip(person["facts"], found, strict=True) if not ok],
            "stale_kept": stale_kept,
            "answer_rate": rates,
            "answers": {q["q"]: {s: answers[person["id"]][s][i] for s in strategies}
                        for i, q in enumerate(person["questions"])},
            "compressive_memory": parts,
            "conversation": transcript[person["id"]],
        }
        totals["lines"] += len(lines)
        totals["supported"] += len(lines) - len(unsupported)
        totals["facts"] += len(found)
        totals["found"] += sum(found)
        totals["questions"] += len(person["questions"])
        totals["stale"] += len(person.get("stale", []))
        totals["stale_kept"] += len(stale_kept)

    overall = {
        "precision": round(totals["supported"] / totals["lines"], 3) if totals["lines"] else None,
        "memory_lines": totals["lines"],
        "fact_recall": round(totals["found"] / totals["facts"], 3),
        "answer_rate": {s: round(answered[s] / totals["questions"], 3) for s in strategies},
        "stale_kept": f"{totals['stale_kept']}/{totals['stale']}",
        "people": len(people),
        "questions": totals["questions"],
    }
    return {"benchmark": "personas", "overall": overall, "people": per_person}


def main() -> None:
    args = _args()
    if args.code:
        sys.path.insert(0, str(Path(args.code).resolve()))
    sys.path.insert(1 if args.code else 0, str(HERE.parent))
    from bench._common import emit, run_and_emit

    if args.rescore:
        earlier = json.loads(Path(args.rescore).read_text())
        earlier.update(score(earlier["raw"]))
        emit(earlier)
        return

    if args.code:  # the checkout under test comes first, whatever _common added
        sys.path.remove(str(Path(args.code).resolve()))
        sys.path.insert(0, str(Path(args.code).resolve()))
    run_and_emit(run, args)


if __name__ == "__main__":
    main()
