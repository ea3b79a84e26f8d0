"""The `llmopt` command: list techniques and impls, verify impls against their contracts (hypothesis), benchmark
them, run both for everything available on this machine, and turn results/ into a report and a claims ledger.
Exit codes: 0 all good, 1 a property failed, 2 usage error (unknown technique or impl, a file that does not load)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
USAGE_ERROR, FAILED = 2, 1


class UsageError(Exception):
    pass


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _contract(technique: str):
    from llmopt.reference import get_contract

    try:
        return get_contract(technique)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _selected_impls(technique: str, names: list[str] | None, device: str, exclude=()):
    """(runnable impls, [(name, reason)] unavailable ones): the named ones, which must all be runnable (else
    UsageError), or every registered impl not in `exclude`."""
    from llmopt import impls as registry

    if names:
        try:
            return [registry.load_user_impl(technique, n) if ":" in n else registry.get(technique, n, device)
                    for n in names], []
        except registry.ImplError as error:
            raise UsageError(str(error)) from None
    runnable, unavailable = [], []
    for name, impl in sorted(registry.discover(technique).items()):
        if name in (exclude or ()):
            continue
        reason = impl.unavailable_reason(device)
        (unavailable.append((name, reason)) if reason else runnable.append(impl))
    return runnable, unavailable


# ----------------------------------------------------------------------------------------------------------- list


def cmd_list(args) -> int:
    from llmopt import impls as registry
    from llmopt.reference import contracts

    device = args.device or _default_device()
    table = Table(title=f"techniques and impls on {device}")
    for column in ("technique", "impl", "kind", "devices", "status", "does not support"):
        table.add_column(column)
    for technique in sorted(contracts()):
        for name, impl in sorted(registry.discover(technique).items()):
            reason = impl.unavailable_reason(device)
            mode = impl.runs_on(device)
            status = f"[red]unavailable: {reason}[/]" if reason else f"[green]available ({mode})[/]"
            unsupported = [k for k, v in impl.supports.items() if v is False]
            if "dtypes" in impl.supports:
                unsupported.append("dtypes other than " + "/".join(impl.supports["dtypes"]))
            if "check" in impl.supports:
                unsupported.append("some sizes (see its check)")
            table.add_row(technique, name, impl.kind, "/".join(impl.devices), status, ", ".join(unsupported) or "-")
    console.print(table)
    return 0


# ----------------------------------------------------------------------------------------------------------- verify


def _print_property(result) -> None:
    margin = "" if result.max_margin is None else f" max margin {result.max_margin:.3g}"
    margin += f", {result.unsupported} declined by the library" if result.unsupported else ""
    margin += "".join(f"; {key}: {value}" for key, value in result.counts.items())
    color = {"pass": "green", "fail": "red", "n/a": "yellow", "not run": "yellow"}[result.status]
    console.print(f"  [{color}]{result.status:>4}[/] {result.name}: {result.examples} cases{margin} "
                  f"({result.seconds:.1f} s)")
    if result.status == "not run":
        console.print(f"       {result.message}", markup=False)
    if result.status == "fail":
        label = "case that left the device unusable" if result.device_lost else "minimal failing case"
        console.print(f"       {label}: {result.case}")
        console.print(f"       {result.message}", markup=False)
        console.print(f"       replay: {result.replay}", markup=False)


def _record_verify(outcome, device: str, out) -> None:
    from llmopt.bench import machine, results

    info = machine.describe(device)
    row = {"technique": outcome.technique, "impl": outcome.impl, "device": device, "mode": outcome.mode,
           "machine": info["machine"], "status": outcome.status, "reason": "",
           "properties": {p.name: {"status": p.status, "examples": p.examples, "max_margin": p.max_margin,
                                   "unsupported": p.unsupported, "counts": p.counts, "message": p.message}
                          for p in outcome.properties},
           "commit": info["commit"], "time": results.utc_now()}
    results.append_rows(results.results_dir(device, out) / results.VERIFY_FILE, [row])


def _record_unavailable(technique: str, name: str, reason: str, device: str, out) -> None:
    from llmopt.bench import machine, results

    info = machine.describe(device)
    row = {"technique": technique, "impl": name, "device": device, "mode": None, "machine": info["machine"],
           "status": "unavailable", "reason": reason, "properties": {}, "commit": info["commit"],
           "time": results.utc_now()}
    results.append_rows(results.results_dir(device, out) / results.VERIFY_FILE, [row])


def _isolated(impls, command: list[str], extra: list[str]) -> dict[str, int] | None:
    """On CUDA with several impls, run `llmopt COMMAND --impl NAME EXTRA` per impl in its own process: a kernel that
    faults leaves a sticky CUDA error that would fail every impl after it. The exit code of each impl's process; None
    when not isolating (one impl, or not CUDA)."""
    import os
    import subprocess

    if len(impls) < 2 or "--device" not in extra or extra[extra.index("--device") + 1] != "cuda":
        return None
    from llmopt.bench.machine import PEAKS_ENV, measure_peaks

    env = dict(os.environ)
    if command[0] == "bench" and PEAKS_ENV not in env:
        env[PEAKS_ENV] = json.dumps(measure_peaks("cuda"))
    codes = {}
    for impl in impls:
        argv = [sys.executable, "-m", "llmopt.bench.cli", *command, "--impl", impl.name, *extra]
        codes[impl.name] = subprocess.run(argv, check=False, env=env).returncode
        if _crashed(codes[impl.name]):
            console.print(f"[red]{impl.name}: its process ended with code {codes[impl.name]} (crash or fault)[/]")
    return codes


def _crashed(code: int) -> bool:
    """An exit code that is neither success nor a reported failure: the process crashed or faulted."""
    return code not in (0, FAILED)


def _flags(**values) -> list[str]:
    return [item for key, value in values.items() if value is not None
            for item in (f"--{key.replace('_', '-')}", str(value))]


def verify_technique(technique: str, names, device: str, *, max_examples=None, seed=None, replay=None,
                     only=None, record_to=None, record=False, exclude=()) -> bool:
    from llmopt.bench.verify import verify

    contract = _contract(technique)
    try:
        case = contract.case_from_json(replay) if replay else None
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    impls, unavailable = _selected_impls(technique, names, device, exclude)
    for name, reason in unavailable:
        console.print(f"[yellow]skip[/] {technique}/{name}: unavailable on {device}: {reason}", markup=True)
        if record:
            _record_unavailable(technique, name, reason, device, record_to)
    extra = _flags(device=device, max_examples=max_examples, seed=seed, replay=replay,
                   out=record_to if record else None) + [a for p in only or [] for a in ("--property", p)]
    isolated = _isolated(impls, ["verify", technique], extra)
    if isolated is not None:
        return all(code == 0 for code in isolated.values())
    ok = True
    for impl in impls:
        console.print(f"[bold]{technique}[/] / [bold]{impl.name}[/] on {device} ({impl.runs_on(device)})")
        outcome = verify(contract, impl, device, impl_spec=impl.name, max_examples=max_examples, seed=seed,
                         replay=case, only=only, on_property=_print_property)
        ok &= outcome.ok
        if record:
            _record_verify(outcome, device, record_to)
    return ok


def cmd_verify(args) -> int:
    device = args.device or _default_device()
    ok = verify_technique(args.technique, args.impl, device, max_examples=args.max_examples, seed=args.seed,
                          replay=args.replay, only=args.property, record_to=args.out, record=args.out is not None,
                          exclude=args.exclude)
    return 0 if ok else FAILED


# ----------------------------------------------------------------------------------------------------------- bench


def bench_technique(technique: str, names, device: str, *, quick: bool, out, cases=None, progress=None,
                    exclude=()) -> list[dict]:
    from llmopt.bench import results
    from llmopt.bench.bench import describe_skip, record_skips, run_bench, skip_note

    contract = _contract(technique)
    impls, unavailable = _selected_impls(technique, names, device, exclude)
    for name, reason in unavailable:
        console.print(f"[yellow]skip[/] {technique}/{name}: unavailable on {device}: {reason}")
    skipped = [(name, f"unavailable on {device}: {reason}") for name, reason in unavailable]
    started = results.utc_now()
    isolated = _isolated(impls, ["bench", technique],
                         _flags(device=device, out=out, cases=cases) + (["--quick"] if quick else []))
    if isolated is not None:  # what a crashed process did not measure has no skip note of its own
        skipped += [(name, f"its process ended with code {code} (crash or fault)")
                    for name, code in isolated.items() if _crashed(code)]
    if skipped:
        from llmopt.bench.machine import describe

        info = describe(device)
        record_skips([skip_note(technique, name, None, None, reason, info) for name, reason in skipped], device, out)
    if isolated is not None:  # the children wrote their rows: this run's are those since `started`
        folder = results.results_dir(device, out)
        return [r for r in results.read_rows(folder.parent, technique, folder.name) if r["time"] >= started]
    rows = run_bench(contract, impls, device, quick=quick, out=out, cases=cases, progress=progress)
    _print_rows(technique, rows)
    for note in rows.skipped:
        console.print("[yellow]skipped[/] " + describe_skip(note), markup=True)
    return rows


def _print_rows(technique: str, rows: list[dict]) -> None:
    table = Table(title=f"{technique} benchmark")
    for column in ("impl", "case", "mode", "ms", "TFLOP/s", "GB/s", "% roofline", "peak MB", "margin"):
        table.add_column(column)
    for r in rows:
        margin = r["margin"] if isinstance(r["margin"], str) or r["margin"] is None else f"{r['margin']:.2f}"
        table.add_row(r["impl"], r["case_id"], r["mode"], f"{r['latency_ms']:.3f}", f"{r['tflops']:.2f}",
                      f"{r['gbps']:.1f}", f"{r['roofline_pct']:.1f}",
                      "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}", str(margin))
    console.print(table)


def cmd_bench(args) -> int:
    device = args.device or _default_device()
    bench_technique(args.technique, args.impl, device, quick=args.quick, out=args.out, cases=args.cases,
                    exclude=args.exclude)
    return 0


# ----------------------------------------------------------------------------------------------------------- run


def cmd_run(args) -> int:
    """The main job: verify then benchmark every technique x available impl on this machine, with a summary."""
    from llmopt.reference import contracts
    from rich.progress import Progress

    device = args.device or _default_device()
    summary, ok = [], True
    techniques = sorted(contracts())
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("verify + bench", total=2 * len(techniques))
        for technique in techniques:
            progress.update(task, description=f"verify {technique}")
            passed = verify_technique(technique, None, device, max_examples=args.max_examples, record_to=args.out,
                                      record=True)
            ok &= passed
            progress.advance(task)
            progress.update(task, description=f"bench {technique}")
            rows = bench_technique(technique, None, device, quick=args.quick or device == "cpu", out=args.out)
            progress.advance(task)
            summary.append((technique, passed, rows))
    table = Table(title=f"llmopt run on {device}")
    for column in ("technique", "verified", "bench rows", "fastest (median ms per case)"):
        table.add_column(column)
    for technique, passed, rows in summary:
        fastest = {}
        for r in rows:
            key = (r["case_id"], r["mode"])
            if key not in fastest or r["latency_ms"] < fastest[key]["latency_ms"]:
                fastest[key] = r
        best = "; ".join(f"{r['impl']} {r['latency_ms']:.3f} ({r['mode']})" for r in list(fastest.values())[:4])
        table.add_row(technique, "[green]yes[/]" if passed else "[red]NO[/]", str(len(rows)), best or "-")
    console.print(table)
    return 0 if ok else FAILED


# ----------------------------------------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    from llmopt.bench.report import write_report

    path = write_report(Path(args.root))
    console.print(f"wrote {path}")
    return 0


def cmd_claims(args) -> int:
    from llmopt.bench.claims import write_claims

    path = write_claims(Path(args.out))
    console.print(f"wrote {path}")
    return 0


def cmd_gate(args) -> int:
    from llmopt.bench.history import gate
    from llmopt.bench.machine import machine_name

    try:
        return gate(Path(args.root), args.machine or machine_name(_default_device()), args.threshold)
    except ValueError as error:
        raise UsageError(str(error)) from None


# ----------------------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmopt", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    device = {"choices": ["cpu", "cuda"], "default": None, "help": "default: cuda when present, else cpu"}

    s = sub.add_parser("list", help="techniques, impls, availability and supported features")
    s.add_argument("--device", **device)
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("verify", help="hold impls to their contract (hypothesis)")
    s.add_argument("technique")
    s.add_argument("--impl", action="append", help="a registered name or FILE.py:FUNC (repeatable)")
    s.add_argument("--exclude", action="append", help="without --impl: leave this registered impl out (repeatable)")
    s.add_argument("--device", **device)
    s.add_argument("--max-examples", type=int, default=None, help="hypothesis examples per property")
    s.add_argument("--seed", type=int, default=None, help="explore with this seed instead of derandomized")
    s.add_argument("--replay", default=None, help="check only this case (JSON, as printed by a failure)")
    s.add_argument("--property", action="append", help="run only this property (repeatable)")
    s.add_argument("--out", default=None, help="also record outcomes to OUT/verify.jsonl")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("bench", help="time impls: latency, TFLOP/s, GB/s, %% roofline, peak memory")
    s.add_argument("technique")
    s.add_argument("--impl", action="append")
    s.add_argument("--exclude", action="append", help="without --impl: leave this registered impl out (repeatable)")
    s.add_argument("--device", **device)
    s.add_argument("--quick", action="store_true", help="small cases only")
    s.add_argument("--cases", default=None, help="only cases whose id matches this regular expression")
    s.add_argument("--out", default=None, help="results folder (default results/<machine>, results/local on CPU)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("run", help="the main job: verify and bench everything available here")
    s.add_argument("--device", **device)
    s.add_argument("--quick", action="store_true")
    s.add_argument("--max-examples", type=int, default=None)
    s.add_argument("--out", default=None)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("report", help="results/ -> results/REPORT.md with tables and plots")
    s.add_argument("--root", default=str(_repo_root() / "results"))
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("claims", help="the seed's claims, recomputed -> results/claims.md")
    s.add_argument("--out", default=str(_repo_root() / "results" / "claims.md"))
    s.set_defaults(func=cmd_claims)

    s = sub.add_parser("gate",
                       help="exit 1 when the newest commit's normalised figures regressed (speedup, %% roofline)")
    s.add_argument("--machine", default=None, help="results/<machine> to check (default: this machine's)")
    s.add_argument("--root", default=str(_repo_root() / "results"))
    s.add_argument("--threshold", type=float, default=0.10, help="relative drop that fails (default 0.10)")
    s.set_defaults(func=cmd_gate)
    return p


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    from llmopt.impls import enable_triton_interpreter_without_cuda

    args = parser().parse_args(argv)
    enable_triton_interpreter_without_cuda()
    try:
        return args.func(args)
    except UsageError as error:
        console.print(f"[red]error:[/] {error}", markup=True)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
