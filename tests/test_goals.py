"""Performance goals: a speedup goal compares the in-house impl with its baseline on the same case and mode of one run,
"best library" takes the fastest library or torch impl, a roofline goal reads the run's % of roofline, `applies`
chooses the cases, and no measured case means "not measured" (never "met"). Malformed goals are refused."""
from __future__ import annotations

import dataclasses

import pytest
from llmopt.bench.goals import evaluate
from llmopt.reference.attention import BENCH_CASES, CONTRACT
from llmopt.reference.contract import Goal

CASE, OTHER = BENCH_CASES[0], BENCH_CASES[1]


def _row(impl: str, case, latency_ms: float, mode: str = "fwd", roofline_pct: float = 50.0,
         graph_ms: float | None = None) -> dict:
    return {"impl": impl, "case": dataclasses.asdict(case), "case_id": CONTRACT.case_id(case), "mode": mode,
            "latency_ms": latency_ms, "roofline_pct": roofline_pct, "latency_ms_graph": graph_ms}


def _goal(**fields) -> Goal:
    base = {"id": "g", "statement": "s", "impl": "triton_flash", "figure": "speedup", "threshold": 1.0,
            "baseline": "sdpa_flash"}
    return Goal(**{**base, **fields})


def test_speedup_goal_compares_within_the_run():
    rows = [_row("triton_flash", CASE, 0.8), _row("sdpa_flash", CASE, 1.0),
            _row("triton_flash", OTHER, 1.25), _row("sdpa_flash", OTHER, 1.0)]
    result = evaluate(CONTRACT, _goal(), rows)
    assert result.verdict == "not met"
    assert [(case, round(figure, 3)) for case, _, figure in result.short] == [(CONTRACT.case_id(OTHER), 0.8)]
    only_first = evaluate(CONTRACT, _goal(applies=lambda case, mode: case == CASE), rows)
    assert only_first.verdict == "met" and len(only_first.figures) == 1


def test_best_library_is_the_fastest_library_or_torch_impl():
    rows = [_row("triton_flash", CASE, 1.0), _row("sdpa_flash", CASE, 1.2), _row("sdpa_cudnn", CASE, 0.5),
            _row("my_kernel", CASE, 0.1)]  # a user's kernel (no registered kind) is never the baseline
    result = evaluate(CONTRACT, _goal(baseline="best library", threshold=0.9), rows)
    assert result.figures[0][2] == pytest.approx(0.5) and result.verdict == "not met"


def test_roofline_goal_and_modes():
    rows = [_row("triton_flash", CASE, 1.0, "fwd", 80.0), _row("triton_flash", CASE, 1.0, "bwd", 40.0)]
    goal = _goal(figure="roofline_pct", baseline=None, threshold=60.0)
    assert evaluate(CONTRACT, goal, rows).verdict == "not met"
    assert evaluate(CONTRACT, dataclasses.replace(goal, applies=lambda case, mode: mode == "fwd"),
                    rows).verdict == "met"


def test_nothing_measured_is_not_met():
    assert evaluate(CONTRACT, _goal(), [_row("sdpa_flash", CASE, 1.0)]).verdict == "not measured"
    assert evaluate(CONTRACT, _goal(), [_row("triton_flash", CASE, 1.0)]).verdict == "not measured"  # no baseline row


def test_malformed_goals_are_refused():
    with pytest.raises(ValueError, match="figure"):
        _goal(figure="tflops")
    with pytest.raises(ValueError, match="baseline"):
        _goal(baseline=None)
    with pytest.raises(ValueError, match="baseline"):
        _goal(figure="roofline_pct")


def test_graph_timing_compares_graph_replays_only_where_both_rows_have_one():
    rows = [_row("triton_flash", CASE, 2.0, graph_ms=0.5), _row("sdpa_flash", CASE, 1.0, graph_ms=0.6),
            _row("triton_flash", OTHER, 2.0, graph_ms=0.5), _row("sdpa_flash", OTHER, 1.0)]  # OTHER: no library graph
    eager = evaluate(CONTRACT, _goal(), rows, timing="eager")
    graph = evaluate(CONTRACT, _goal(), rows, timing="graph")
    assert [round(f, 2) for _, _, f in eager.figures] == [0.5, 0.5]
    assert [(label, round(f, 2)) for label, _, f in graph.figures] == [
        (CONTRACT.case_id(CASE), 1.2), (CONTRACT.case_id(OTHER) + " (eager)", 0.5)]
    assert graph.verdict == "not met"
    with pytest.raises(ValueError, match="timing"):
        evaluate(CONTRACT, _goal(), rows, timing="wall")


def test_graph_timing_scales_the_roofline_and_picks_the_best_library_on_replays():
    goal = _goal(figure="roofline_pct", baseline=None, threshold=60.0)
    rows = [_row("triton_flash", CASE, 1.0, roofline_pct=40.0, graph_ms=0.5)]
    assert evaluate(CONTRACT, goal, rows, timing="eager").verdict == "not met"
    graph = evaluate(CONTRACT, goal, rows, timing="graph")
    assert graph.verdict == "met" and graph.figures[0][2] == pytest.approx(80.0)
    rows = [_row("triton_flash", CASE, 1.0, graph_ms=1.0), _row("sdpa_flash", CASE, 0.9, graph_ms=2.0),
            _row("sdpa_cudnn", CASE, 1.1, graph_ms=0.8)]
    best = _goal(baseline="best library")
    assert evaluate(CONTRACT, best, rows, timing="eager").figures[0][2] == pytest.approx(0.9)
    assert evaluate(CONTRACT, best, rows, timing="graph").figures[0][2] == pytest.approx(0.8)
