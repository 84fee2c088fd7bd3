"""All SQL lives in memory/ (the storage layer); the bot and the models never write any (issue #16).

A lint over the source, so a query added to an adapter or the dispatcher fails here rather than growing a
second path to the tables that the storage layer (and a second backend) would not know about.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SQL = re.compile(r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|VIEW|TRIGGER)"
                 r"|ALTER\s+TABLE|DROP\s+(TABLE|INDEX|VIEW|TRIGGER)|PRAGMA|BEGIN|WITH\s+\w+\s+AS)\b")
# Upper-case keywords, as every query here is written: "Select a model…" in a help text is not SQL.


def _strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_sql_outside_the_storage_layer() -> None:
    found = []
    for package in ("bot", "models"):
        for path in sorted((REPO / package).rglob("*.py")):
            for line, text in _strings(path):
                if SQL.match(text):
                    found.append(f"{path.relative_to(REPO)}:{line}: {text[:60]!r}")
    assert not found, "SQL outside memory/:\n" + "\n".join(found)


def test_the_lint_sees_sql() -> None:
    assert SQL.match("SELECT COUNT(*) FROM users") and SQL.match("  UPDATE jobs SET state = 'x'")
    assert not SQL.match("Select a model with `model.name`") and not SQL.match("delete everything about you")
