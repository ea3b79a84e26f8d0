"""Checks the contracts' performance goals (an in-house impl's speedup over a library, or its % of the roofline measured
in the run) against one commit's benchmark rows of one machine: met, not met (with every case that falls short), or
not measured."""
from __future__ import annotations

import json
from dataclasses import dataclass

from llmopt import impls as registry


@dataclass(frozen=True)
class GoalResult:
    """`figures`: (case label, mode, figure) of every covered case measured; `short`: those below the threshold."""

    goal: object
    figures: list[tuple[str, str, float]]
    short: list[tuple[str, str, float]]

    @property
    def verdict(self) -> str:
        if not self.figures:
            return "not measured"
        return "met" if not self.short else "not met"


def _best_library(technique: str, latency: dict, case_id: str, mode: str) -> float | None:
    kinds = {name: impl.kind for name, impl in registry.discover(technique).items()}
    times = [ms for (cid, m, impl), ms in latency.items()
             if cid == case_id and m == mode and kinds.get(impl) in registry.LIBRARY_KINDS]
    return min(times) if times else None


def evaluate(contract, goal, rows: list[dict], label=lambda row: row["case_id"]) -> GoalResult:
    """`goal` of `contract` over `rows` (one machine, one commit, one row per impl x case x mode)."""
    latency = {(r["case_id"], r["mode"], r["impl"]): r["latency_ms"] for r in rows}
    figures = []
    for row in rows:
        if row["impl"] != goal.impl:
            continue
        case = contract.case_from_json(json.dumps(row["case"]))
        if not goal.applies(case, row["mode"]):
            continue
        if goal.figure == "roofline_pct":
            figure = row["roofline_pct"]
        else:
            base = (_best_library(contract.name, latency, row["case_id"], row["mode"]) if goal.baseline == "best library"
                    else latency.get((row["case_id"], row["mode"], goal.baseline)))
            if base is None:
                continue
            figure = base / row["latency_ms"]
        figures.append((label(row), row["mode"], figure))
    return GoalResult(goal, figures, [f for f in figures if f[2] < goal.threshold])


def goal_lines(contract, rows: list[dict], label) -> list[str]:
    """The report's lines for `contract`'s goals over `rows`."""
    if not contract.goals:
        return []
    unit = {"speedup": "x", "roofline_pct": "%"}
    lines = ["Goals of the in-house impls (every covered case must reach the threshold):", ""]
    for goal in contract.goals:
        result = evaluate(contract, goal, rows, lambda row: label[row["case_id"]])
        detail = ""
        if result.figures:
            worst = min(result.figures, key=lambda f: f[2])
            detail = (f" ({len(result.figures) - len(result.short)} of {len(result.figures)} cases reach it; worst "
                      f"{worst[2]:.2f}{unit[goal.figure]} at {worst[0]} {worst[1]})")
        lines.append(f"- **{result.verdict}**: {goal.statement}{detail}")
        lines += [f"  - short: {case} {mode}: {figure:.2f}{unit[goal.figure]}" for case, mode, figure in result.short]
    return lines + [""]
