"""Data-quality rules and the facts they are computed from: pure functions.

Times come from the DICOM header as the modality wrote them (local time of the region,
VNA_TIMEZONE); the archive's own times are UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from vna.leadtimes import Exams

SHORT_EXAM_SECONDS = 60  # a CT or MR exam "under a minute" is a start/stop misuse
LATE_ARRIVAL = timedelta(hours=24)
SHORT_EXAM_MODALITIES = frozenset({"CT", "MR"})
# An MPPS COMPLETED this long ago should have its images archived: a modality sends them
# as the exam goes or right after.
MPPS_IMAGES_GRACE_SECONDS = 3600

# A Swedish personnummer or samordningsnummer: YYMMDD or YYYYMMDD, optionally - or +,
# then NNNC. The check digit C is Luhn over the ten digits YYMMDDNNN.
_PNR = re.compile(r"^(\d{2})?(\d{2})(\d{2})(\d{2})[-+]?(\d{3})(\d)$")


def looks_like_personnummer(patient_id: str) -> bool:
    return _PNR.match(patient_id.strip()) is not None


def valid_personnummer(patient_id: str) -> bool:
    """Luhn check digit and a real date (day + 60 for a samordningsnummer)."""
    m = _PNR.match(patient_id.strip())
    if m is None:
        return False
    century, yy, mm, dd, serial, check = m.groups()
    day = int(dd) - 60 if int(dd) > 60 else int(dd)
    year = int((century or "19") + yy)
    try:
        datetime(year if century else 2000 + int(yy), int(mm), day)
    except ValueError:
        return False
    digits = yy + mm + dd + serial
    total = 0
    for i, ch in enumerate(digits):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return (10 - total % 10) % 10 == int(check)


def json_value(header: dict[str, Any], tag: str) -> str | None:
    """The first value of an attribute in a DICOM JSON header (a PN's alphabetic form)."""
    element = header.get(tag)
    values = element.get("Value") if element else None
    if not values:
        return None
    v = values[0]
    return v.get("Alphabetic") if isinstance(v, dict) else str(v)


def dicom_datetime(date: str | None, time: str | None, tz: ZoneInfo) -> datetime | None:
    """DA + TM (as the modality wrote them, local time) -> an aware datetime."""
    if not date or len(date) < 8:
        return None
    digits = "".join(c for c in (time or "") if c.isdigit() or c == ".")
    whole, _, frac = digits.partition(".")
    whole = whole[:6].ljust(6, "0")
    try:
        t = datetime.strptime(date[:8] + whole, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if frac:
        t = t.replace(microsecond=int(frac[:6].ljust(6, "0")))
    return t.replace(tzinfo=tz)


def acquired_at(header: dict[str, Any], tz: ZoneInfo) -> datetime | None:
    """When the image was made: AcquisitionDateTime, else Acquisition, Content, Series or
    Study date and time, the first that is there."""
    adt = json_value(header, "0008002A")
    if adt and len(adt) >= 8:
        return dicom_datetime(adt[:8], adt[8:] or None, tz)
    for date_tag, time_tag in (("00080022", "00080032"), ("00080023", "00080033"),
                               ("00080021", "00080031"), ("00080020", "00080030")):
        t = dicom_datetime(json_value(header, date_tag), json_value(header, time_tag), tz)
        if t is not None:
            return t
    return None


def procedure_step(header: dict[str, Any], tz: ZoneInfo) -> tuple[datetime | None,
                                                                   datetime | None]:
    """Performed Procedure Step start and end, where the modality recorded them."""
    return (dicom_datetime(json_value(header, "00400244"), json_value(header, "00400245"), tz),
            dicom_datetime(json_value(header, "00400250"), json_value(header, "00400251"), tz))


def patient_name(header: dict[str, Any]) -> str | None:
    name = json_value(header, "00100010")
    return name.strip().upper() if name else None


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90)) -> dict[str, float]:
    """Nearest-rank percentiles, e.g. {"p50": ..., "p90": ...}; empty for no values."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {}
    for p in points:
        rank = max(1, -(-p * len(ordered) // 100))  # ceil(p/100 * n)
        out[f"p{p}"] = round(ordered[rank - 1], 1)
    return out


@dataclass(frozen=True)
class Distribution:
    """How many values there are and their percentiles ({"p50": ..., "p90": ...}; empty
    without values), overall, by modality and (lead times of exams) by department."""

    n: int
    percentiles: dict[str, float]
    by_modality: dict[str, Distribution] = field(default_factory=dict)
    by_department: dict[str, Distribution] = field(default_factory=dict)


Examples = tuple[int, list[str]]  # how many, and the first ten


@dataclass(frozen=True)
class QualityFacts:
    """What the quality rules read for a period (`storage.index.stats` gathers them)."""

    exams: Exams  # the period's exams (vna.leadtimes)
    late_arrivals: Examples
    missing_referrer: Examples
    missing_accession: Examples
    patient_ids: list[str]
    several_names: Examples
    patient_conflicts: Examples
    uid_conflicts: Examples
    not_performed: Examples  # accession numbers
    completed_without_images: Examples  # MPPS SOP Instance UIDs
    images_without_mpps: Examples  # Study Instance UIDs
    merges: Examples  # "old ID -> surviving ID"
    now: float  # seconds since the epoch: what "N days after" is counted to
    report_missing_days: int  # VNA_REPORT_MISSING_DAYS


@dataclass(frozen=True)
class Finding:
    """One data-quality rule's result: how many, and up to ten examples."""

    rule: str
    description: str
    count: int
    examples: list[str]


