"""The benchmarking half on CPU: run_bench's rows follow ARCHITECTURE.md's schema with consistent numbers and honest
skips, the report renders tables and plots from rows, best_fraction_of_peak reads only what it should, and the
autotuners' timer answers the quantiles they ask for and every in-house autotuner uses it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from llmopt.bench import timing
from llmopt.bench.bench import run_bench
from llmopt.bench.machine import DATASHEET_DENSE_TFLOPS, gpu_slug
from llmopt.bench.report import write_report
from llmopt.bench.results import append_rows, best_fraction_of_peak, read_rows, read_skipped
from llmopt.impls import Impl, _host, discover
from llmopt.reference.attention import CONTRACT, AttentionCase, attention

ROW_FIELDS = {"technique", "impl", "case", "case_id", "mode", "device", "gpu", "dtype", "latency_ms", "latency_ms_p20",
              "latency_ms_p80", "latency_ms_graph", "graph_note", "tflops", "gbps", "roofline_pct", "peak_mem_mb",
              "margin", "commit", "machine", "versions", "peaks", "time"}
TINY = AttentionCase(B=1, Hq=2, Hkv=1, N=33, M=33, D=16, causal=True)


def test_run_bench_rows_follow_the_schema(tmp_path):
    forward_only = Impl(technique="attention", name="forward_only_naive", fn=attention, kind="user", devices=("cpu",),
                        supports={"backward": False})
    cuda_only = Impl(technique="attention", name="cuda_only_naive", fn=attention, kind="user", devices=("cuda",))
    contract = dataclasses.replace(CONTRACT, quick_cases=[TINY])
    impls = [discover("attention")["sdpa_math"], forward_only, cuda_only]
    rows = run_bench(contract, impls, "cpu", out=tmp_path / "local")

    assert [(r["impl"], r["mode"]) for r in rows] == [("sdpa_math", "fwd"), ("sdpa_math", "bwd"),
                                                      ("forward_only_naive", "fwd")]
    assert {(s["impl"], s["mode"]) for s in rows.skipped} == {("cuda_only_naive", None), ("forward_only_naive", "bwd")}
    assert all(s["reason"] and (s["technique"], s["machine"]) == ("attention", "local") for s in rows.skipped)
    assert read_skipped(tmp_path) == rows.skipped  # recorded beside the rows, and never read as rows
    assert json.loads(json.dumps(list(rows))) == read_rows(tmp_path, "attention") == read_rows(tmp_path)
    for row in rows:
        assert set(row) == ROW_FIELDS
        assert set(row["peaks"]) == {"copy_gbps", "matmul_tflops"} and min(row["peaks"].values()) > 0
        assert (row["technique"], row["device"], row["machine"], row["gpu"]) == ("attention", "cpu", "local", None)
        assert row["case"] == dataclasses.asdict(TINY) and row["dtype"] == "float32"
        assert 0 < row["latency_ms_p20"] <= row["latency_ms"] <= row["latency_ms_p80"]
        cost = CONTRACT.cost(TINY, row["mode"])
        assert row["tflops"] == pytest.approx(cost.flops / row["latency_ms"] / 1e9)
        assert row["gbps"] == pytest.approx(cost.bytes / row["latency_ms"] / 1e6)
        assert 0 < row["roofline_pct"] < 1000  # far beyond 100 would mean wrong units
        assert row["peak_mem_mb"] is None  # no allocator counter on CPU
        assert (row["latency_ms_graph"], row["graph_note"]) == (None, "CPU")  # CUDA graphs: GPU only
        assert 0 <= row["margin"] <= 1  # matches_reference (fwd), grads_match_reference (bwd)
        assert {"python", "torch", "triton"} <= set(row["versions"])
        assert row["time"].endswith("Z")


def _row(technique, impl, case, mode, tflops, machine="h100", time="2026-11-25T10:00:00Z", commit="abc"):
    latency = 1.0 / tflops
    case_id = ",".join(f"{k}={v}" for k, v in case.items())
    return {"technique": technique, "impl": impl, "case": case, "case_id": case_id, "mode": mode, "device": "cuda",
            "gpu": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "latency_ms": latency,
            "latency_ms_p20": 0.9 * latency, "latency_ms_p80": 1.1 * latency, "tflops": tflops, "gbps": 10.0 * tflops,
            "roofline_pct": tflops / 8, "peak_mem_mb": 100.0, "margin": 0.5, "commit": commit, "machine": machine,
            "versions": {"torch": "2.11.0", "triton": "3.6.0"}, "peaks": {"copy_gbps": 3000.0, "matmul_tflops": 700.0},
            "time": time}


def test_report_has_tables_and_plots(tmp_path):
    rows = [_row("attention", impl, {"B": 16384 // n, "N": n, "causal": causal}, "fwd", tflops * n / 4096)
            for impl, tflops in (("sdpa_flash", 300), ("mine", 450)) for n in (1024, 4096) for causal in (False, True)]
    rows.append(_row("attention", "mine", {"B": 4, "N": 4096, "causal": False}, "fwd", 1.0, commit="old",
                     time="2026-11-24T10:00:00Z"))  # an older commit: not reported
    append_rows(tmp_path / "h100" / "attention.jsonl", rows)
    append_rows(tmp_path / "h100" / "lora.jsonl", [_row("lora", impl, {"r": r, "d": 4096}, "fwd", 100.0 * r)
                                                   for impl in ("peft", "mine") for r in (8, 64)])
    append_rows(tmp_path / "h100" / "verify.jsonl", [
        {"technique": "attention", "impl": "mine", "device": "cuda", "machine": "h100", "status": status, "reason": "",
         "properties": {"matches_reference": {"status": "fail" if status == "failing" else "pass", "examples": 40,
                                              "max_margin": 0.5}}, "commit": "abc", "time": time}
        for status, time in (("failing", "2026-11-24T10:00:00Z"), ("verified", "2026-11-25T10:00:00Z"))])

    append_rows(tmp_path / "h100" / "skipped.jsonl", [
        {"technique": "attention", "impl": impl, "case_id": case_id, "mode": "fwd", "reason": reason, "commit": commit,
         "machine": "h100", "time": "2026-11-25T10:00:00Z"}
        for impl, case_id, reason, commit in (
            ("mine", "B=2,N=8192,causal=True", "out of memory", "abc"),  # a case no row has
            ("theirs", None, "unavailable on cuda: library 'theirs' is not installed", "abc"),
            ("mine", "B=4,N=4096,causal=False", "a skip of an older run", "old"),
            ("theirs", None, "unavailable on cuda: library 'theirs' is not installed", "abc"),  # twice: listed once
            ("sdpa_flash", "B=4,N=4096,causal=True", "a skip another run at this commit made up for", "abc"))])

    report = write_report(tmp_path).read_text()

    assert "- mine, B=2,N=8192,causal=True, fwd: out of memory" in report
    assert "- theirs, every case, fwd: unavailable on cuda: library 'theirs' is not installed" in report
    assert "a skip of an older run" not in report and "made up for" not in report
    assert report.count("library 'theirs' is not installed") == 1
    assert "| attention | mine | **verified** (cuda at `abc`; max margin 0.50) |" in report
    assert "failed verification" not in report  # it failed at abc, then passed there: the latest outcome counts
    assert "## attention on h100" in report and "## lora on h100" in report and "commit `abc`" in report
    assert "Speedup over sdpa_flash" in report and "| B=4,N=4096,causal=False | fwd | 1.00x | 1.50x |" in report
    assert "commit `old`" not in report
    for name in ("attention-h100-fwd.png", "lora-h100-fwd.png"):
        assert f"(plots/{name})" in report
        assert (tmp_path / "plots" / name).read_bytes().startswith(b"\x89PNG")


def test_report_warns_of_figures_from_an_impl_that_failed_verification_at_their_commit(tmp_path):
    append_rows(tmp_path / "h100" / "lora.jsonl", [_row("lora", impl, {"r": 16, "d": 4096}, "fwd", tflops, commit="new")
                                                   for impl, tflops in (("peft", 100.0), ("mine", 150.0))])
    # peft's newest outcome failed, but at another commit than the figures'
    outcomes = (("mine", "failing", "new", "09"), ("peft", "verified", "new", "09"), ("peft", "failing", "older", "11"))
    append_rows(tmp_path / "h100" / "verify.jsonl", [
        {"technique": "lora", "impl": impl, "device": "cuda", "machine": "h100", "status": status, "reason": "",
         "properties": {"grads_match_reference": {"status": "fail" if status == "failing" else "pass", "examples": 3,
                                                  "max_margin": None}},
         "commit": commit, "time": f"2026-11-25T{hour}:00:00Z"} for impl, status, commit, hour in outcomes])
    report = write_report(tmp_path).read_text()
    section = report[report.index("## lora on h100"):]
    assert ("**mine failed verification at commit `new`** (fails grads_match_reference): its figures below from that "
            "commit are of a kernel that does not hold the contract.") in section
    assert "peft failed" not in report  # its failure was at another commit


def test_report_keeps_each_case_from_its_newest_run_and_compares_impls_within_a_run(tmp_path):
    """A run of a few cases (the newest) leaves the other cases' figures from the run before, each row marked with its
    commit; speedups pair rows of one run, never an impl's new row with the baseline's old one."""
    old = [_row("lora", impl, {"tokens": n}, "fwd", tflops, commit="old1234", time="2026-11-25T10:00:00Z")
           for impl, tflops in (("peft", 100.0), ("mine", 150.0)) for n in (1, 512)]
    new = [{**_row("lora", impl, {"tokens": 512}, "fwd", tflops, commit="new5678", time="2026-11-26T10:00:00Z"),
            "latency_ms_graph": graph_ms}
           for impl, tflops, graph_ms in (("mine", 400.0, 0.003), ("peft", 200.0, 0.004))]
    append_rows(tmp_path / "h100" / "lora.jsonl", old + new)
    report = write_report(tmp_path).read_text()
    section = report[report.index("## lora on h100"):]
    assert "Each case from the newest run that measured it (2 runs, newest first)" in section
    assert section.index("commit `new5678`") < section.index("commit `old1234`")
    assert "| tokens=1 | `old1234` | fwd | 1.00x | 1.50x |" in section  # the run before, in its own run
    assert "| tokens=512 | `new5678` | fwd | 1.00x | 2.00x |" in section  # not 400 / 100 across runs
    assert "| tokens=512 | `old1234` |" not in section
    assert section.count("| tokens=512 | `new5678` | fwd | ") == 4  # two bench rows, eager and replayed speedups
    replayed = section[section.index("from CUDA-graph replays"):]
    assert "| tokens=512 | `new5678` | fwd | 1.00x | 1.33x |" in replayed and "tokens=1 " not in replayed

    append_rows(tmp_path / "h100" / "lora.jsonl", [{**r, "time": "2026-11-27T10:00:00Z", "commit": "all9999"}
                                                   for r in old])  # a full run again: one commit, no commit column
    section = write_report(tmp_path).read_text().split("## lora on h100")[1]
    assert "Each case from" not in section and "| tokens=1 | fwd | 1.00x | 1.50x |" in section


def test_best_fraction_of_peak_reads_committed_forward_rows(tmp_path):
    case = {"B": 8, "N": 2048}
    append_rows(tmp_path / "h100" / "attention.jsonl", [
        _row("attention", "sdpa_flash", case, "fwd", 400.0), _row("attention", "sdpa_flash", case, "bwd", 600.0),
        _row("attention", "other", case, "fwd", 800.0)])
    append_rows(tmp_path / "local" / "attention.jsonl", [_row("attention", "sdpa_flash", case, "fwd", 900.0, "local")])

    best = best_fraction_of_peak("attention", ("sdpa_flash",), root=tmp_path)

    assert best == {"pct": pytest.approx(100 * 400 / DATASHEET_DENSE_TFLOPS["h100"]), "peak_tflops": 989.4,
                    "machine": "h100", "impl": "sdpa_flash", "case_id": "B=8,N=2048"}
    assert best_fraction_of_peak("attention", (), root=tmp_path) is None
    assert best_fraction_of_peak("lora", ("sdpa_flash",), root=tmp_path) is None


@pytest.mark.parametrize("name, slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                        ("NVIDIA A100-SXM4-40GB", "a100"), ("NVIDIA H100 PCIe", "h100-pcie"),
                                        ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090")])
def test_gpu_slug(name, slug):
    assert gpu_slug(name) == slug


def test_autotune_timer_answers_the_quantiles_the_autotuner_asks_for(monkeypatch):
    monkeypatch.setattr(timing, "time_gpu", lambda fn: timing.Timing(median_ms=2.0, p20_ms=1.0, p80_ms=3.0))
    assert timing.autotune_timer(lambda: None, (0.5, 0.2, 0.8)) == [2.0, 1.0, 3.0]
    assert timing.autotune_timer(lambda: None, (0.8, 0.5)) == [3.0, 2.0]
    with pytest.raises(ValueError, match="quantiles"):
        timing.autotune_timer(lambda: None, (0.9,))


def test_every_in_house_autotuner_times_its_candidates_as_the_benchmarks_time_calls():
    """Kernels autotune through llmopt.impls._host.autotune, which hands Triton autotune_timer (L2 flushed by reading);
    a direct triton.autotune would choose by do_bench's write flush."""
    triton = pytest.importorskip("triton")
    impls_dir = Path(_host.__file__).parent
    direct = [str(path.relative_to(impls_dir)) for path in sorted(impls_dir.rglob("*.py"))
              if path.name != "_host.py" and "triton.autotune(" in path.read_text()]
    assert direct == [], f"autotuned without the benchmarks' timer: {direct}"

    @triton.jit
    def kernel(n):
        """Never launched: only wrapped, to read which timer the autotuner holds."""

    assert _host.autotune([triton.Config({})], ["n"])(kernel)._do_bench is timing.autotune_timer
