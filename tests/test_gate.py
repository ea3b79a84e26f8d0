"""`llmopt gate` on synthetic histories: it fails on a kernel that lost ground to its library or to the roofline in its
own run, whatever the machine's speed did between runs, and passes a machine that is uniformly slower; fewer than two
commits is a usage error. And it runs on the committed results."""
from llmopt.bench.cli import main
from llmopt.bench.results import append_rows

CASE, OTHER = "B=1,N=64,causal=False", "B=2,N=128,causal=True"


def run(machine_speed: float, commit: str, day: str, base_ms: dict, case: str = CASE) -> list[dict]:
    """Rows of one run: an impl whose latency is `base_ms` on a reference machine takes base_ms / machine_speed here;
    its roofline_pct, against the peaks measured in this run, does not depend on the machine's speed."""
    return [{"technique": "attention", "impl": impl, "case_id": case, "mode": "fwd", "machine": "box",
             "latency_ms": base / machine_speed, "roofline_pct": 50 / base, "commit": commit,
             "time": f"2026-12-0{day}T10:00:00Z", "versions": {"torch": "2.13.0"}}
            for impl, base in base_ms.items()]


def gate(tmp_path, capsys, *runs, threshold=None):
    for rows in runs:
        append_rows(tmp_path / "box" / "attention.jsonl", rows)
    extra = ["--threshold", str(threshold)] if threshold is not None else []
    code = main(["gate", "--machine", "box", "--root", str(tmp_path), *extra])
    return code, capsys.readouterr().out


def test_kernel_losing_to_its_library_fails_though_the_machine_got_faster(tmp_path, capsys):
    before = run(1.0, "aaa", "1", {"triton_flash": 1.0, "sdpa_flash": 1.3})
    after = run(1.4, "bbb", "2", {"triton_flash": 1.0, "sdpa_flash": 1.04})  # a faster library: speedup 1.3 -> 1.04
    assert all(new["latency_ms"] < old["latency_ms"] for old, new in zip(before, after))
    code, out = gate(tmp_path, capsys, before, after)
    assert code == 1
    assert "-20.0%" in out and "triton_flash: speedup vs sdpa_flash" in out and CASE in out
    assert "+25.0%" in out and "sdpa_flash: roofline %" in out  # improvements are listed too
    assert "triton_flash: roofline" not in out  # the kernel's own share of the machine did not move
    assert out.strip().splitlines()[-1].startswith("FAIL: 1 of 3")


def test_uniformly_slower_machine_passes(tmp_path, capsys):
    base = {"triton_flash": 1.0, "sdpa_flash": 1.3, "fa4": 0.9}
    code, out = gate(tmp_path, capsys, run(1.0, "aaa", "1", base), run(1 / 1.15, "bbb", "2", base))
    assert code == 0
    assert "5 figures compared" in out and "0 moved" in out  # 3 roofline shares, speedups vs sdpa_flash and fa4
    assert out.strip().splitlines()[-1].startswith("PASS")


def test_roofline_drop_fails(tmp_path, capsys):
    slower = run(1.0, "bbb", "2", {"triton_flash": 1.0, "sdpa_flash": 1.3})
    for row in slower:
        row["roofline_pct"] *= 0.85  # same latencies, but the run's peaks say both reach 15% less of the machine
    code, out = gate(tmp_path, capsys, run(1.0, "aaa", "1", {"triton_flash": 1.0, "sdpa_flash": 1.3}), slower)
    assert code == 1
    assert "triton_flash: roofline %" in out and "sdpa_flash: roofline %" in out and "-15.0%" in out
    assert "speedup" not in out


def test_improvement_is_listed_and_passes(tmp_path, capsys):
    code, out = gate(tmp_path, capsys, run(1.0, "aaa", "1", {"triton_flash": 1.0, "sdpa_flash": 1.3}),
                     run(1.0, "bbb", "2", {"triton_flash": 0.8, "sdpa_flash": 1.3}))
    assert code == 0
    assert "+25.0%" in out and "speedup vs sdpa_flash" in out and "aaa -> bbb" in out


