"""Every property of every contract rejects a known-wrong impl on its own: each (property, impl) pair of
_known_wrong_coverage.REJECTED_BY fails that property alone, and no property of a contract is left without one (a
check that cannot fail is a defect)."""
from __future__ import annotations

import pytest
from _known_wrong_coverage import REJECTED_BY, assert_rejects
from llmopt.reference import contracts, get_contract


def test_every_property_has_a_known_wrong_witness():
    assert set(REJECTED_BY) == set(contracts())
    for technique, pairs in REJECTED_BY.items():
        assert {prop for prop, _ in pairs} == {p.name for p in get_contract(technique).properties}, technique


@pytest.mark.parametrize("technique,prop,func",
                         [(technique, prop, func) for technique, pairs in REJECTED_BY.items() for prop, func in pairs])
def test_each_property_rejects_its_known_wrong_impl(technique, prop, func):
    assert_rejects(technique, prop, func)
