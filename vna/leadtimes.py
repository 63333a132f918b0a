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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vna.quality import Distribution, percentiles
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

MPPS = "mpps"
IMAGES = "images"


@dataclass(frozen=True, slots=True)
class Exam:
    """One exam's chain, times in seconds since the epoch (UTC), None where unknown.

    `started`: the first MPPS start (steps not DISCONTINUED), else the images' earliest
    PPS start; `completed_from` / `ended`: the first start and the last end of its COMPLETED
    steps, else the images' PPS start and end; `archived`: when its last instance arrived;
    `reported`: the final report of its accession number."""

    study_instance_uid: str
    accession_number: str | None
    modality: str  # '' = unknown
    department: str  # the order's, else what its series say; '' = unknown
    source: str  # MPPS or IMAGES: where `started` and `ended` come from
    ordered: bool  # linked to an order (imaging_order)
    referral: float | None
    scheduled: float | None
    started: float | None
    completed_from: float | None
    ended: float | None
    archived: float | None
    reported: float | None


# The lead times, in the order of the chain: name, from, to (Exam attribute names).
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


def filter_exams(exams: Iterable[Exam], filters: Filters) -> list[Exam]:
    """The exams whose modality and department pass `include` / `exclude`."""
    if not filters.include and not filters.exclude:
        return list(exams)
    return [e for e in exams if _passes(filters, {Dimension.MODALITY: e.modality,
                                                  Dimension.DEPARTMENT: e.department})]


def filter_arrivals(by_modality: Mapping[str, Counter[int]],
                    filters: Filters) -> dict[str, Counter[int]] | None:
    """The arrival histograms that pass the filters; None when a filter names a dimension
    they are not kept by (only modality)."""
    if any(d is not Dimension.MODALITY for d in (*filters.include, *filters.exclude)):
        return None
    return {m: h for m, h in by_modality.items()
            if _passes(filters, {Dimension.MODALITY: m})}


def chain(exams: Iterable[Exam]) -> dict[str, Distribution]:
    """Every lead time of CHAIN over the exams where both of its ends are known: count and
    nearest-rank p50/p90 in seconds, overall, by modality and by department."""
    values: dict[str, list[tuple[str, str, float]]] = {name: [] for name, _, _ in CHAIN}
    for e in exams:
        for name, start, end in CHAIN:
            a, b = getattr(e, start), getattr(e, end)
            if a is not None and b is not None:
                values[name].append((e.modality, e.department, round(b - a, 3)))
    return {name: _distribution(rows) for name, rows in values.items()}


def _distribution(rows: list[tuple[str, str, float]]) -> Distribution:
    by_modality: dict[str, list[float]] = {}
    by_department: dict[str, list[float]] = {}
    for modality, department, seconds in rows:
        by_modality.setdefault(modality, []).append(seconds)
        by_department.setdefault(department, []).append(seconds)
    return Distribution(
        len(rows), percentiles([r[2] for r in rows]),
        {m: Distribution(len(v), percentiles(v)) for m, v in sorted(by_modality.items())},
        {d: Distribution(len(v), percentiles(v)) for d, v in sorted(by_department.items())})
