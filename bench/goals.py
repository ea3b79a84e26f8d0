"""Checks the contracts' performance goals (an in-house impl's speedup over a library, or its % of the roofline measured
in the run) against one commit's benchmark rows of one machine: met, not met (with every case that falls short), or
not measured. Two timings: "eager" (each call launched from Python, as `llmopt bench` times it) and "graph" (the
calls replayed from a CUDA graph, the kernels as a serving engine launches them, without the host's launch cost); a
case is compared on graph replays only where both rows have one, else it counts on eager latencies and says so."""
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


TIMINGS = ("graph", "eager")


def _baseline_row(technique: str, by_key: dict, row: dict, baseline: str, timing: str) -> dict | None:
    """The baseline's row for `row`'s case and mode: the named impl's, or for "best library" the fastest library or
    torch impl's (on graph replays, where a row has one, for the "graph" timing)."""
    if baseline != "best library":
        return by_key.get((row["case_id"], row["mode"], baseline))
    kinds = {name: impl.kind for name, impl in registry.discover(technique).items()}
    candidates = [r for (cid, m, impl), r in by_key.items()
                  if cid == row["case_id"] and m == row["mode"] and kinds.get(impl) in registry.LIBRARY_KINDS]
    fastest = (lambda r: _graph_ms(r) or r["latency_ms"]) if timing == "graph" else (lambda r: r["latency_ms"])
    return min(candidates, key=fastest) if candidates else None


def _graph_ms(row: dict) -> float | None:
    return row.get("latency_ms_graph")


def evaluate(contract, goal, rows: list[dict], label=lambda row: row["case_id"], timing: str = "eager") -> GoalResult:
    """`goal` of `contract` over `rows` (one machine, one commit, one row per impl x case x mode), on `timing`'s
    latencies (TIMINGS); with "graph", a case whose rows lack a graph replay counts on eager latencies, its label
    marked "(eager)"."""
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
    by_key = {(r["case_id"], r["mode"], r["impl"]): r for r in rows}
    figures = []
    for row in rows:
        if row["impl"] != goal.impl:
            continue
        case = contract.case_from_json(json.dumps(row["case"]))
        if not goal.applies(case, row["mode"]):
            continue
        base = None if goal.figure == "roofline_pct" else _baseline_row(contract.name, by_key, row, goal.baseline,
                                                                            timing)
        if goal.figure != "roofline_pct" and base is None:
            continue
        pair = [row] if base is None else [row, base]
        on_graph = timing == "graph" and all(_graph_ms(r) for r in pair)
        ours_ms = _graph_ms(row) if on_graph else row["latency_ms"]
        if goal.figure == "roofline_pct":
            figure = row["roofline_pct"] * row["latency_ms"] / ours_ms  # the roofline's time over the latency taken
        else:
            figure = (_graph_ms(base) if on_graph else base["latency_ms"]) / ours_ms
        note = " (eager)" if timing == "graph" and not on_graph else ""
        figures.append((label(row) + note, row["mode"], figure))
    return GoalResult(goal, figures, [f for f in figures if f[2] < goal.threshold])


def goal_lines(contract, rows: list[dict], label) -> list[str]:
    """The report's lines for `contract`'s goals over `rows`."""
    if not contract.goals:
        return []
    unit = {"speedup": "x", "roofline_pct": "%"}
    intro = ("Goals of the in-house impls (every covered case must reach the threshold), on CUDA-graph replays (the "
             "kernels without the host's launch cost; eager latencies where a row has no graph replay) and on eager "
             "calls:")
    lines = [intro, ""]
    for goal in contract.goals:
        for timing in TIMINGS:
            result = evaluate(contract, goal, rows, lambda row: label[row["case_id"]], timing)
            detail = ""
            if result.figures:
                worst = min(result.figures, key=lambda f: f[2])
                detail = (f" ({len(result.figures) - len(result.short)} of {len(result.figures)} cases reach it; worst "
                          f"{worst[2]:.2f}{unit[goal.figure]} at {worst[0]} {worst[1]})")
            lines.append(f"- {timing}: **{result.verdict}**: {goal.statement}{detail}")
            lines += [f"  - short: {case} {mode}: {figure:.2f}{unit[goal.figure]}"
                      for case, mode, figure in result.short]
    return lines + [""]
