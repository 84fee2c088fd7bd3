"""Benchmark report for LoCoMo memory strategies: JSON, Markdown tables and PNG plots.

Why one module: every benchmark run must be summarised the same way so runs on different machines
or models can be compared side by side; the aggregate dict returned by :func:`write_report` is
also what tests and the CLI assert on.

Input records are one dict per (strategy, budget, question)::

    {"sample_id", "strategy", "budget", "category", "question", "answer",
     "prediction": str | None, "context": str (optional), "context_tokens": int,
     "has_answer": bool, "token_recall": float, "f1": float | None}

Categories 1-4 make up the headline numbers (context recall, token recall, F1). Category 5
(adversarial: the answer is not in the conversation) has no gold answer to find, so it is reported
apart as the share of predictions that abstain ("not mentioned" / "no information available",
LoCoMo's rule, :func:`memory.locomo.scoring.is_abstention`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from memory.locomo.dataset import CATEGORY_NAMES
from memory.locomo.scoring import is_abstention

__all__ = ["ANSWERABLE_CATEGORIES", "aggregate", "budget_key", "write_report"]

ANSWERABLE_CATEGORIES: tuple[int, ...] = (1, 2, 3, 4)
ADVERSARIAL_CATEGORY = 5
_PNG_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def budget_key(budget: Any) -> str:
    """JSON-safe key for a budget (ints stay readable: 2000 -> "2000")."""
    return str(budget)


def _budget_sort(budget: Any) -> tuple[int, float, str]:
    """Numeric budgets ascending first, then named ones (e.g. "full") alphabetically."""
    if isinstance(budget, bool):
        return (1, 0.0, str(budget))
    if isinstance(budget, (int, float)):
        return (0, float(budget), "")
    try:
        return (0, float(str(budget)), "")
    except ValueError:
        return (1, 0.0, str(budget))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ordered_unique(values: Iterable[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def _category_stats(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    f1s = [float(r["f1"]) for r in rows if r.get("f1") is not None]
    return {
        "n": len(rows),
        "recall": _mean([1.0 if r.get("has_answer") else 0.0 for r in rows]),
        "token_recall": _mean([float(r.get("token_recall") or 0.0) for r in rows]),
        "f1": _mean(f1s),
        "n_f1": len(f1s),
    }


def _adversarial_stats(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    answered = [r for r in rows if r.get("prediction") is not None]
    return {
        "n": len(rows),
        "n_predicted": len(answered),
        "adversarial_share": _mean([1.0 if is_abstention(r["prediction"]) else 0.0 for r in answered]),
    }


def _cell(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate one strategy x budget cell."""
    answerable = [r for r in rows if int(r["category"]) in ANSWERABLE_CATEGORIES]
    adversarial = [r for r in rows if int(r["category"]) == ADVERSARIAL_CATEGORY]
    overall = _category_stats(answerable)
    adv = _adversarial_stats(adversarial)
    # LoCoMo's evaluation_stats.py "overall accuracy" averages the per-question score over all five
    # categories (category 5 scoring 1/0 by abstention); kept for comparison with the paper.
    all_scores = [float(r["f1"]) for r in answerable if r.get("f1") is not None]
    all_scores += [
        1.0 if is_abstention(r["prediction"]) else 0.0 for r in adversarial if r.get("prediction") is not None
    ]
    by_category: dict[str, Any] = {}
    for cat in ANSWERABLE_CATEGORIES:
        cat_rows = [r for r in answerable if int(r["category"]) == cat]
        by_category[str(cat)] = {"name": CATEGORY_NAMES[cat], **_category_stats(cat_rows)}
    by_category[str(ADVERSARIAL_CATEGORY)] = {"name": CATEGORY_NAMES[ADVERSARIAL_CATEGORY], **adv}
    return {
        "n_questions": overall["n"],
        "recall": overall["recall"],
        "token_recall": overall["token_recall"],
        "f1": overall["f1"],
        "n_f1": overall["n_f1"],
        "f1_all_categories": _mean(all_scores),
        "context_tokens_mean": _mean([float(r.get("context_tokens") or 0) for r in rows]),
        "adversarial_n": adv["n"],
        "adversarial_share": adv["adversarial_share"],
        "by_category": by_category,
    }


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Summarise records per strategy and budget.

    Returns ``{"strategies": [...], "budgets": [...], "n_records": int, "cells": {strategy:
    {budget_key: cell}}}`` where a cell holds ``n_questions`` (categories 1-4), ``recall``
    (mean has-answer), ``token_recall``, ``f1`` (mean over records with an F1), ``n_f1``,
    ``f1_all_categories`` (LoCoMo-style overall incl. category 5), ``context_tokens_mean`` (all
    records), ``adversarial_n``, ``adversarial_share`` and ``by_category`` ("1".."5"). Means over
    no records are None, so "not measured" is never confused with 0.
    """
    rows = list(records)
    strategies = _ordered_unique(str(r["strategy"]) for r in rows)
    budgets = sorted(_ordered_unique(r["budget"] for r in rows), key=_budget_sort)
    cells: dict[str, dict[str, Any]] = {}
    for strategy in strategies:
        cells[strategy] = {}
        for budget in budgets:
            cell_rows = [r for r in rows if str(r["strategy"]) == strategy and r["budget"] == budget]
            if cell_rows:
                cells[strategy][budget_key(budget)] = _cell(cell_rows)
    return {
        "strategies": strategies,
        "budgets": [budget_key(b) for b in budgets],
        "n_records": len(rows),
        "cells": cells,
    }


# ----------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _meta_header(meta: Mapping[str, Any]) -> list[str]:
    lines = ["# LoCoMo memory benchmark", ""]
    for key in ("machine", "model", "date", "command"):
        value = meta.get(key)
        lines.append(f"- **{key}**: `{value}`" if key == "command" else f"- **{key}**: {value}")
    for key, value in meta.items():
        if key not in ("machine", "model", "date", "command"):
            lines.append(
                f"- **{key}**: {value if not isinstance(value, (dict, list)) else json.dumps(value)}"
            )
    return lines


def _markdown(
    agg: Mapping[str, Any],
    cost: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
    context_included: bool,
) -> str:
    lines = _meta_header(meta)
    lines += [
        "",
        "Recall = share of category 1-4 questions whose gold answer occurs as a token run in the",
        "context (LoCoMo/DPR `has_answer`); token recall = share of gold stemmed tokens found in the",
        "context; F1 = LoCoMo's stemmed token F1 with its category rules; adversarial share = share",
        'of category-5 predictions that abstain ("not mentioned" / "no information available");',
        "F1 all = LoCoMo-style overall over all five categories.",
        f"Contexts stored in report.json: {'yes' if context_included else 'no'}.",
        "",
        "## Overall (recall, token recall, F1 over categories 1-4)",
        "",
    ]
    rows = []
    for strategy in agg["strategies"]:
        for budget, cell in agg["cells"][strategy].items():
            rows.append(
                [
                    strategy,
                    budget,
                    str(cell["n_questions"]),
                    _fmt(cell["recall"]),
                    _fmt(cell["token_recall"]),
                    _fmt(cell["f1"]),
                    _fmt(cell["f1_all_categories"]),
                    _fmt(cell["adversarial_share"]),
                    _fmt(cell["context_tokens_mean"], 1),
                ]
            )
    lines += _table(
        [
            "strategy",
            "budget",
            "n",
            "recall",
            "token recall",
            "F1",
            "F1 all",
            "adversarial share",
            "context tokens (mean)",
        ],
        rows,
    )
    cat_header = [f"{c} {CATEGORY_NAMES[c]}" for c in ANSWERABLE_CATEGORIES]
    for metric, title in (("recall", "Recall"), ("f1", "F1")):
        for budget in agg["budgets"]:
            present = [s for s in agg["strategies"] if budget in agg["cells"][s]]
            if metric == "f1" and not any(agg["cells"][s][budget]["n_f1"] for s in present):
                continue
            lines += ["", f"## {title} by category (budget {budget})", ""]
            body = []
            for strategy in present:
                by_cat = agg["cells"][strategy][budget]["by_category"]
                body.append(
                    [strategy]
                    + [
                        f"{_fmt(by_cat[str(c)][metric])} (n={by_cat[str(c)]['n' if metric == 'recall' else 'n_f1']})"
                        for c in ANSWERABLE_CATEGORIES
                    ]
                    + [f"{_fmt(by_cat['5']['adversarial_share'])} "
                       f"(n={by_cat['5']['n' if metric == 'recall' else 'n_predicted']})"]
                )
            lines += _table(["strategy", *cat_header, "5 adversarial share"], body)
    lines += ["", "## Memory-building cost", ""]
    cost_rows = [
        [s, _fmt(c.get("model_calls")), _fmt(c.get("generated_tokens")), _fmt(c.get("wall_seconds"), 1)]
        for s, c in cost.items()
    ]
    lines += _table(["strategy", "model calls", "generated tokens", "wall seconds"], cost_rows)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Any:
    """A figure bound to the Agg canvas directly, so no pyplot/global backend state is touched
    (safe in tests, threads and headless CI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _plot_recall_by_category(path: Path, agg: Mapping[str, Any], budget: str) -> None:
    strategies = [s for s in agg["strategies"] if budget in agg["cells"][s]]
    fig = _new_figure(8, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    n = max(len(strategies), 1)
    width = 0.8 / n
    xs = list(range(len(ANSWERABLE_CATEGORIES)))
    for i, strategy in enumerate(strategies):
        by_cat = agg["cells"][strategy][budget]["by_category"]
        heights = [_nan(by_cat[str(c)]["recall"]) for c in ANSWERABLE_CATEGORIES]
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], heights, width, label=strategy)
    ax.set_xticks(xs, [f"{c} {CATEGORY_NAMES[c]}" for c in ANSWERABLE_CATEGORIES])
    ax.set_ylim(0, 1)
    ax.set_ylabel("context recall (has-answer)")
    ax.set_title(f"Recall by category, budget {budget}")
    if strategies:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def _plot_recall_vs_budget(path: Path, agg: Mapping[str, Any]) -> None:
    budgets: list[str] = agg["budgets"]
    numeric = all(_budget_sort(b)[0] == 0 for b in budgets) and bool(budgets)
    xs = [float(b) for b in budgets] if numeric else list(range(len(budgets)))
    fig = _new_figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for strategy in agg["strategies"]:
        pts = [
            (x, agg["cells"][strategy][b]["recall"])
            for x, b in zip(xs, budgets, strict=True)
            if b in agg["cells"][strategy]
        ]
        if pts:
            ax.plot([p[0] for p in pts], [_nan(p[1]) for p in pts], marker="o", label=strategy)
    if numeric and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, budgets)
    ax.set_xlabel("context budget")
    ax.set_ylabel("context recall (has-answer, cat. 1-4)")
    ax.set_ylim(0, 1)
    ax.set_title("Recall vs budget")
    if agg["strategies"]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def _plot_memory_cost(path: Path, cost: Mapping[str, Mapping[str, Any]]) -> None:
    strategies = list(cost)
    fig = _new_figure(10, 4.5)
    for i, (key, label) in enumerate((("wall_seconds", "wall seconds"), ("model_calls", "model calls"))):
        ax = fig.add_subplot(1, 2, i + 1)
        values = [float(cost[s].get(key) or 0) for s in strategies]
        ax.bar(range(len(strategies)), values, color="C0" if i == 0 else "C1")
        ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
        ax.set_title(f"Memory building: {label}")
        if not strategies:
            ax.text(0.5, 0.5, "no cost data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)


# ----------------------------------------------------------------------------- entry point


def _default_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the header fields a reader needs to judge comparability, when the caller left them out."""
    out = dict(meta)
    out.setdefault("machine", f"{platform.node()} ({platform.platform()})")
    out.setdefault("model", "unknown")
    out.setdefault("date", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    out.setdefault("command", "unknown")
    return out


def write_report(
    out_dir: str | Path,
    records: Iterable[Mapping[str, Any]],
    cost: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
    include_context: bool = False,
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out_dir``; return the aggregate.

    Contexts are dropped from ``report.json`` unless ``include_context`` (they dominate the file
    size); ``"context_included"`` in the JSON records which it was. Plots:
    ``recall_by_category_<budget>.png`` per budget, ``recall_vs_budget.png``, ``memory_cost.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in records]
    agg = aggregate(rows)
    full_meta = _default_meta(meta)
    stored = rows if include_context else [{k: v for k, v in r.items() if k != "context"} for r in rows]
    payload = {
        "meta": full_meta,
        "cost": {s: dict(c) for s, c in cost.items()},
        "aggregate": agg,
        "context_included": include_context,
        "records": stored,
    }
    (out / "report.json").write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(agg, cost, full_meta, include_context), encoding="utf-8")
    for budget in agg["budgets"]:
        _plot_recall_by_category(out / f"recall_by_category_{_PNG_SAFE.sub('_', budget)}.png", agg, budget)
    _plot_recall_vs_budget(out / "recall_vs_budget.png", agg)
    _plot_memory_cost(out / "memory_cost.png", cost)
    return agg
