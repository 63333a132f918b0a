"""Statistics API latency on a region-year index: every stats endpoint, SQLite and PostgreSQL.

Generates, by direct inserts, the index a region's archive holds after a year: `--count`
instances (default 1,000,000) over the 365 days ending today, in studies of CT/MR/US/CR/DX/MG
with realistic shares, series and instance counts, sizes, 6 departments, ~40 referrers, 10
stations/source AEs, weekday and daytime peaks (local time, Europe/Stockholm); one
`instance_fact` per instance (acquisition time, performed procedure step, patient name and ID,
with the flaws the quality rules look for), one `study_fact` per study; and `stats_hourly` and
`stats_arrival_hourly`, the rollups the workers would have built from those instances. Then
starts `vna api` on that database and times each stats endpoint (warm-up, then `--runs`
requests each over one kept-open connection) for the last 30 days of the data and for the
whole year, and the CSV export of the instances' facts.

Targets (30-day period, the default one): every endpoint < 200 ms median on PostgreSQL,
< 500 ms on SQLite, at 1,000,000 instances.

    .venv/bin/python benchmarks/stats.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import DEFAULT_WORKDIR  # noqa: E402
from documents import ApiServer  # noqa: E402
from servers import (  # noqa: E402
    PG_ADMIN_DSN,
    REGISTRY,
    REPO,
    BenchError,
    cleanup_on_exit,
    create_database,
    drop_database,
    first_line,
    make_tempdir,
)

from vna.leadtimes import arrival_bin  # noqa: E402

TZ = ZoneInfo("Europe/Stockholm")  # VNA_TIMEZONE's default: the days and hours of the stats
DATABASES = ("sqlite", "postgres")
TARGET_MS = {"sqlite": 500.0, "postgres": 200.0}
GENERATOR_VERSION = 3  # bump when the generated data changes: cached indexes are rebuilt
SEED = 20240601
BATCH_INSTANCES = 25_000  # rows per insert batch (one transaction each)

ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("summary", "/api/v1/stats/summary"),
    ("volumes", "/api/v1/stats/volumes?interval=day&dimension=modality"),
    ("workload", "/api/v1/stats/workload"),
    ("throughput", "/api/v1/stats/throughput"),
    ("storage", "/api/v1/stats/storage?interval=month&dimension=department"),
    ("leadtimes", "/api/v1/stats/leadtimes"),
    ("quality", "/api/v1/stats/quality"),
)
EXPORT = "/api/v1/stats/export?dataset=instances&format=csv"
PERIOD_DAYS = (30, 365)


# -- what a region's year looks like --------------------------------------------------------------

@dataclass(frozen=True)
class Station:
    name: str
    ae: str
    modality: str
    department: str


DEPARTMENTS = ("Röntgen CSK", "Röntgen Hässleholm", "Akutröntgen", "Barnröntgen",
               "Mammografi", "Ultraljud")
INSTITUTIONS = {"Röntgen Hässleholm": "Hässleholms sjukhus"}
STATIONS = (
    Station("CSKCT01", "CSK_CT01", "CT", "Röntgen CSK"),
    Station("AKUTCT01", "AKUT_CT01", "CT", "Akutröntgen"),
    Station("CSKMR01", "CSK_MR01", "MR", "Röntgen CSK"),
    Station("HLMMR01", "HLM_MR01", "MR", "Röntgen Hässleholm"),
    Station("ULJUS01", "ULJ_US01", "US", "Ultraljud"),
    Station("BARNUS01", "BARN_US01", "US", "Barnröntgen"),
    Station("AKUTCR01", "AKUT_CR01", "CR", "Akutröntgen"),
    Station("CSKDX01", "CSK_DX01", "DX", "Röntgen CSK"),
    Station("HLMDX01", "HLM_DX01", "DX", "Röntgen Hässleholm"),
    Station("MAMMG01", "MAM_MG01", "MG", "Mammografi"),
)

# Local hour-of-day weights: round the clock with a daytime peak (acute), office hours only,
# and MR's long day.
_ACUTE = [0.1] * 7 + [0.6] + [1.0] * 4 + [0.7] + [1.0] * 3 + [0.6] + [0.35] * 3 + [0.2] * 4
_OFFICE = [0.0] * 7 + [0.3] + [1.0] * 4 + [0.5] + [1.0] * 3 + [0.3] + [0.0] * 7
_LONG_DAY = [0.0] * 7 + [0.8] + [1.0] * 4 + [0.8] + [1.0] * 3 + [0.9] + [0.6] * 3 + [0.1] * 4


@dataclass(frozen=True)
class Profile:
    """How one modality's studies look."""

    share: float  # of studies
    sop_class: str
    series: tuple[int, int]  # min, max series per study
    images: tuple[float, float]  # per series: lognormal median, sigma (1 = one image)
    size: int  # bytes per instance, uncompressed
    matrix: tuple[int, int]
    exam_minutes: tuple[float, float]  # PPS start to end
    body_parts: tuple[tuple[str, float], ...]
    hours: list[float]
    weekend: float  # weight of a Saturday or Sunday against a weekday


