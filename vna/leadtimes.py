"""Arrival delays as a histogram: how the workers bin each instance's acquisition-to-archive
delay into the hourly rollup, and how p50/p90 are read back from it.

A region-year holds millions of instances; percentiles over any period must not read them
one by one. So each delay is counted in a bin: whole seconds below two minutes, then 64 bins
per doubling (each 1.1 % wide) up to years. A percentile read from the bins is the middle of
its bin: exact to half a second below two minutes, within 0.55 % above. Negative delays (a
modality clock ahead of the archive's) mirror the positive bins.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

from vna.quality import Distribution

LINEAR_SECONDS = 128  # below this, one bin per second
BINS_PER_DOUBLING = 64
RELATIVE_RESOLUTION = 2 ** (0.5 / BINS_PER_DOUBLING) - 1  # half a bin: 0.54 %


def arrival_bin(seconds: float) -> int:
    """The histogram bin of a delay in seconds."""
    if seconds < 0:
        return -1 - arrival_bin(-seconds)
    if seconds < LINEAR_SECONDS:
        return int(seconds)
    return LINEAR_SECONDS + int(BINS_PER_DOUBLING * math.log2(seconds / LINEAR_SECONDS))


def bin_value(b: int) -> float:
    """The delay a bin stands for: its middle (geometric above two minutes)."""
    if b < 0:
        return -bin_value(-1 - b)
    if b < LINEAR_SECONDS:
        return b + 0.5
    return float(LINEAR_SECONDS * 2 ** ((b - LINEAR_SECONDS + 0.5) / BINS_PER_DOUBLING))


def histogram_percentiles(counts: Mapping[int, int],
                          points: tuple[int, ...] = (50, 90)) -> dict[str, float]:
    """Nearest-rank percentiles of the delays counted in `counts` (bin -> count), like
    `vna.quality.percentiles` of the delays themselves; empty for no delays."""
    n = sum(counts.values())
    if n == 0:
        return {}
    ordered = sorted((b, c) for b, c in counts.items() if c)
    out = {}
    for p in points:
        rank = max(1, -(-p * n // 100))  # ceil(p/100 * n)
        seen = 0
        for b, c in ordered:
            seen += c
            if seen >= rank:
                out[f"p{p}"] = round(bin_value(b), 1)
                break
    return out


def arrival_summary(by_modality: Mapping[str, Counter[int]]) -> Distribution:
    """Count and percentiles of per-modality histograms, overall and by modality (read
    with RELATIVE_RESOLUTION)."""
    overall: Counter[int] = Counter()
    for histogram in by_modality.values():
        overall.update(histogram)
    return Distribution(overall.total(), histogram_percentiles(overall),
                        {m: Distribution(h.total(), histogram_percentiles(h))
                         for m, h in sorted(by_modality.items())})
