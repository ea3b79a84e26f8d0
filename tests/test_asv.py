"""asv smoke test: with the repository's asv.conf.json (paths moved to a temp folder, HOME too, so neither results/
nor ~ is written), asv discovers only the suites of bench/asv and runs one attention impl on one case in both modes;
a benchmark that raises makes `asv run` exit non-zero, so this test fails. And the suite's CUDA params and its graph
track's skips and figure, built on CPU."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from llmopt.bench import bench
from llmopt.bench.asv._suite import IMPLS_ENV, technique_suite
from llmopt.bench.asv.attention import Attention
from llmopt.bench.timing import Timing
from llmopt.impls import discover
from llmopt.reference.attention import CONTRACT

REPO = Path(__file__).resolve().parent.parent


def test_asv_runs_the_attention_suite(tmp_path):
    util = pytest.importorskip("asv.util")
    if shutil.which("asv") is None:
        pytest.skip("the asv command is not installed")
    config = util.load_json(str(REPO / "asv.conf.json"), js_comments=True, api_version=1)
    config.update(version=1, repo=str(REPO), benchmark_dir=str(REPO / config["benchmark_dir"]),
                  results_dir=str(tmp_path / "results"), html_dir=str(tmp_path / "html"), env_dir=str(tmp_path / "env"))
    (tmp_path / "asv.conf.json").write_text(json.dumps(config))
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop(IMPLS_ENV, None)  # every impl, whatever the caller's shell chose

    def asv(*args):
        return subprocess.run(["asv", *args], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)

    machine = asv("machine", "--yes", "--machine", "ci")
    assert machine.returncode == 0, machine.stdout + machine.stderr
    first_case = Attention.params[1][0]  # the suite's cases on this machine (bench shapes on CUDA, quick ones on CPU)
    one_case = re.escape(f"('sdpa_math', '{first_case}', ")
    run = asv("run", "-E", f"existing:{sys.executable}", "--quick", "--dry-run", "--machine", "ci", "--show-stderr",
              "--bench", one_case)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "attention.Attention.track_ms" in output and "failed" not in output
    discovered = sorted(name for name in json.loads((tmp_path / "results" / "benchmarks.json").read_text())
                        if name != "version")
    suites = sorted(path.stem for path in (REPO / "bench" / "asv").glob("[!_]*.py"))
    assert "attention.Attention.track_ms" in discovered
    assert sorted({name.split(".")[0] for name in discovered}) == suites  # one suite per module, nothing else
    tracks = ({"track_ms", "track_graph_ms", "track_peak_mem_mb"} if torch.cuda.is_available()  # CUDA graphs, CUDA's
              else {"track_ms"})                                                                 # peak memory
    assert {name.split(".")[2] for name in discovered} == tracks, discovered
    assert all(re.fullmatch(r"\w+\.\w+\.\w+", name) for name in discovered), discovered


def test_suite_on_cuda_tracks_memory_on_the_chosen_cases(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # params only: nothing runs
    monkeypatch.delenv(IMPLS_ENV, raising=False)
    suite = technique_suite("attention", on_cuda=lambda case: case.N == 4096)

    impls, cases, modes = suite.params
    assert impls == sorted(name for name, impl in discover("attention").items() if impl.runs_on("cuda") == "cuda")
    assert cases == [CONTRACT.case_id(case) for case in CONTRACT.bench_cases if case.N == 4096]
    assert modes == ["fwd", "bwd"]
    assert (suite.__name__, suite.track_ms.unit, suite.track_graph_ms.unit, suite.track_peak_mem_mb.unit) == (
        "Attention", "ms", "ms", "MB")


def test_the_graph_track_reports_replays_and_skips_what_cannot_be_replayed(monkeypatch):
    """A backward and a failed capture are asv skips with their reason, never a figure; a replay's median is the
    figure. The CUDA-graph timer is stood in for, so this runs on CPU."""
    mark = pytest.importorskip("asv_runner.benchmarks.mark")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the suite as on CUDA
    suite = technique_suite("attention", on_cuda=lambda case: case.N == 4096)()
    suite.run, suite.call = (lambda: None), SimpleNamespace(args=(torch.ones(1),))
    with pytest.raises(mark.SkipNotImplemented, match="backward: not captured"):
        suite.track_graph_ms("sdpa_math", "any case", "bwd")
    monkeypatch.setattr(bench, "time_gpu_graph", lambda run, generators: (None, "capture failed: synchronizes"))
    with pytest.raises(mark.SkipNotImplemented, match="capture failed: synchronizes"):
        suite.track_graph_ms("sdpa_math", "any case", "fwd")
    monkeypatch.setattr(bench, "time_gpu_graph", lambda run, generators: (Timing(0.25, 0.2, 0.3), None))
    assert suite.track_graph_ms("sdpa_math", "any case", "fwd") == 0.25