PROFILES: dict[str, Profile] = {
    "CT": Profile(0.18, "1.2.840.10008.5.1.4.1.1.2", (3, 5), (45, 0.6), 527_000, (512, 512),
                  (3, 20), (("HEAD", 30), ("CHEST", 25), ("ABDOMEN", 30), ("SPINE", 8),
                            ("EXTREMITY", 7)), _ACUTE, 0.35),
    "MR": Profile(0.09, "1.2.840.10008.5.1.4.1.1.4", (4, 9), (28, 0.5), 133_000, (256, 256),
                  (15, 45), (("HEAD", 35), ("KNEE", 15), ("SPINE", 25), ("ABDOMEN", 15),
                            ("PELVIS", 10)), _LONG_DAY, 0.1),
    "US": Profile(0.15, "1.2.840.10008.5.1.4.1.1.6.1", (1, 1), (20, 0.6), 922_000, (480, 640),
                  (10, 30), (("ABDOMEN", 45), ("NECK", 15), ("", 30), ("PELVIS", 10)),
                  _OFFICE, 0.02),
    "CR": Profile(0.12, "1.2.840.10008.5.1.4.1.1.1", (1, 3), (1, 0), 10_240_000, (2500, 2048),
                  (2, 10), (("CHEST", 45), ("HAND", 10), ("FOOT", 10), ("KNEE", 10),
                            ("PELVIS", 10), ("SHOULDER", 10), ("", 5)), _ACUTE, 0.35),
    "DX": Profile(0.32, "1.2.840.10008.5.1.4.1.1.1.1", (1, 4), (1, 0), 18_000_000,
                  (3000, 3000), (2, 10), (("CHEST", 40), ("HAND", 10), ("FOOT", 10),
                                          ("KNEE", 12), ("SPINE", 10), ("PELVIS", 8),
                                          ("SHOULDER", 8), ("", 2)), _ACUTE, 0.35),
    "MG": Profile(0.14, "1.2.840.10008.5.1.4.1.1.1.2", (4, 6), (1, 0), 27_300_000,
                  (4096, 3328), (5, 15), (("BREAST", 100),), _OFFICE, 0.02),
}
US_CINE_CLASS = "1.2.840.10008.5.1.4.1.1.3.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"

SURNAMES = ("Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson",
            "Persson", "Svensson", "Gustafsson", "Pettersson", "Jonsson", "Lindberg", "Berg",
            "Åberg", "Lindqvist", "Holm", "Sjöberg", "Ek", "Öberg", "Hansson", "Bengtsson")
GIVEN_F = ("Anna", "Maria", "Karin", "Eva", "Sara", "Emma", "Ingrid", "Elin", "Linnea",
           "Kerstin", "Margareta", "Astrid", "Maja", "Ebba")
GIVEN_M = ("Erik", "Lars", "Johan", "Anders", "Per", "Nils", "Olof", "Gustav", "Axel",
           "Karl", "Mikael", "Sven", "Oskar", "Ali")
REFERRERS = tuple(f"{SURNAMES[(i * 7) % len(SURNAMES)]}^{(GIVEN_F + GIVEN_M)[i % 28]}"
                  for i in range(40))


def _luhn(digits: str) -> int:
    total = 0
    for i, ch in enumerate(digits):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return (10 - total % 10) % 10


def personnummer(rng: random.Random, birth: date, male: bool) -> str:
    """A 12-digit Swedish ID: mostly valid personnummer, some samordningsnummer, a few with
    a wrong check digit or an impossible date, a few local reserve numbers."""
    r = rng.random()
    if r < 0.01:
        return f"RES{rng.randrange(10**8):08d}"  # not personnummer-shaped
    day = birth.day + 60 if r < 0.03 else birth.day
    serial = rng.randrange(100) * 10 + (rng.choice((1, 3, 5, 7, 9)) if male else
                                        rng.choice((0, 2, 4, 6, 8)))
    body = f"{birth.year % 100:02d}{birth.month:02d}{day:02d}{serial:03d}"
    check = _luhn(body)
    if r > 0.996:
        check = (check + 1 + rng.randrange(9)) % 10  # wrong check digit
    if 0.994 < r <= 0.996:  # a date that does not exist, check digit fitted to it
        body = f"{birth.year % 100:02d}{birth.month:02d}3{rng.choice('23')}{serial:03d}"
        check = _luhn(body)
    return f"{birth.year // 100}{body}{check}"


# -- the plan: studies, then rows ---------------------------------------------------------------

@dataclass
class PlannedSeries:
    station: Station
    body_part: str
    images: int


@dataclass
class PlannedStudy:
    modality: str
    start: datetime  # procedure step start, UTC
    minutes: float  # exam duration
    delay: float  # seconds from acquisition to arrival
    series: list[PlannedSeries]

    @property
    def instances(self) -> int:
        return sum(s.images for s in self.series)

    def last_arrival(self) -> datetime:
        return self.start + timedelta(minutes=self.minutes, seconds=self.delay + 60)


def _pick(rng: random.Random, weighted: Sequence[tuple[str, float]]) -> str:
    return rng.choices([k for k, _ in weighted], [w for _, w in weighted])[0]


