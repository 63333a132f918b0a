"""Lead times: the arrival-delay histogram (how the workers bin each instance's
acquisition-to-archive delay into the hourly rollup, and how p50/p90 are read back from
it), and the chain of an exam from referral to report (`Exam`, `CHAIN`).

A region-year holds millions of instances; percentiles over any period must not read them
one by one. So each delay is counted in a bin: whole seconds below two minutes, then 64 bins
per doubling (each 1.1 % wide) up to years. A percentile read from the bins is the middle of
its bin: exact to half a second below two minutes, within 0.55 % above. Negative delays (a
modality clock ahead of the archive's) mirror the positive bins.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vna.quality import Distribution
from vna.stats import Dimension, Filters, InvalidStatsQuery

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


# -- the chain from referral to report -------------------------------------------------------
#
# An exam is a study. Its times come from the order (imaging_order: referral, scheduled), the
# modality's performed procedure steps (MPPS), the archive (its last instance) and the RIS's
# final report (study_report). Where a study has no MPPS, the Performed Procedure Step start
# and end the images carry stand in for the exam's start and end.
#
# A region's year is some 100,000 exams: they are held as columns (numpy arrays), not as an
# object each, so that the percentiles of every step, by modality and by department, take
# milliseconds.

MPPS = "mpps"
IMAGES = "images"

# An exam's times, in seconds since the epoch (UTC), NaN where unknown:
TIMES = (
    "referral",  # the order's referral (HL7 ORC-9 / worklist API)
    "scheduled",  # the order's scheduled procedure step start
    "started",  # the first MPPS start (steps not DISCONTINUED), else the images' PPS start
    "completed_from",  # the first start of its COMPLETED steps, else the images' PPS start
    "ended",  # the last end of its COMPLETED steps, else the images' PPS end
    "archived",  # when its last instance arrived
    "reported",  # the final report of its accession number
)
# The lead times, in the order of the chain: name, from, to (names in TIMES).
CHAIN: tuple[tuple[str, str, str], ...] = (
    ("referralToScheduled", "referral", "scheduled"),
    ("referralToExam", "referral", "started"),
    ("scheduledToPerformed", "scheduled", "started"),
    ("examDuration", "completed_from", "ended"),
    ("examEndToArchive", "ended", "archived"),
    ("archiveToReport", "archived", "reported"),
    ("examToReport", "ended", "reported"),
)
EXAM_DIMENSIONS = (Dimension.MODALITY, Dimension.DEPARTMENT)

# A row of exams as `storage.index.stats` reads it: Study Instance UID, accession number,
# modality, department, linked to an order, then the TIMES.
ExamRow = tuple[Any, ...]


@dataclass(frozen=True)
class Exams:
    """The period's exams, as columns. `by_mpps`: its start and end come from MPPS (else
    from the images); `ordered`: it is linked to an order (imaging_order)."""

    study_instance_uid: list[str]
    accession_number: list[str | None]
    modality: NDArray[np.object_]  # '' = unknown
    department: NDArray[np.object_]  # the order's, else what its series say; '' = unknown
    by_mpps: NDArray[np.bool_]
    ordered: NDArray[np.bool_]
    times: dict[str, NDArray[np.float64]]

    @classmethod
    def of(cls, with_mpps: Sequence[ExamRow], images_only: Sequence[ExamRow]) -> Exams:
        rows = [*with_mpps, *images_only]
        if not rows:
            return cls([], [], np.array([], object), np.array([], object),
                       np.array([], bool), np.array([], bool),
                       {t: np.array([], float) for t in TIMES})
        uid, accession, modality, department, ordered, *times = zip(*rows, strict=True)
        return cls(list(uid), list(accession),
                   np.array([m or "" for m in modality], dtype=object),
                   np.array([d or "" for d in department], dtype=object),
                   np.arange(len(rows)) < len(with_mpps), np.array(ordered, dtype=bool),
                   {t: np.array(v, dtype=float) for t, v in zip(TIMES, times, strict=True)})

    def __len__(self) -> int:
        return len(self.study_instance_uid)

    def seconds(self, start: str, end: str) -> NDArray[np.float64]:
        """`end` - `start` of each exam (NaN where either is unknown), to the millisecond."""
        return np.round(self.times[end] - self.times[start], 3)

    def where(self, mask: NDArray[np.bool_]) -> Exams:
        keep = np.flatnonzero(mask)
        return Exams([self.study_instance_uid[i] for i in keep],
                     [self.accession_number[i] for i in keep], self.modality[keep],
                     self.department[keep], self.by_mpps[keep], self.ordered[keep],
                     {t: v[keep] for t, v in self.times.items()})

    def first(self, mask: NDArray[np.bool_], limit: int = 10,
              accession: bool = False) -> list[str]:
        """Up to `limit` of the exams in `mask`, earliest start first: their Study Instance
        UIDs, or accession numbers (the UID where there is none)."""
        picked = np.flatnonzero(mask)
        order = picked[np.argsort(self.times["started"][picked], kind="stable")][:limit]
        if accession:
            return [self.accession_number[i] or self.study_instance_uid[i] for i in order]
        return [self.study_instance_uid[i] for i in order]


def check_exam_filters(filters: Filters) -> None:
    """Exams are broken down and filtered by modality and department only."""
    for dim in (*filters.include, *filters.exclude):
        if dim not in EXAM_DIMENSIONS:
            raise InvalidStatsQuery(
                f"lead times and exams can be filtered by "
                f"{' and '.join(d.value for d in EXAM_DIMENSIONS)}, not {dim.value}")


def _passes(filters: Filters, values: Mapping[Dimension, str]) -> bool:
    for dim, allowed in filters.include.items():
        if values.get(dim, "") not in allowed:
            return False
    return all(values.get(dim, "") not in refused for dim, refused in filters.exclude.items())


def filter_exams(exams: Exams, filters: Filters) -> Exams:
    """The exams whose modality and department pass `include` / `exclude`."""
    if not filters.include and not filters.exclude:
        return exams
    columns = {Dimension.MODALITY: exams.modality, Dimension.DEPARTMENT: exams.department}
    keep = np.ones(len(exams), dtype=bool)
    for dim, allowed in filters.include.items():
        keep &= np.isin(columns[dim], sorted(allowed))
    for dim, refused in filters.exclude.items():
        keep &= ~np.isin(columns[dim], sorted(refused))
    return exams.where(keep)


def filter_arrivals(by_modality: Mapping[str, Counter[int]],
                    filters: Filters) -> dict[str, Counter[int]] | None:
    """The arrival histograms that pass the filters; None when a filter names a dimension
    they are not kept by (only modality)."""
    if any(d is not Dimension.MODALITY for d in (*filters.include, *filters.exclude)):
        return None
    return {m: h for m, h in by_modality.items()
            if _passes(filters, {Dimension.MODALITY: m})}


def sorted_percentiles(ordered: NDArray[np.float64],
                       points: tuple[int, ...] = (50, 90)) -> dict[str, float]:
    """`vna.quality.percentiles` (nearest rank, to a tenth) of values sorted already."""
    n = len(ordered)
    if n == 0:
        return {}
    return {f"p{p}": round(float(ordered[max(1, -(-p * n // 100)) - 1]), 1) for p in points}


def _distribution(seconds: NDArray[np.float64], mask: NDArray[np.bool_]) -> Distribution:
    values = np.sort(seconds[mask])
    return Distribution(len(values), sorted_percentiles(values))


def chain(exams: Exams) -> dict[str, Distribution]:
    """Every lead time of CHAIN over the exams where both of its ends are known: count and
    nearest-rank p50/p90 in seconds, overall, by modality and by department."""
    modalities, modality_of = np.unique(exams.modality.astype(str), return_inverse=True)
    departments, department_of = np.unique(exams.department.astype(str),
                                           return_inverse=True)
    out = {}
    for name, start, end in CHAIN:
        seconds = exams.seconds(start, end)
        known = ~np.isnan(seconds)

        overall = _distribution(seconds, known)
        by_modality = {str(m): _distribution(seconds, known & (modality_of == i))
                       for i, m in enumerate(modalities)}
        by_department = {str(d): _distribution(seconds, known & (department_of == i))
                         for i, d in enumerate(departments)}
        out[name] = Distribution(overall.n, overall.percentiles,
                                 {k: v for k, v in by_modality.items() if v.n},
                                 {k: v for k, v in by_department.items() if v.n})
    return out
