"""Where measurements live: results/<machine>/<technique>.jsonl (benchmark rows), results/<machine>/verify.jsonl
(verification outcomes) and results/<machine>/skipped.jsonl (what a benchmark run did not measure, and why), one JSON
object per line, appended; CPU-only runs go to the ignored results/local/.
Also reads them back, and the best measured fraction of the datasheet peak that the contracts' claims cite."""
from __future__ import annotations

import json
import time
from pathlib import Path

from llmopt.bench.machine import DATASHEET_DENSE_TFLOPS, machine_name

RESULTS_ROOT = Path(__file__).resolve().parent.parent / "results"
VERIFY_FILE = "verify.jsonl"
SKIPPED_FILE = "skipped.jsonl"
NOT_ROWS = (VERIFY_FILE, SKIPPED_FILE)  # the files of a machine folder that hold no benchmark rows


def utc_now() -> str:
    """The time a row or note is written, as results/ records it: ISO 8601 UTC to the second, e.g. 2026-12-05T19:35:02Z
    (sorts as text)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def results_dir(device: str, out: str | Path | None = None) -> Path:
    """`out` when given, else results/<machine>/ (results/local/ on CPU)."""
    return Path(out) if out is not None else RESULTS_ROOT / machine_name(device)


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append `rows` to the JSON-lines file `path`, creating it and its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


def write_document(path: Path, document: dict) -> None:
    """Write one JSON document (a sweep's whole result, e.g. results/<machine>/nf4_tiles.json) to `path`, creating its
    folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def _read_jsonl(paths) -> list[dict]:
    return [json.loads(line) for path in sorted(paths) for line in path.read_text().splitlines() if line.strip()]


def read_rows(root: str | Path | None = None, technique: str | None = None, machine: str | None = None) -> list[dict]:
    """Benchmark rows under `root` (default results/), of one technique and/or machine folder when given."""
    folder = Path(root) if root is not None else RESULTS_ROOT
    paths = folder.glob(f"{machine or '*'}/{technique or '*'}.jsonl")
    return _read_jsonl(path for path in paths if path.name not in NOT_ROWS)


def _read_machine_file(name: str, root: str | Path | None, machine: str | None) -> list[dict]:
    """The lines of results/<machine>/`name` under `root` (default results/), of one machine folder when given."""
    folder = Path(root) if root is not None else RESULTS_ROOT
    return _read_jsonl(folder.glob(f"{machine or '*'}/{name}"))


def read_verify_rows(root: str | Path | None = None, machine: str | None = None) -> list[dict]:
    """Verification outcomes under `root` (default results/), of one machine folder when given."""
    return _read_machine_file(VERIFY_FILE, root, machine)


def read_skipped(root: str | Path | None = None, machine: str | None = None) -> list[dict]:
    """Skip notes of benchmark runs under `root` (default results/), of one machine folder when given."""
    return _read_machine_file(SKIPPED_FILE, root, machine)


def best_fraction_of_peak(technique: str, impl_names, root: str | Path | None = None) -> dict | None:
    """The best forward TFLOP/s of `impl_names` in committed rows (machines with a datasheet peak, so never
    results/local) as a percent of that machine's dense bf16/fp16 peak: {"pct", "peak_tflops", "machine", "impl",
    "case_id"}, or None when there is no such row."""
    best = None
    for row in read_rows(root, technique):
        peak = DATASHEET_DENSE_TFLOPS.get(row["machine"])
        if peak is None or row["impl"] not in impl_names or row["mode"] != "fwd":
            continue
        pct = 100 * row["tflops"] / peak
        if best is None or pct > best["pct"]:
            best = {"pct": pct, "peak_tflops": peak, "machine": row["machine"], "impl": row["impl"],
                    "case_id": row["case_id"]}
    return best
