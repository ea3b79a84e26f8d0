"""The regression gate: figures normalised within one run (an in-house kernel's speedup over each library impl on the
same case and mode at the same commit, and % of the roofline measured in that run), compared between a machine's
newest commit and the previous commit that measured the same figure. Raw latencies are never compared across runs.
Each figure comes from the eager latency and, where the rows have one, again from the CUDA-graph replay: a kernel's
regression shows in both, a slower host path (or a slower host) in the eager figures alone."""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from llmopt import impls as registry
from llmopt.bench.results import NOT_ROWS, read_rows


@dataclass(frozen=True)
class Move:
    """One figure at two commits; `key` is (technique, impl, figure, case_id, mode), bigger figures are better."""

    key: tuple[str, str, str, str, str]
    before: float
    after: float
    before_commit: str
    after_commit: str

    @property
    def change(self) -> float:
        return self.after / self.before - 1


def commits_by_time(rows: list[dict]) -> list[str]:
    """The commits of `rows`, oldest first, each dated by its newest row."""
    newest = defaultdict(str)
    for row in rows:
        newest[row["commit"]] = max(newest[row["commit"]], row["time"])
    return sorted(newest, key=newest.get)


_TIMINGS = {"": "latency_ms", ", graph replay": "latency_ms_graph"}  # figure-name suffix: the row's latency field


def figures(rows: list[dict]) -> dict[tuple, float]:
    """The normalised figures of one commit's rows, from each timing the rows have (eager; graph replay, named so):
    each impl's median roofline % per case and mode, and each in-house impl's speedup (median library latency / median
    in-house latency) over every library on that case."""
    latencies, rooflines = defaultdict(list), defaultdict(list)
    for row in rows:
        for suffix, field in _TIMINGS.items():
            if row.get(field):
                at = (row["technique"], row["impl"], row["case_id"], row["mode"], suffix)
                latencies[at].append(row[field])
                rooflines[at].append(row["roofline_pct"] * row["latency_ms"] / row[field])
    out = {(t, impl, "roofline %" + suffix, case, mode): statistics.median(values)
           for (t, impl, case, mode, suffix), values in rooflines.items()}
    kinds = {t: {name: impl.kind for name, impl in registry.discover(t).items()} for t, *_ in latencies}
    for (t, ours, case, mode, suffix), mine in latencies.items():
        if kinds[t].get(ours) != registry.IN_HOUSE_KIND:
            continue
        for (t2, lib, case2, mode2, suffix2), theirs in latencies.items():
            if (t2, case2, mode2, suffix2) == (t, case, mode, suffix) and kinds[t].get(lib) in registry.LIBRARY_KINDS:
                speedup = statistics.median(theirs) / statistics.median(mine)
                out[t, ours, f"speedup vs {lib}{suffix}", case, mode] = speedup
    return out


def compare(rows: list[dict]) -> tuple[str, list[Move]]:
    """(newest commit, its figures against the previous commit that has each of them). ValueError with fewer than
    two commits."""
    commits = commits_by_time(rows)
    if len(commits) < 2:
        raise ValueError(f"the gate needs results from two commits to compare, found {len(commits)}: "
                         f"{', '.join(commits) or 'none'}")
    by_commit = {commit: figures([r for r in rows if r["commit"] == commit]) for commit in commits}
    newest, moves = commits[-1], []
    for key, after in by_commit[newest].items():
        previous = next((c for c in reversed(commits[:-1]) if key in by_commit[c]), None)
        if previous is not None:
            moves.append(Move(key, by_commit[previous][key], after, previous, newest))
    return newest, moves


def machine_rows(root: Path, machine: str) -> list[dict]:
    """The benchmark rows of results/<machine>/; ValueError naming the machines there when it has none."""
    rows = read_rows(root, machine=machine)
    if not rows:
        known = sorted({path.parent.name for path in root.glob("*/*.jsonl") if path.name not in NOT_ROWS})
        raise ValueError(f"no benchmark rows for machine {machine!r} under {root}; "
                         f"machines with rows: {', '.join(known) or 'none'}")
    return rows


def gate(root: Path, machine: str, threshold: float = 0.10) -> int:
    """Print what moved by more than `threshold` between the newest commit of `machine` and its previous ones, then a
    verdict. 1 when a figure got worse by more than `threshold`, else 0; ValueError for a usage error."""
    newest, moves = compare(machine_rows(root, machine))
    moved = sorted((m for m in moves if abs(m.change) > threshold), key=lambda m: (m.change, m.key))
    regressed = [m for m in moved if m.change < 0]
    print(f"{machine}: newest commit {newest[:12]}, {len(moves)} figures compared with an earlier commit, "
          f"{len(moved)} moved by more than {threshold:.0%}")
    if moved:
        print(f"{'change':>8}  {'before':>8}  {'after':>8}  {'commits':<25}  technique / impl: figure, mode, case")
    for m in moved:
        technique, impl, figure, case, mode = m.key
        print(f"{m.change:>+8.1%}  {m.before:>8.3g}  {m.after:>8.3g}  "
              f"{m.before_commit[:10] + ' -> ' + m.after_commit[:10]:<25}  "
              f"{technique} / {impl}: {figure}, {mode}, {case}")
    if not moves:
        print(f"PASS: nothing to compare: no figure of commit {newest[:12]} was measured at an earlier commit")
    elif regressed:
        print(f"FAIL: {len(regressed)} of {len(moves)} figures regressed by more than {threshold:.0%}")
    else:
        print(f"PASS: no figure regressed by more than {threshold:.0%} ({len(moves)} compared)")
    return 1 if regressed else 0
