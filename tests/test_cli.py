"""The `llmopt` command's contract with its users: exit 0 when every property holds, 1 when one fails (with the
minimal case and a replay command that reproduces it), 2 for usage errors, with messages that name what is valid."""
import json
import re
import subprocess
import sys
from pathlib import Path

from llmopt.bench.cli import main

KNOWN_WRONG = Path(__file__).parent / "known_wrong" / "attention.py"


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_list_shows_availability_and_reasons(capsys):
    code, out = run(capsys, "list", "--device", "cpu")
    assert code == 0
    assert "sdpa_math" in out and "available" in out
    assert re.search(r"sdpa_flash\s.*unavailable", out)


def test_unknown_technique_and_impl_are_usage_errors(capsys):
    code, out = run(capsys, "verify", "no_such_technique")
    assert code == 2 and "known:" in out and "attention" in out
    code, out = run(capsys, "verify", "attention", "--impl", "no_such_impl", "--device", "cpu")
    assert code == 2 and "sdpa_math" in out
    code, out = run(capsys, "verify", "attention", "--impl", "sdpa_flash", "--device", "cpu")
    assert code == 2 and "unavailable" in out and "available here" in out


def test_user_file_that_does_not_load_is_a_usage_error(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_anywhere\n")
    code, out = run(capsys, "verify", "attention", "--impl", f"{broken}:attn", "--device", "cpu")
    assert code == 2 and "does not load" in out
    fine = tmp_path / "fine.py"
    fine.write_text("x = 1\n")
    code, out = run(capsys, "verify", "attention", "--impl", f"{fine}:attn", "--device", "cpu")
    assert code == 2 and "no callable 'attn'" in out


def test_user_file_sees_its_own_folder_first(tmp_path, capsys):
    (tmp_path / "helper_module_for_llmopt_test.py").write_text(
        "from llmopt.reference.attention import attention as attn\n")
    (tmp_path / "kernel.py").write_text("from helper_module_for_llmopt_test import attn\n")
    code, _ = run(capsys, "verify", "attention", "--impl", f"{tmp_path / 'kernel.py'}:attn", "--device", "cpu",
                  "--max-examples", "2")
    assert code == 0


def test_failure_prints_a_replay_that_reproduces_it(capsys):
    code, out = run(capsys, "verify", "attention", "--impl", f"{KNOWN_WRONG}:top_left_causal", "--device", "cpu",
                    "--property", "matches_reference")
    assert code == 1
    replay = re.search(r"--replay (\S+)", out.replace("\n", ""))
    case = json.loads(replay.group(1).strip("'"))
    assert case["causal"] and case["N"] != case["M"]
    code, out = run(capsys, "verify", "attention", "--impl", f"{KNOWN_WRONG}:top_left_causal", "--device", "cpu",
                    "--replay", json.dumps(case))
    assert code == 1 and "1 cases" not in out.split("matches_reference")[1].splitlines()[0]


def test_bad_replay_is_a_usage_error(capsys):
    code, out = run(capsys, "verify", "attention", "--impl", "sdpa_math", "--device", "cpu", "--replay", "{\"B\": 1}")
    assert code == 2 and "exactly the fields" in out


def test_console_script_exit_code():
    done = subprocess.run([sys.executable, "-m", "llmopt.bench.cli", "verify", "attention", "--impl",
                           f"{KNOWN_WRONG}:wrong_scale", "--device", "cpu", "--property", "matches_reference"],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "minimal failing case" in done.stdout


def test_isolated_bench_records_what_unavailable_and_crashed_impls_did_not_measure(tmp_path, monkeypatch):
    """On CUDA each impl benchmarks in its own process: an unavailable impl and one whose process crashed (no rows, no
    notes of its own) each leave a skip note saying why; an impl that ran leaves none. Processes and machine faked."""
    from llmopt.bench import cli
    from llmopt.bench.results import read_skipped
    from llmopt.impls import discover

    registered = discover("attention")
    monkeypatch.setattr(cli, "_selected_impls", lambda *args: ([registered["sdpa_flash"], registered["triton_flash"]],
                                                               [("vllm_fa3", "library 'vllm' is not installed")]))
    monkeypatch.setattr("llmopt.bench.machine.measure_peaks", lambda device: {"copy_gbps": 1.0, "matmul_tflops": 1.0})
    monkeypatch.setattr("llmopt.bench.machine.describe", lambda device: {"commit": "abc", "machine": "h100"})
    exit_codes = {"sdpa_flash": 0, "triton_flash": -11}
    monkeypatch.setattr(subprocess, "run", lambda argv, **kwargs: subprocess.CompletedProcess(
        argv, exit_codes[argv[argv.index("--impl") + 1]]))
    cli.bench_technique("attention", None, "cuda", quick=False, out=tmp_path / "h100")

    notes = {note["impl"]: note["reason"] for note in read_skipped(tmp_path)}
    assert notes == {"vllm_fa3": "unavailable on cuda: library 'vllm' is not installed",
                     "triton_flash": "its process ended with code -11 (crash or fault)"}