class Region:
    """A deterministic region-year of `count` instances ending at `end` (local time)."""

    def __init__(self, count: int, end: datetime, seed: int = SEED) -> None:
        self.count = count
        self.end = end.astimezone(UTC)
        self.rng = random.Random(seed)
        last_day = end.astimezone(TZ).date()
        self.days = [last_day - timedelta(days=364 - i) for i in range(365)]
        self.slots: dict[str, list[float]] = {}
        for mod, p in PROFILES.items():
            cum, acc = [], 0.0
            for d in self.days:
                wd = p.weekend if d.weekday() >= 5 else 1.0
                for h in range(24):
                    acc += wd * p.hours[h]
                    cum.append(acc)
            self.slots[mod] = cum

    def _start(self, modality: str) -> datetime:
        slot = self.rng.choices(range(365 * 24), cum_weights=self.slots[modality])[0]
        d = self.days[slot // 24]
        local = datetime(d.year, d.month, d.day, slot % 24, self.rng.randrange(60),
                         self.rng.randrange(60), tzinfo=TZ)
        return local.astimezone(UTC)

    def _delay(self) -> float:
        r = self.rng.random()
        if r < 0.85:
            return self.rng.lognormvariate(5.0, 0.8)  # median 2.5 min
        if r < 0.98:
            return self.rng.uniform(600, 6 * 3600)
        return self.rng.uniform(26 * 3600, 5 * 86400)  # late: a day or more

    def plan(self) -> list[PlannedStudy]:
        """Studies until `count` instances, in order of their start."""
        rng = self.rng
        mods = list(PROFILES)
        shares = [PROFILES[m].share for m in mods]
        by_modality = {m: [s for s in STATIONS if s.modality == m] for m in mods}
        studies: list[PlannedStudy] = []
        total = 0
        while total < self.count:
            mod = rng.choices(mods, shares)[0]
            p = PROFILES[mod]
            station = rng.choice(by_modality[mod])
            body = _pick(rng, p.body_parts)
            series = []
            for j in range(rng.randint(*p.series)):
                median, sigma = p.images
                if mod == "CT" and j == 0:
                    n = rng.randint(1, 3)  # the scout
                elif sigma:
                    n = max(1, round(rng.lognormvariate(0, sigma) * median))
                else:
                    n = 1
                series.append(PlannedSeries(station, body, n))
            minutes = rng.uniform(*p.exam_minutes)
            if mod in ("CT", "MR") and rng.random() < 0.01:
                minutes = rng.uniform(10, 55) / 60  # start/stop misuse: under a minute
            study = PlannedStudy(mod, self.end, minutes, self._delay(), series)
            for _ in range(50):
                study.start = self._start(mod)
                if study.last_arrival() <= self.end:
                    break
            else:
                study.start = self.end - (study.last_arrival() - study.start)
            over = total + study.instances - self.count
            while over > 0:  # trim the last study to the exact count
                s = study.series[-1]
                cut = min(over, s.images - 1) or s.images
                s.images -= cut
                over -= cut
                if not s.images:
                    study.series.pop()
            studies.append(study)
            total += study.instances
        studies.sort(key=lambda s: s.start)
        return studies


@dataclass
class Batch:
    """Rows of each table, in insert order (parents first)."""

    tables: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        self.tables.setdefault(table, []).append(row)

    def size(self) -> int:
        return len(self.tables.get("instance", ()))


COLUMNS: dict[str, tuple[str, ...]] = {
    "patient": ("id", "patient_id", "issuer_of_patient_id", "patient_name", "patient_name_upper",
                "patient_birth_date", "patient_sex"),
    "study": ("id", "patient_fk", "study_instance_uid", "study_date", "study_time",
              "accession_number", "study_id", "study_description", "referring_physician_name",
              "referring_physician_name_upper", "institution_name", "patient_age",
              "created_at"),
    "series": ("id", "study_fk", "series_instance_uid", "modality", "series_number",
               "series_description", "series_date", "series_time", "body_part_examined",
               "station_name", "institutional_department_name", "protocol_name",
               "performed_procedure_step_start_date", "performed_procedure_step_start_time"),
    "instance": ("id", "series_fk", "sop_instance_uid", "sop_class_uid", "instance_number",
                 "content_date", "content_time", "acquisition_date", "acquisition_time", "rows",
                 "columns", "number_of_frames", "transfer_syntax_uid", "source_aet",
                 "received_at", "size", "sha256", "dataset_offset", "storage_key"),
    "instance_fact": ("sop_instance_uid", "study_instance_uid", "modality", "patient_id",
                      "patient_name", "received_at", "acquired_at", "pps_start", "pps_end",
                      "arrival_seconds"),
    "study_fact": ("study_instance_uid", "modality", "first_received_at", "pps_start",
                   "pps_end", "patient_id", "patient_name", "several_names"),
    "stats_arrival_hourly": ("id", "hour", "modality", "bin", "count"),
    "stats_hourly": ("id", "hour", "kind", "modality", "department", "referrer", "source_ae",
                     "station", "body_part", "document_class", "count", "bytes"),
    "outbox_event": ("id", "created_at", "kind", "subject", "processed_at", "attempts",
                     "last_error"),
}
ORDER = ("patient", "study", "series", "instance", "instance_fact", "study_fact",
         "outbox_event", "stats_hourly", "stats_arrival_hourly")


@dataclass
class Patient:
    id: int
    patient_id: str
    name: str
    variant: str | None  # another spelling some studies carry
    birth: date


def _da(t: date) -> str:
    return f"{t.year:04d}{t.month:02d}{t.day:02d}"


def _tm(t: datetime) -> str:
    return f"{t.hour:02d}{t.minute:02d}{t.second:02d}.{t.microsecond:06d}"


def generate(region: Region, outbox: bool) -> Iterator[Batch]:
    """The region's rows in batches of about BATCH_INSTANCES instances; `stats_hourly` last."""
    rng = region.rng
    studies = region.plan()
    n_patients = max(1, round(len(studies) * 0.6))
    patients: list[Patient] = []
    seen_ids: set[str] = set()
    batch = Batch()
    for i in range(n_patients):
        male = rng.random() < 0.48
        birth = date(1925, 1, 1) + timedelta(days=rng.randrange(99 * 365))
        given = rng.choice(GIVEN_M if male else GIVEN_F)
        name = f"{rng.choice(SURNAMES)}^{given}"
        variant = None
        if rng.random() < 0.01:
            variant = f"{name} {rng.choice(GIVEN_M if male else GIVEN_F)}"
        pid = personnummer(rng, birth, male)
        while pid in seen_ids:  # a region-year of patients: birthday collisions happen
            pid = personnummer(rng, birth, male)
        seen_ids.add(pid)
        pat = Patient(i + 1, pid, name, variant, birth)
        patients.append(pat)
        batch.add("patient", (pat.id, pat.patient_id, "", name, name.upper(), _da(birth),
                              "M" if male else "F"))
    who = list(range(n_patients)) + [int(n_patients * rng.random() ** 2)
                                     for _ in range(len(studies) - n_patients)]
    rng.shuffle(who)

    rollup: dict[tuple[Any, ...], list[int]] = {}
    arrivals: Counter[tuple[datetime, str, int]] = Counter()
    series_id = instance_id = 0
    for study_no, (plan, p_index) in enumerate(zip(studies, who, strict=False), start=1):
        pat = patients[p_index]
        prof = PROFILES[plan.modality]
        offset = plan.start.astimezone(TZ).utcoffset() or timedelta(0)
        local_start = (plan.start + offset).replace(tzinfo=None)
        study_uid = f"{UID_ROOT}.{10**7 + study_no}"
        referrer = None if rng.random() < 0.03 else rng.choice(REFERRERS)
        accession = None if rng.random() < 0.02 else f"RAD{10**7 + study_no}"
        dept0 = plan.series[0].station.department
        age = (local_start.date() - pat.birth).days // 365
        pps: tuple[datetime, datetime] | None = (
            None if plan.modality in ("CR", "DX") and rng.random() < 0.3 else
            (plan.start, plan.start + timedelta(minutes=plan.minutes)))
        name = pat.variant if pat.variant and rng.random() < 0.5 else pat.name
        j2k = rng.random() < 0.2
        first_received: datetime | None = None
        study_row_at = len(batch.tables.get("study", ()))
        batch.add("study", (study_no, pat.id, study_uid, _da(local_start), _tm(local_start),
                            accession, str(study_no % 10**6), f"{plan.modality} "
                            f"{(plan.series[0].body_part or 'undersökning').lower()}",
                            referrer, referrer.upper() if referrer else None,
                            INSTITUTIONS.get(dept0, "Centralsjukhuset Kristianstad"),
                            f"{max(age, 0):03d}Y", None))
        n_total = plan.instances
        step = plan.minutes * 60 / max(n_total, 1)
        k_all = 0
        for j, ser in enumerate(plan.series):
            series_id += 1
            st = ser.station
            series_uid = f"{study_uid}.{100 + j + 1}"
            s_local = local_start + timedelta(seconds=k_all * step)
            dept = None if rng.random() < 0.01 else st.department
            station = None if rng.random() < 0.005 else st.name
            batch.add("series", (series_id, study_no, series_uid, plan.modality, str(j + 1),
                                 f"{ser.body_part or plan.modality} {j + 1}", _da(s_local),
                                 _tm(s_local), ser.body_part or None, station, dept,
                                 f"{plan.modality}_{ser.body_part or 'STD'}",
                                 _da(local_start) if pps else None,
                                 _tm(local_start) if pps else None))
            cine = plan.modality == "US" and rng.random() < 0.05
            sop_class = US_CINE_CLASS if cine else prof.sop_class
            base = 18_400_000 if cine else prof.size
            if j2k:
                base //= 2
            no_acq = rng.random() < 0.005
            for k in range(ser.images):
                instance_id += 1
                acquired = plan.start + timedelta(seconds=k_all * step)
                received = acquired + timedelta(seconds=plan.delay + k * 0.05)
                if first_received is None or received < first_received:
                    first_received = received
                a_local = acquired + offset
                sop = f"{series_uid}.{10**5 + k + 1}"
                size = base + rng.randrange(4096)
                batch.add("instance", (
                    instance_id, series_id, sop, sop_class, str(k + 1), _da(a_local),
                    _tm(a_local), None if no_acq else _da(a_local),
                    None if no_acq else _tm(a_local), prof.matrix[0], prof.matrix[1],
                    60 if cine else None, J2K_LOSSLESS if j2k else EXPLICIT_LE, st.ae,
                    received, size, f"{rng.getrandbits(256):064x}", 300 + rng.randrange(900),
                    f"dicom/{study_uid}/{series_uid}/{sop}.dcm"))
                delay = None if no_acq else (received - acquired).total_seconds()
                batch.add("instance_fact", (
                    sop, study_uid, plan.modality, pat.patient_id, name, received,
                    None if no_acq else acquired, pps[0] if pps else None,
                    pps[1] if pps else None, delay))
                if outbox:
                    batch.add("outbox_event", (
                        instance_id, received, "instance.stored", sop,
                        received + timedelta(seconds=0.5 + rng.random() * 3), 0, None))
                key = (received.replace(minute=0, second=0, microsecond=0), plan.modality,
                       dept or "", referrer or "", st.ae, station or "", ser.body_part)
                agg = rollup.get(key)
                if agg is None:
                    rollup[key] = [1, size]
                else:
                    agg[0] += 1
                    agg[1] += size
                if delay is not None:
                    arrivals[(key[0], plan.modality, arrival_bin(delay))] += 1
                k_all += 1
        row = batch.tables["study"][study_row_at]
        batch.tables["study"][study_row_at] = (*row[:-1], first_received)
        batch.add("study_fact", (study_uid, plan.modality, first_received,
                                 pps[0] if pps else None, pps[1] if pps else None,
                                 pat.patient_id, name, False))
        if batch.size() >= BATCH_INSTANCES:
            yield batch
            batch = Batch()
    for n, (key, (count, size)) in enumerate(sorted(rollup.items()), start=1):
        hour, mod, dept, ref, ae, station, body = key
        batch.add("stats_hourly", (n, hour, "instance", mod, dept, ref, ae, station, body, "",
                                   count, size))
    for n, ((hour, mod, b), count) in enumerate(sorted(arrivals.items()), start=1):
        batch.add("stats_arrival_hourly", (n, hour, mod, b, count))
    yield batch


# -- loading --------------------------------------------------------------------------------------

class Loader:
    """Bulk inserts into one database; counts the seconds spent in the database."""

    seconds = 0.0

    def load(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        self._load(batch)
        self.seconds += time.perf_counter() - t0

    def _load(self, batch: Batch) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class SqliteLoader(Loader):
    """sqlite3 executemany, one transaction per batch, synchronous=OFF; times converted by
    SQLAlchemy's own SQLite DateTime processor, so they read back as the archive wrote them."""

    def __init__(self, path: Path) -> None:
        from sqlalchemy import DateTime
        from sqlalchemy.dialects.sqlite import dialect

        d = dialect()
        proc = DateTime(timezone=True).dialect_impl(d).bind_processor(d)
        assert proc is not None
        self.proc: Callable[[Any], Any] = proc
        self.conn = sqlite3.connect(path, isolation_level=None)
        for pragma in ("synchronous=OFF", "journal_mode=OFF", "cache_size=-1000000",
                       "temp_store=MEMORY", "foreign_keys=OFF"):
            self.conn.execute(f"PRAGMA {pragma}")
        self.dt_cols = {t: [i for i, c in enumerate(cols) if c.endswith("_at") or c in (
            "hour", "pps_start", "pps_end")] for t, cols in COLUMNS.items()}

    def _load(self, batch: Batch) -> None:
        proc = self.proc
        self.conn.execute("BEGIN")
        for table in ORDER:
            rows: Sequence[Sequence[Any]] | None = batch.tables.get(table)
            if not rows:
                continue
            idx = self.dt_cols[table]
            if idx:
                conv = []
                for r in rows:
                    lr = list(r)
                    for i in idx:
                        if lr[i] is not None:
                            lr[i] = proc(lr[i])
                    conv.append(lr)
                rows = conv
            cols = COLUMNS[table]
            self.conn.executemany(
                f'INSERT INTO {table} ({", ".join(cols)}) VALUES '
                f'({", ".join("?" * len(cols))})', rows)
        self.conn.execute("COMMIT")

    def finish(self) -> None:
        t0 = time.perf_counter()
        # The archive never runs ANALYZE on SQLite: the planner sees what production sees.
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.close()
        self.seconds += time.perf_counter() - t0


class PgLoader(Loader):
    """COPY (psycopg 3) per table, one transaction per batch; then the sequences are set past
    the explicit ids and VACUUM ANALYZE runs (what autovacuum does after a year of inserts)."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn)

    def _load(self, batch: Batch) -> None:
        with self.conn.cursor() as cur:
            for table in ORDER:
                rows = batch.tables.get(table)
                if not rows:
                    continue
                with cur.copy(f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)
        self.conn.commit()

    def finish(self) -> None:
        t0 = time.perf_counter()
        with self.conn.cursor() as cur:
            for table in ("patient", "study", "series", "instance", "stats_hourly",
                          "stats_arrival_hourly", "outbox_event"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"coalesce(max(id), 0) + 1, false) FROM {table}")
        self.conn.commit()
        self.conn.autocommit = True
        self.conn.execute("VACUUM ANALYZE")
        self.conn.close()
        self.seconds += time.perf_counter() - t0


@dataclass
class Generated:
    """How the index came to be: generated now (with timings) or reused from the cache."""

    count: int
    end: str  # ISO, local: the newest arrival possible
    cached: bool
    seconds: float = 0.0
    db_seconds: float = 0.0
    schema_seconds: float = 0.0
    studies: int = 0
    patients: int = 0
    series: int = 0
    stats_rows: int = 0


def load(url: str, loader_factory: Callable[[], Loader], count: int, end: datetime,
         outbox: bool) -> Generated:
    """Create the schema (Alembic, as `vna db upgrade`), then generate and insert."""
    from storage.migrate import upgrade

    t0 = time.perf_counter()
    upgrade(url)
    schema = time.perf_counter() - t0
    loader = loader_factory()
    counts = {"study": 0, "patient": 0, "series": 0, "stats_hourly": 0, "instance": 0}
    t1 = time.perf_counter()
    for batch in generate(Region(count, end), outbox):
        loader.load(batch)
        for t in counts:
            counts[t] += len(batch.tables.get(t, ()))
        print(f"\r  {counts['instance']:,} / {count:,} instances "
              f"({time.perf_counter() - t1:.0f} s)", end="", file=sys.stderr, flush=True)
    loader.finish()
    total = time.perf_counter() - t1
    print(file=sys.stderr)
    if counts["instance"] != count:
        raise BenchError(f"generated {counts['instance']} instances, not {count}")
    return Generated(count, end.isoformat(), False, total, loader.seconds, schema,
                     counts["study"], counts["patient"], counts["series"],
                     counts["stats_hourly"])


# -- the databases, fresh or cached -------------------------------------------------------------

def _label(count: int) -> str:
    if count % 1_000_000 == 0:
        return f"{count // 1_000_000}m"
    if count % 1000 == 0:
        return f"{count // 1000}k"
    return str(count)


def _manifest_ok(path: Path, count: int, outbox: bool) -> dict[str, Any] | None:
    try:
        m: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (m.get("version") == GENERATOR_VERSION and m.get("count") == count
          and m.get("outbox") == outbox)
    return m if ok else None


def _pg_host() -> str:
    return PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]


def _pg_count(name: str) -> int | None:
    import psycopg

    try:
        with psycopg.connect(f"postgresql://{_pg_host()}/{name}", connect_timeout=10) as c:
            row = c.execute("SELECT count(*) FROM instance").fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


def _sqlite_count(path: Path) -> int | None:
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(path)) as c:
            return int(c.execute("SELECT count(*) FROM instance").fetchone()[0])
    except sqlite3.Error:
        return None


def prepare(db: str, workdir: Path, count: int, keep: bool, outbox: bool) -> tuple[str,
                                                                                  Generated]:
    """The database's SQLAlchemy URL, loaded: from the cache under `workdir` with --keep
    (generated there first if missing or stale), else fresh and removed at exit."""
    end = datetime.now(TZ)
    name = f"vna_bench_stats_{_label(count)}" + ("_outbox" if outbox else "")
    cache = workdir / "stats-index"
    manifest = cache / f"{name}-{db}.json"
    if db == "sqlite":
        if keep:
            cache.mkdir(parents=True, exist_ok=True)
            path = cache / f"{name}.sqlite3"
        else:
            path = make_tempdir(workdir, "stats-sqlite-") / "index.sqlite3"
        url = f"sqlite:///{path}"
        if keep and (m := _manifest_ok(manifest, count, outbox)) \
                and _sqlite_count(path) == count:
            return url, Generated(count, m["end"], True)
        if keep:
            manifest.unlink(missing_ok=True)
            for p in path.parent.glob(path.name + "*"):
                p.unlink()
        gen = load(url, lambda: SqliteLoader(path), count, end, outbox)
    else:
        import psycopg

        if keep:
            url = f"postgresql+psycopg://{_pg_host()}/{name}"
            if (m := _manifest_ok(manifest, count, outbox)) and _pg_count(name) == count:
                return url, Generated(count, m["end"], True)
            manifest.unlink(missing_ok=True)
            drop_database(name)
            with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=10) as c:
                c.execute(f'CREATE DATABASE "{name}"')
        else:
            url = create_database()
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        gen = load(url, lambda: PgLoader(dsn), count, end, outbox)
    if keep:
        cache.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"version": GENERATOR_VERSION, "count": count,
                                        "outbox": outbox, "end": gen.end,
                                        "generation": asdict(gen)}, indent=2))
    return url, gen


# -- measuring ------------------------------------------------------------------------------------

class Client:
    """One kept-open HTTP/1.1 connection to `vna api`, with the admin token."""

    def __init__(self, port: int, token: str, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str, sink: Callable[[bytes], None] | None = None) -> tuple[int, bytes,
                                                                                 float]:
        """(status, body, seconds until the whole body is in). With `sink`, the body is
        streamed to it in 1 MiB chunks and not kept (unless the status is not 200)."""
        try:
            t0 = time.perf_counter()
            self.conn.request("GET", path, headers=self.headers)
            resp = self.conn.getresponse()
            if sink is None or resp.status != 200:
                body = resp.read()
            else:
                body = b""
                while chunk := resp.read(1 << 20):
                    sink(chunk)
            return resp.status, body, time.perf_counter() - t0
        except (OSError, http.client.HTTPException):
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()


def _with_period(path: str, first: date, last: date) -> str:
    return f"{path}{'&' if '?' in path else '?'}from={first.isoformat()}&to={last.isoformat()}"


def _p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


@dataclass
class Timing:
    endpoint: str
    days: int
    ms: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.ms) if self.ms and not self.error else None

    @property
    def p90(self) -> float | None:
        return _p90(self.ms) if self.ms and not self.error else None


@dataclass
class ExportRun:
    days: int
    seconds: list[float] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    error: str | None = None


def _error(status: int, body: bytes) -> str:
    return f"HTTP {status}: {body[:2000].decode(errors='replace')}"


def measure(server: ApiServer, end: date, runs: int, export_runs: int,
            timeout: float) -> tuple[list[Timing], list[ExportRun], list[str]]:
    """Warm every endpoint once per period, then `runs` rounds over all of them; then the
    export. Also the checks: what the summary says against what was generated."""
    client = Client(server.port, server.token, timeout)
    timings: list[Timing] = []
    checks: list[str] = []
    summaries: dict[int, dict[str, Any]] = {}
    try:
        for days in PERIOD_DAYS:
            first = end - timedelta(days=days - 1)
            todo = []
            for name, path in ENDPOINTS:
                t = Timing(name, days)
                timings.append(t)
                url = _with_period(path, first, end)
                try:
                    status, body, _ = client.get(url)
                except (OSError, http.client.HTTPException) as exc:
                    server.check_alive()
                    t.error = f"{type(exc).__name__}: {exc}"
                    continue
                if status != 200:
                    t.error = _error(status, body)
                    continue
                if name == "summary":
                    summaries[days] = json.loads(body)
                todo.append((t, url))
            for r in range(runs):
                for t, url in todo:
                    if t.error:
                        continue
                    try:
                        status, body, seconds = client.get(url)
                    except (OSError, http.client.HTTPException) as exc:
                        server.check_alive()
                        t.error = f"run {r + 1}: {type(exc).__name__}: {exc}"
                        continue
                    if status != 200:
                        t.error = f"run {r + 1}: {_error(status, body)}"
                        continue
                    t.ms.append(seconds * 1000)
                print(f"\r  {days} d: round {r + 1}/{runs}", end="", file=sys.stderr,
                      flush=True)
            print(file=sys.stderr)
        exports = []
        for days in PERIOD_DAYS if export_runs else ():
            first = end - timedelta(days=days - 1)
            ex = ExportRun(days)
            exports.append(ex)
            for _ in range(export_runs):
                got = {"bytes": 0, "lines": 0}

                def sink(chunk: bytes, got: dict[str, int] = got) -> None:
                    got["bytes"] += len(chunk)
                    got["lines"] += chunk.count(b"\n")

                try:
                    status, body, seconds = client.get(_with_period(EXPORT, first, end), sink)
                except (OSError, http.client.HTTPException) as exc:
                    server.check_alive()
                    ex.error = f"{type(exc).__name__}: {exc}"
                    break
                if status != 200:
                    ex.error = _error(status, body)
                    break
                ex.seconds.append(seconds)
                ex.rows, ex.bytes = got["lines"] - 1, got["bytes"]
            runs_s = ", ".join(f"{s:.2f}" for s in ex.seconds)
            print(f"  export {days} d: {ex.rows:,} rows, {ex.bytes / 1e6:,.1f} MB, {runs_s} s"
                  + (f" ERROR {ex.error}" if ex.error else ""), file=sys.stderr, flush=True)
            s = summaries.get(days)
            if s and not ex.error and ex.seconds and s.get("instances") != ex.rows:
                checks.append(f"{days} d: the summary counts {s.get('instances'):,} instances "
                              f"(rollup), the export has {ex.rows:,} rows (index)")
    finally:
        client.close()
    return timings, exports, checks


# -- the report -----------------------------------------------------------------------------------

def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def report(db: str, gen: Generated, timings: list[Timing], exports: list[ExportRun]) -> str:
    target = TARGET_MS[db]
    how = ("reused from the cache" if gen.cached else
           f"generated in {gen.seconds:.0f} s ({gen.db_seconds:.0f} s in the database)")
    lines = [f"### {db}: {gen.count:,} instances, data up to {gen.end[:16]} local ({how})", "",
             "| endpoint | 30 d median ms | 30 d p90 ms | 365 d median ms | 365 d p90 ms | "
             f"target (30 d) < {target:.0f} ms |", "|---|---:|---:|---:|---:|---|"]
    by = {(t.endpoint, t.days): t for t in timings}
    for name, _ in ENDPOINTS:
        a, b = by[(name, 30)], by[(name, 365)]
        verdict = ("error" if a.error or a.median is None else
                   "met" if a.median < target else "NOT met")
        lines.append(f"| {name} | {_ms(a.median)} | {_ms(a.p90)} | {_ms(b.median)} | "
                     f"{_ms(b.p90)} | {verdict} |")
    errors = [t for t in timings if t.error]
    if errors:
        lines.append("")
        lines += [f"- ERROR {t.endpoint} ({t.days} d): {t.error}" for t in errors]
    lines.append("")
    for ex in exports:
        if ex.error:
            lines.append(f"- export instances CSV, {ex.days} d: ERROR {ex.error}")
            continue
        med = statistics.median(ex.seconds)
        lines.append(f"- export instances CSV, {ex.days} d: {ex.rows:,} rows, "
                     f"{ex.bytes / 1e6:,.1f} MB, {med:.2f} s median of {len(ex.seconds)} "
                     f"({ex.rows / med:,.0f} rows/s; runs "
                     f"{', '.join(f'{s:.2f}' for s in ex.seconds)} s)")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    pg = "?"
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=5) as c:
            row = c.execute("SHOW server_version").fetchone()
            pg = str(row[0]) if row else "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg,
        "vna": first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Latency of every statistics endpoint of `vna api` on a generated "
                    "region-year index (SQLite and PostgreSQL).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000, help="instances to generate")
    ap.add_argument("--databases", default="sqlite,postgres",
                    help=f"comma-separated: {', '.join(DATABASES)}")
    ap.add_argument("--runs", type=int, default=10, help="timed requests per endpoint/period")
    ap.add_argument("--export-runs", type=int, default=3,
                    help="timed CSV exports per period (0: skip the export)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="the index cache and temp dirs (env VNA_BENCH_DIR); not in the repo")
    ap.add_argument("--keep", action="store_true",
                    help="cache the generated index (<workdir>/stats-index/, PostgreSQL "
                         "database vna_bench_stats_<count>) and reuse it on the next run")
    ap.add_argument("--outbox", action="store_true",
                    help="also fill outbox_event with one processed event per instance")
    ap.add_argument("--timeout", type=float, default=600.0, help="HTTP timeout, seconds")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    dbs = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not dbs or any(d not in DATABASES for d in dbs):
        ap.error(f"--databases: one or more of {', '.join(DATABASES)}")
    if args.count < 1 or args.runs < 1 or args.export_runs < 0:
        ap.error("--count and --runs must be at least 1")
    workdir = args.workdir.resolve()
    if workdir.is_relative_to(REPO):
        ap.error(f"--workdir must be outside the repository ({REPO})")

    results: dict[str, Any] = {}
    reports: list[str] = []
    failed = False
    with cleanup_on_exit():
        workdir.mkdir(parents=True, exist_ok=True)
        env = environment()
        for k, v in env.items():
            print(f"# {k}: {v}")
        for db in dbs:
            print(f"{db}: preparing {args.count:,} instances", file=sys.stderr, flush=True)
            url, gen = prepare(db, workdir, args.count, args.keep, args.outbox)
            if gen.cached:
                print(f"  reusing the cached index (data up to {gen.end[:16]})",
                      file=sys.stderr)
            else:
                print(f"  generated in {gen.seconds:.1f} s ({gen.db_seconds:.1f} s in the "
                      f"database; schema {gen.schema_seconds:.1f} s): {gen.patients:,} "
                      f"patients, {gen.studies:,} studies, {gen.series:,} series, "
                      f"{gen.stats_rows:,} stats_hourly rows", file=sys.stderr, flush=True)
            end = datetime.fromisoformat(gen.end).astimezone(TZ).date()
            server = ApiServer(workdir, {"VNA_STORAGE": "file", "VNA_DATABASE_URL": url})
            try:
                timings, exports, checks = measure(server, end, args.runs, args.export_runs,
                                                   args.timeout)
            finally:
                server.stop()
            failed |= any(t.error for t in timings) or any(e.error for e in exports)
            reports.append(report(db, gen, timings, exports)
                           + "".join(f"\n- CHECK {c}" for c in checks))
            results[db] = {
                "generation": asdict(gen),
                "timings": [{**asdict(t), "median_ms": t.median, "p90_ms": t.p90}
                            for t in timings],
                "exports": [asdict(e) for e in exports], "checks": checks,
                "target_ms": TARGET_MS[db]}
            if not args.keep:  # a fresh index is not needed any more: free the disk now
                REGISTRY.cleanup()

        print()
        print(f"Statistics API on {args.count:,} instances; median and p90 of {args.runs} "
              f"requests per endpoint and period (after one warm-up), wall time of the whole "
              f"HTTP response over one kept-open connection")
        for r in reports:
            print()
            print(r)
        print()
        for db in dbs:
            bad = [t for t in results[db]["timings"] if t["days"] == 30
                   and (t["median_ms"] is None or t["median_ms"] >= TARGET_MS[db])]
            what = ", ".join(f"{t['endpoint']} {_ms(t['median_ms'])} ms" for t in bad)
            print(f"- {db}: every stats endpoint < {TARGET_MS[db]:.0f} ms median (30 d): "
                  f"{'met' if not bad else 'NOT met (' + what + ')'}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"environment": env, "args": {
                "count": args.count, "runs": args.runs, "export_runs": args.export_runs,
                "outbox": args.outbox}, "results": results}, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