def test_repeated_rows_take_the_median_and_a_key_meets_its_last_earlier_commit(tmp_path, capsys):
    first = run(1.0, "aaa", "1", {"triton_flash": 1.0, "sdpa_flash": 1.3}, case=OTHER)
    middle = run(1.0, "bbb", "2", {"triton_flash": 1.0, "sdpa_flash": 1.3})  # OTHER not measured here
    repeats = [run(1.0, "ccc", "3", {"triton_flash": ms, "sdpa_flash": 1.3}, case=OTHER) for ms in (1.0, 1.01, 9.0)]
    code, out = gate(tmp_path, capsys, first, middle, *repeats)
    assert code == 0, out
    assert "3 figures compared" in out  # OTHER's figures against aaa; CASE's were not measured at ccc

    code, out = gate(tmp_path, capsys, run(1.0, "ddd", "4", {"triton_flash": 1.5, "sdpa_flash": 1.3}, case=OTHER))
    assert code == 1 and "ccc -> ddd" in out and OTHER in out  # against the median of ccc's repeats


def test_graph_replays_tell_a_slower_host_from_a_slower_kernel(tmp_path, capsys):
    """Rows with CUDA-graph replays give each figure twice: a host that adds the same time to every eager call moves
    only the eager figures; a kernel that got slower moves its replayed ones too."""
    def with_graph(rows, host_ms=0.0, graph_ms=None):
        for row in rows:
            row["latency_ms_graph"] = (graph_ms or {}).get(row["impl"], row["latency_ms"])
            row["roofline_pct"] *= row["latency_ms"] / (row["latency_ms"] + host_ms)  # the run's figure, from eager
            row["latency_ms"] += host_ms
        return rows

    base = {"triton_flash": 1.0, "sdpa_flash": 1.3}
    code, out = gate(tmp_path / "host", capsys, with_graph(run(1.0, "aaa", "1", base)),
                     with_graph(run(1.0, "bbb", "2", base), host_ms=1.0))
    assert code == 1, out
    assert "6 figures compared" in out  # both impls' roofline and the speedup, eager and replayed
    assert "triton_flash: speedup vs sdpa_flash, fwd" in out and "-11.5%" in out  # 1.3 -> 2.3 / 2.0
    assert "graph replay" not in out  # no replayed figure moved

    code, out = gate(tmp_path / "kernel", capsys, with_graph(run(1.0, "aaa", "1", base)),
                     with_graph(run(1.0, "bbb", "2", base), graph_ms={"triton_flash": 1.25}))
    assert code == 1, out
    assert "triton_flash: speedup vs sdpa_flash, graph replay, fwd" in out and "-20.0%" in out
    assert "triton_flash: roofline %, graph replay, fwd" in out
    assert "triton_flash: speedup vs sdpa_flash, fwd" not in out  # its eager time did not move: the replays show it


def test_fewer_than_two_commits_and_unknown_machine_are_usage_errors(tmp_path, capsys):
    code, out = gate(tmp_path, capsys, run(1.0, "aaa", "1", {"triton_flash": 1.0, "sdpa_flash": 1.3}))
    assert code == 2 and "two commits" in out and "found 1: aaa" in out
    code = main(["gate", "--machine", "nope", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 2 and "no benchmark rows for machine 'nope'" in out and "box" in out


def test_gate_runs_on_the_committed_results(capsys):
    code = main(["gate", "--machine", "h100"])
    out = capsys.readouterr().out
    assert code in (0, 1), out
    assert out.strip().splitlines()[-1].startswith(("PASS", "FAIL"))


def test_threshold_is_an_option(tmp_path, capsys):
    before = run(1.0, "aaa", "1", {"triton_flash": 1.0, "sdpa_flash": 1.3})
    after = run(1.0, "bbb", "2", {"triton_flash": 1.25, "sdpa_flash": 1.3})  # speedup and roofline share -20%
    code, out = gate(tmp_path, capsys, before, after, threshold=0.25)
    assert code == 0 and "0 moved by more than 25%" in out