def findings(facts: QualityFacts) -> list[Finding]:
    """Every rule's findings in the period, in a fixed order."""
    import numpy as np

    exams = facts.exams
    seconds = exams.seconds("completed_from", "ended")
    short = seconds < SHORT_EXAM_SECONDS  # False where unknown (NaN)
    short_images = short & ~exams.by_mpps & np.isin(exams.modality,
                                                    sorted(SHORT_EXAM_MODALITIES))
    overdue = facts.now - facts.report_missing_days * 86_400
    with np.errstate(invalid="ignore"):
        unreported = (exams.ordered & np.isnan(exams.times["reported"])
                      & (exams.times["ended"] < overdue))
    short_mpps = short & exams.by_mpps

    def found(mask: Any, accession: bool = False) -> tuple[int, list[str]]:
        return int(mask.sum()), exams.first(mask, accession=accession)

    invalid = [pid for pid in facts.patient_ids
               if looks_like_personnummer(pid) and not valid_personnummer(pid)]
    return [
        Finding("short_ct_mr_exam", f"CT/MR exam under {SHORT_EXAM_SECONDS} s from "
                f"performed procedure step start to end (images; exams without MPPS)",
                *found(short_images)),
        Finding("missing_referrer", "study without ReferringPhysicianName",
                *facts.missing_referrer),
        Finding("missing_accession_number", "study without AccessionNumber",
                *facts.missing_accession),
        Finding("invalid_personnummer", "patient ID shaped like a Swedish personnummer or "
                "samordningsnummer whose check digit or date is wrong",
                len(invalid), invalid[:10]),
        Finding("several_names", "one patient ID with several patient names",
                *facts.several_names),
        Finding("late_arrival", "instance archived more than 24 h after it was acquired",
                *facts.late_arrivals),
        Finding("patient_conflict", "instance of a study (or SOP Instance) the archive holds "
                "for another patient: refused, or filed under its own patient "
                "(VNA_PATIENT_CONFLICT); examples are the studies", *facts.patient_conflicts),
        Finding("uid_conflict", "SOP Instance UID archived with other content or in another "
                "series or study, or a series archived in another study: refused; examples "
                "are the studies sent", *facts.uid_conflicts),
        Finding("order_not_performed", "order still SCHEDULED after its scheduled day; "
                "examples are accession numbers", *facts.not_performed),
        Finding("mpps_completed_without_images", f"MPPS COMPLETED more than "
                f"{MPPS_IMAGES_GRACE_SECONDS // 60} min ago with no instance of its study or "
                f"performed series archived; examples are MPPS SOP Instance UIDs",
                *facts.completed_without_images),
        Finding("images_without_mpps", "study from an AE that sends MPPS (since its first "
                "one) without any MPPS for it; examples are the studies",
                *facts.images_without_mpps),
        Finding("short_mpps_exam", f"exam under {SHORT_EXAM_SECONDS} s from its first "
                f"COMPLETED MPPS start to its last end", *found(short_mpps)),
        Finding("report_missing", f"ordered exam without a final report "
                f"{facts.report_missing_days} days (VNA_REPORT_MISSING_DAYS) after it ended; "
                f"examples are accession numbers", *found(unreported, accession=True)),
        Finding("patient_merge", "patients merged into another (HL7 A40); examples are "
                "'merged ID -> surviving ID'", *facts.merges),
    ]
