"""benchmarks/training_ablation.py: how a variant's name becomes its training."""

from __future__ import annotations

import sys

import pytest

from benchmark_scripts import BENCHMARKS, load


@pytest.fixture(scope="module")
def ablation():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports seed_spread from beside it
    try:
        yield load("training_ablation")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_data_modifiers_are_told_apart_from_config_overrides(ablation) -> None:
    overrides, data = ablation.parse_variant("windows+pretrained+ends+gentle+decay")
    assert data == {"pretrained", "gentle"}
    assert overrides["window"].cover_ends is True
    assert overrides["weight_decay"] == 0.1
    assert ablation.parse_variant("windows")[1] == frozenset()


@pytest.mark.parametrize("variant", ["windows+gentle+bogus", "wide+ends"])
def test_an_unknown_variant_is_refused(ablation, variant: str) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        ablation.parse_variant(variant)


def test_gentle_without_an_ecm_is_refused_before_training(ablation) -> None:
    with pytest.raises(ValueError, match="needs --ecm"):
        ablation.run_variant(_NoData(), "windows+gentle", 0, ablation.PROFILES["full"].train,
                              None, None)


class _NoData:
    """A dataset whose splits are empty: the refusal must come before any training."""

    name = "none"

    def split(self, name: str) -> list:
        return []
