"""Renders a results folder into REPORT.md: the verification matrix (technique x impl, the latest status per machine),
then per technique and machine a benchmark table of each case's newest run (latency, TFLOP/s, GB/s, % of roofline,
peak memory, margin; the commit per row where runs differ), speedups over a baseline impl within each run (eager, and
from CUDA-graph replays where measured), the contract's performance goals checked, and PNG plots under plots/:
TFLOP/s against the sequence length for compute-bound attention, % of the measured roofline per case for the
memory-bound rest."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from llmopt.bench.goals import goal_lines
from llmopt.bench.results import read_rows, read_skipped, read_verify_rows
from llmopt.reference import get_contract

# Compute-bound techniques whose cases have a sequence length: TFLOP/s plotted against it. Every other technique (the
# memory-bound ones: paged decode, NF4 GEMV, samplers...) gets bars of % of the roofline measured in the run.
SEQUENCE_LENGTH = {"attention": "N"}
LENGTH_FIELDS = ("N", "M")  # the length fields, left out of what groups cases into panels
BATCH_FIELDS = ("B", "seed")  # bench cases scale the batch with the length: lines join cases differing only in these


def _number(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], body: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in body] + [""])


def _varying_keys(cases: list[dict]) -> list[str]:
    return [k for k in cases[0] if len({repr(c.get(k)) for c in cases}) > 1]


def _labels(cases: list[dict]) -> list[str]:
    """A short label per case: only the fields whose values differ among `cases` (all of them when none differ)."""
    keys = _varying_keys(cases) or list(cases[0])
    return [",".join(f"{k}={c.get(k)}" for k in keys) or "all" for c in cases]


def _latest(rows: list[dict], key) -> list[dict]:
    """The latest row (by time) of each key(row), in order of first appearance."""
    latest = {}
    for row in rows:
        k = key(row)
        if k not in latest or row["time"] >= latest[k]["time"]:
            latest[k] = row
    return list(latest.values())


# ------------------------------------------------------------------------------------------------------ verification


def _failed_properties(row: dict) -> list[str]:
    return [name for name, p in row["properties"].items() if p["status"] == "fail"]


def _verify_cell(row: dict) -> str:
    if row["status"] in ("verified", "failing"):
        failed = _failed_properties(row)
        margins = [p["max_margin"] for p in row["properties"].values() if p.get("max_margin") is not None]
        detail = f"fails {', '.join(failed)}" if failed else f"max margin {max(margins):.2f}" if margins else ""
        mode = row.get("mode") or row["device"]
        return f"**{row['status']}** ({mode} at `{str(row['commit'])[:7]}`{'; ' + detail if detail else ''})"
    return f"{row['status']}: {row['reason']}"


def _verify_section(rows: list[dict]) -> list[str]:
    lines = ["## Verification", ""]
    if not rows:
        return lines + ["No verification outcomes recorded.", ""]
    latest = {(r["technique"], r["impl"], r["machine"]): r
              for r in _latest(rows, lambda r: (r["technique"], r["impl"], r["machine"]))}
    machines = sorted({machine for _, _, machine in latest})
    body = [[technique, impl] + [_verify_cell(latest[technique, impl, m]) if (technique, impl, m) in latest else "-"
                                 for m in machines]
            for technique, impl in sorted({(technique, impl) for technique, impl, _ in latest})]
    commits = {m: sorted({str(r["commit"]) for (_, _, rm), r in latest.items() if rm == m}) for m in machines}
    caption = "; ".join(f"{m}: {', '.join(c)}" for m, c in commits.items())
    table = _table(["technique", "impl"] + machines, body)
    return lines + table + [f"*Latest outcome per machine; commits: {caption}.*", ""]


# ------------------------------------------------------------------------------------------------------ benchmarks


def _caption(row: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(row["versions"].items()))
    return (f"*{row['machine']} ({row['gpu'] or 'CPU'}), commit `{row['commit']}`, {versions}; peaks measured in the "
            f"run: copy {_number(row['peaks']['copy_gbps'])} GB/s, matmul {_number(row['peaks']['matmul_tflops'])} "
            f"TFLOP/s.*")


def _margin_text(margin) -> str:
    return "-" if margin is None else margin if isinstance(margin, str) else f"{margin:.2f}"


def _newest_runs(rows: list[dict]) -> list[dict]:
    """Each case's rows from the newest run (commit) that measured it, the latest row per impl and mode there: a run
    of a few cases leaves the others' figures from the run before, and every row beside its baseline's of one run."""
    newest = {}
    for row in sorted(rows, key=lambda r: r["time"]):
        newest[row["case_id"]] = row["commit"]
    impls, cases = (list(dict.fromkeys(r[key] for r in rows)) for key in ("impl", "case_id"))
    kept = _latest([r for r in rows if r["commit"] == newest[r["case_id"]]],
                   lambda r: (r["impl"], r["case_id"], r["mode"]))
    return sorted(kept, key=lambda r: (impls.index(r["impl"]), cases.index(r["case_id"])))


def _commit_cell(row: dict) -> list[str]:
    return [f"`{str(row['commit'])[:7]}`"]


def _bench_table(rows: list[dict], label: dict[str, str], by_commit: bool) -> list[str]:
    body = [[label[r["case_id"]], *(_commit_cell(r) if by_commit else []), r["mode"], r["impl"],
             f"{_number(r['latency_ms'])} ({_number(r['latency_ms_p20'])}-{_number(r['latency_ms_p80'])})",
             "-" if r.get("latency_ms_graph") is None else _number(r["latency_ms_graph"]),
             _number(r["tflops"]), _number(r["gbps"]), _number(r["roofline_pct"]),
             "-" if r["peak_mem_mb"] is None else _number(r["peak_mem_mb"]), _margin_text(r["margin"])]
            for r in rows]
    return _table(["case", *(["commit"] if by_commit else []), "mode", "impl", "ms median (p20-p80)", "CUDA graph ms",
                   "TFLOP/s", "GB/s", "% roofline", "peak MB", "margin"], body)


def _speedup_table(technique: str, rows: list[dict], label: dict[str, str], by_commit: bool,
                   latency_key: str = "latency_ms") -> tuple[str, list[str]]:
    """Speedups over the baseline impl from `latency_key`, each case within its run (rows of _newest_runs: one commit
    a case); cases without that latency left out."""
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    named = get_contract(technique).baseline_impl
    baseline = named if named in impls else impls[0]
    latency = {(r["case_id"], r["mode"], r["impl"]): r[latency_key] for r in rows if r.get(latency_key)}
    body = []
    for row in {(r["case_id"], r["mode"]): r for r in rows if r.get(latency_key)}.values():
        case_id, mode = row["case_id"], row["mode"]
        base = latency.get((case_id, mode, baseline))
        speedups = [f"{base / latency[case_id, mode, impl]:.2f}x" if base and (case_id, mode, impl) in latency else "-"
                    for impl in impls]
        body.append([label[case_id], *(_commit_cell(row) if by_commit else []), mode] + speedups)
    return baseline, _table(["case", *(["commit"] if by_commit else []), "mode"] + impls, body)


def _fixed_fields(case: dict) -> dict:
    return {k: v for k, v in case.items() if k not in LENGTH_FIELDS + BATCH_FIELDS}


def _plot(technique: str, rows: list[dict], title: str, path: Path) -> None:
    """TFLOP/s against the technique's SEQUENCE_LENGTH field, one panel per group of cases that differ only in length
    and batch, one line per impl; otherwise bars of % roofline per case and impl."""
    from matplotlib.figure import Figure  # renders PNG with Agg; no pyplot, no global backend

    length = SEQUENCE_LENGTH.get(technique)
    groups = defaultdict(list)
    for row in rows:
        groups[repr(_fixed_fields(row["case"])) if length else title].append(row)
    panels = list(groups.values())
    titles = _labels([_fixed_fields(p[0]["case"]) for p in panels]) if length and len(panels) > 1 else [title]
    columns = min(3, len(panels))
    bars = 0 if length else len({r["case_id"] for r in rows})  # bar charts widen with their cases
    figure = Figure(figsize=(max(5.5 * columns, 0.7 * bars), 4 * -(-len(panels) // columns) + (1.5 if bars else 0)),
                    layout="constrained")
    for index, (panel, panel_title) in enumerate(zip(panels, titles, strict=True)):
        axes = figure.add_subplot(-(-len(panels) // columns), columns, index + 1)
        impls = list(dict.fromkeys(r["impl"] for r in panel))
        if length:
            for impl in impls:
                points = sorted((r["case"][length], r["tflops"]) for r in panel if r["impl"] == impl)
                axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=impl)
            axes.set(xlabel=length, ylabel="TFLOP/s", title=panel_title)
            axes.set_xscale("log", base=2)
        else:
            cases = list(dict.fromkeys(r["case_id"] for r in panel))
            pct = {(r["case_id"], r["impl"]): r["roofline_pct"] for r in panel}
            width = 0.8 / len(impls)
            for offset, impl in enumerate(impls):
                axes.bar([i + offset * width for i in range(len(cases))],
                         [pct.get((case, impl), 0.0) for case in cases], width, label=impl)
            labels = _labels([next(r["case"] for r in panel if r["case_id"] == case) for case in cases])
            axes.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], labels, rotation=30, ha="right",
                            fontsize=7)
            axes.set(ylabel="% of roofline", title=panel_title)
        axes.legend(fontsize=7, **({} if length else {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}))
        axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _skipped_lines(notes: list[dict], rows: list[dict], label: dict[str, str]) -> list[str]:
    """What the runs shown did not measure, and why: one line per distinct skip note (the impl, case and mode it
    names), leaving out notes about something a run shown measured."""
    def measured(note: dict) -> bool:
        return any(all(note[key] in (None, row[key]) for key in ("impl", "case_id", "mode")) for row in rows)

    notes = list({tuple(n[key] for key in ("impl", "case_id", "mode", "reason")): n for n in notes
                  if not measured(n)}.values())
    if not notes:
        return []
    lines = ["Not measured in these runs:", ""]
    for note in notes:
        what = [note["impl"] or "every impl", label.get(note["case_id"], note["case_id"]) or "every case",
                note["mode"] or "every mode"]
        lines.append(f"- {', '.join(what)}: {note['reason']}")
    return lines + [""]


def _failing_lines(verify_rows: list[dict], commit: str) -> list[str]:
    """A warning for each impl whose latest verification at `commit` failed: its figures there are of a kernel that
    does not hold the contract."""
    failing = [r for r in _latest([r for r in verify_rows if r["commit"] == commit], lambda r: r["impl"])
               if r["status"] == "failing"]
    warnings = [f"**{r['impl']} failed verification at commit `{str(commit)[:7]}`** (fails "
                f"{', '.join(_failed_properties(r))}): its figures below from that commit are of a kernel that does "
                "not hold the contract." for r in failing]
    return [line for warning in warnings for line in (warning, "")]


def _bench_section(technique: str, machine: str, rows: list[dict], skipped: list[dict], verify_rows: list[dict],
                   root: Path) -> list[str]:
    """Each case's newest run of one technique on one machine (_newest_runs), those runs' skip notes and a warning for
    each impl that failed verification at one of their commits: tables and plots."""
    rows = _newest_runs(rows)
    runs = {r["commit"]: r for r in sorted(rows, key=lambda r: r["time"], reverse=True)}  # newest run first
    by_commit = len(runs) > 1
    cases = {r["case_id"]: r["case"] for r in rows}
    label = dict(zip(cases, _labels(list(cases.values())), strict=True))
    varying = _varying_keys(list(cases.values()))
    shared = ", ".join(f"{k}={v}" for k, v in next(iter(cases.values())).items() if k not in varying)
    captions = [line for run in runs.values() for line in (_caption(run), "")]
    if by_commit:
        captions = [f"Each case from the newest run that measured it ({len(runs)} runs, newest first):", ""] + captions
    lines = [f"## {technique} on {machine}", "", *(w for c in runs for w in _failing_lines(verify_rows, c)),
             f"Cases show the fields that differ; all have {shared}.", "", *captions]
    lines += _bench_table(rows, label, by_commit)
    baseline, speedups = _speedup_table(technique, rows, label, by_commit)
    lines += [f"Speedup over {baseline} (its latency / the impl's, both from one run; > 1 is faster):", ""]
    lines += speedups
    if any(r.get("latency_ms_graph") for r in rows):
        _, replayed = _speedup_table(technique, rows, label, by_commit, "latency_ms_graph")
        lines += ["The same from CUDA-graph replays (the kernels without the host's launch cost):", "", *replayed]
    lines += _skipped_lines([n for n in skipped if n["commit"] in runs], rows, label)
    lines += goal_lines(get_contract(technique), rows, label)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        path = root / "plots" / f"{technique}-{machine}-{mode}.png"
        _plot(technique, [r for r in rows if r["mode"] == mode], f"{technique} {mode} on {machine}", path)
        lines += [f"![{technique} {mode} on {machine}](plots/{path.name})", ""]
    return lines


def write_report(root: str | Path) -> Path:
    """Write root/REPORT.md (and root/plots/*.png) from root/<machine>/*.jsonl; returns the report's path."""
    root = Path(root)
    by_section = defaultdict(list)
    for row in read_rows(root):
        by_section[row["technique"], row["machine"]].append(row)
    lines = ["# llmopt report", "", ("Generated by `llmopt report` from the rows under this folder; do not edit by "
             "hand. Latency in ms (median, p20-p80 of the repetitions; CUDA graph: the forward replayed from a graph, "
             "without the host's launch cost); TFLOP/s and GB/s from the contract's cost; "
             "% roofline: the time the measured peaks allow over the latency; margin: the timed output's error over "
             "what the contract allows (<= 1 passes; - where not computed)."), ""]
    verify_rows = read_verify_rows(root)
    lines += _verify_section(verify_rows)
    skipped, verified = defaultdict(list), defaultdict(list)
    for note in read_skipped(root):
        skipped[note["technique"], note["machine"]].append(note)
    for row in verify_rows:
        verified[row["technique"], row["machine"]].append(row)
    for (technique, machine), rows in sorted(by_section.items()):
        lines += _bench_section(technique, machine, rows, skipped[technique, machine], verified[technique, machine],
                                root)
    path = root / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
