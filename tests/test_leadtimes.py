"""The arrival-delay histogram: bins and the percentiles read back from them, against the
exact nearest-rank percentiles of the delays themselves."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from vna.leadtimes import (
    LINEAR_SECONDS,
    RELATIVE_RESOLUTION,
    arrival_bin,
    bin_value,
    histogram_percentiles,
)
from vna.quality import percentiles


@pytest.mark.parametrize("seconds", [0, 0.4, 1, 59.9, 127.99, 128, 129, 3600, 86_400,
                                     86_401, 3 * 365 * 86_400, -5, -7200])
def test_a_bin_stands_for_the_delays_in_it(seconds: float) -> None:
    value = bin_value(arrival_bin(seconds))
    if abs(seconds) < LINEAR_SECONDS:
        assert abs(value - seconds) <= 0.5
    else:
        assert abs(value - seconds) <= abs(seconds) * RELATIVE_RESOLUTION


def test_bins_are_ordered_like_the_delays() -> None:
    rng = random.Random(7)
    delays = sorted(rng.uniform(-1e5, 1e7) for _ in range(5000))
    bins = [arrival_bin(d) for d in delays]
    assert bins == sorted(bins)


def test_histogram_percentiles_match_the_exact_ones() -> None:
    rng = random.Random(11)
    for _ in range(50):
        delays = [rng.lognormvariate(rng.uniform(2, 10), rng.uniform(0.2, 2))
                  for _ in range(rng.randint(1, 3000))]
        histogram = Counter(arrival_bin(d) for d in delays)
        exact, binned = percentiles(delays), histogram_percentiles(histogram)
        for point, value in exact.items():
            allowed = 0.6 if value < LINEAR_SECONDS else value * RELATIVE_RESOLUTION + 0.1
            assert abs(binned[point] - value) <= allowed, (point, value, binned)


def test_no_delays_no_percentiles() -> None:
    assert histogram_percentiles({}) == {}
    assert histogram_percentiles({3: 0}) == {}
