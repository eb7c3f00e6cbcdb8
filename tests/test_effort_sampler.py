"""The effort-aware sampler: expected gain per expected corrected pixel, from the registry."""

from __future__ import annotations

import numpy as np
import pytest

from sampling.base import SamplingError
from sampling.effort import EffortSampler, expected_error
from sampling.regions import RegionPool
from sampling.registry import make_sampler, needs_of


def test_expected_error_is_monotone_from_zero_to_chance():
    h = np.linspace(0, np.log(3), 50)
    e = expected_error(h, 3)
    assert e[0] == pytest.approx(0, abs=1e-6) and e[-1] == pytest.approx(2 / 3, abs=1e-3)
    assert np.all(np.diff(e) >= -1e-7)
    # two classes: exact (binary entropy of 0.1 -> error 0.1)
    hb = -(0.1 * np.log(0.1) + 0.9 * np.log(0.9))
    assert expected_error(np.array([hb]), 2)[0] == pytest.approx(0.1, abs=2e-3)


def test_prefers_informative_regions_that_are_cheap_to_correct():
    pool = RegionPool((1, 8, 24), 8)  # three regions side by side
    entropy = np.zeros((1, 8, 24), np.float32)
    bald = np.zeros((1, 8, 24), np.float32)
    entropy[:, :, 0:8], bald[:, :, 0:8] = 1.0, 0.30  # very uncertain: many corrections
    entropy[:, :, 8:16], bald[:, :, 8:16] = 0.2, 0.15  # half the gain, few corrections
    entropy[:, :, 16:], bald[:, :, 16:] = 0.0, 0.0  # certain: nothing to learn
    sampler = make_sampler("effort")
    sampler.check_classes(3)
    assert needs_of(sampler) == {"entropy", "bald"}
    sel = sampler.select(pool.candidates(), 2, np.random.default_rng(0), pool=pool, entropy=entropy, bald=bald)
    assert sel.ids.tolist() == [1, 0]
    ent = make_sampler("entropy").select(pool.candidates(), 1, np.random.default_rng(0), pool=pool, entropy=entropy)
    assert ent.ids.tolist() == [0]  # plain uncertainty picks the costly one first


def test_bad_options_are_refused():
    with pytest.raises(SamplingError, match="measure"):
        EffortSampler(measure="x")
    with pytest.raises(SamplingError, match="floor"):
        make_sampler("effort", floor=0)
