"""Shared by the technique tests: a known-wrong impl of tests/known_wrong/<technique>.py must fail a given property
on its own (`llmopt verify --property P`), so every property is shown to reject some bug."""
from __future__ import annotations

from pathlib import Path

from llmopt.bench.verify import verify
from llmopt.impls import load_user_impl
from llmopt.reference import get_contract

KNOWN_WRONG = Path(__file__).parent / "known_wrong"


def assert_rejects(technique: str, prop: str, func: str) -> None:
    impl = load_user_impl(technique, f"{KNOWN_WRONG / technique}.py:{func}")
    outcome = verify(get_contract(technique), impl, "cpu", only=[prop])
    (result,) = outcome.properties
    assert result.status == "fail", f"{technique}/{func} passes {prop} on {result.examples} cases"
