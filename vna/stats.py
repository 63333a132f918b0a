"""Statistics definitions: dimensions, intervals, filters and how hourly rollups become the
series and matrices a controller reads, as typed values. Pure: the queries live in
`storage/index/stats.py`, the JSON the API makes of them in `services/xds_api/schemas.py`.

Volumes are counted when the archive received the data (instances: received time;
documents: submission time), in hourly buckets kept in UTC and shown in the region's time
zone (VNA_TIMEZONE), so that "Monday 8-9" means the department's Monday morning.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo


class Dimension(StrEnum):
    """What volumes can be broken down and filtered by (the rollup's key columns)."""

    MODALITY = "modality"  # Series Modality
    DEPARTMENT = "department"  # InstitutionalDepartmentName; a document's practiceSettingCode
    REFERRER = "referrer"  # ReferringPhysicianName
    SOURCE_AE = "source_ae"  # the calling AE title that sent it
    STATION = "station"  # StationName
    BODY_PART = "body_part"  # BodyPartExamined
    DOCUMENT_CLASS = "document_class"  # a document's classCode


class Interval(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"  # ISO weeks, starting on Monday
    MONTH = "month"


class InvalidStatsQuery(ValueError):
    pass


@dataclass(frozen=True)
class Filters:
    """`include=dimension:value` (any of the values of one dimension) and
    `exclude=dimension:value`; an empty value means "unknown"."""

    include: dict[Dimension, frozenset[str]] = field(default_factory=dict)
    exclude: dict[Dimension, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, include: Iterable[str], exclude: Iterable[str]) -> Filters:
        return cls(_parse(include, "include"), _parse(exclude, "exclude"))


def _parse(items: Iterable[str], what: str) -> dict[Dimension, frozenset[str]]:
    out: dict[Dimension, set[str]] = defaultdict(set)
    for item in items:
        dim, sep, value = item.partition(":")
        try:
            out[Dimension(dim)].add(value.strip())
        except ValueError:
            raise InvalidStatsQuery(
                f"{what}={item!r}: use dimension:value with dimension one of "
                f"{', '.join(d.value for d in Dimension)}") from None
        if not sep:
            raise InvalidStatsQuery(f"{what}={item!r}: use dimension:value")
    return {d: frozenset(v) for d, v in out.items()}


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC, from `from`/`to` dates in the region's time zone (both
    inclusive days, as a controller means them)."""

    start: datetime
    end: datetime
    tz: ZoneInfo

    @classmethod
    def of(cls, first: date | None, last: date | None, tz: ZoneInfo,
           today: date | None = None, *, nightly: bool = False) -> Period:
        """`nightly`: the snapshot up to last midnight, the same all day (today is left
        out); otherwise live, today so far included."""
        today = today or datetime.now(tz).date()
        newest = today - timedelta(days=1) if nightly else today
        last = min(last, newest) if last else newest
        first = first or (last - timedelta(days=29))
        if first > last and not nightly:
            raise InvalidStatsQuery("from is after to")
        if first > last:  # the whole period is today: nothing in the snapshot yet
            start = datetime(first.year, first.month, first.day, tzinfo=tz)
            return cls(start, start, tz)
        if (last - first).days > 3660:
            raise InvalidStatsQuery("a period of at most ten years")
        start = datetime(first.year, first.month, first.day, tzinfo=tz)
        end = datetime(last.year, last.month, last.day, tzinfo=tz) + timedelta(days=1)
        return cls(start, end, tz)


def bucket(hour_utc: datetime, interval: Interval, tz: ZoneInfo) -> datetime:
    """The start (local time) of the interval an hourly bucket belongs to."""
    local = hour_utc.astimezone(tz)
    if interval is Interval.HOUR:
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval is Interval.DAY:
        return day
    if interval is Interval.WEEK:
        return (day - timedelta(days=day.weekday())).replace(tzinfo=tz)
    return day.replace(day=1)


@dataclass
class Point:
    count: int = 0
    bytes: int = 0


def volume_series(rows: Iterable[tuple[datetime, str, int, int]], interval: Interval,
                  tz: ZoneInfo) -> dict[str, dict[datetime, Point]]:
    """(hour, key, count, bytes) rows -> per key, per interval start: totals."""
    out: dict[str, dict[datetime, Point]] = defaultdict(lambda: defaultdict(Point))
    for hour, key, count, size in rows:
        p = out[key][bucket(hour, interval, tz)]
        p.count += count
        p.bytes += size
    return out


def workload_matrix(rows: Iterable[tuple[datetime, int]], tz: ZoneInfo) -> list[list[int]]:
    """(hour, count) rows -> 7 x 24 counts: [weekday Monday=0][hour of day], local time."""
    matrix = [[0] * 24 for _ in range(7)]
    for hour, count in rows:
        local = hour.astimezone(tz)
        matrix[local.weekday()][local.hour] += count
    return matrix


@dataclass(frozen=True)
class PeakHour:
    hour: datetime  # UTC
    instances_per_second: float
    mb_per_second: float


@dataclass(frozen=True)
class Rates:
    """Ingest rates, per second over the hours that had any ingest, and the busiest hour."""

    instances_per_second: float
    mb_per_second: float
    peak: PeakHour | None
    active_hours: int


@dataclass(frozen=True)
class Throughput:
    overall: Rates
    by_source_ae: dict[str, Rates]


def throughput(rows: Iterable[tuple[datetime, str, int, int]]) -> Throughput:
    """(hour, source AE, count, bytes) rows -> average and peak-hour ingest rates, overall
    and per source AE."""
    per_hour: dict[datetime, Point] = defaultdict(Point)
    per_ae: dict[str, dict[datetime, Point]] = defaultdict(lambda: defaultdict(Point))
    for hour, ae, count, size in rows:
        for p in (per_hour[hour], per_ae[ae][hour]):
            p.count += count
            p.bytes += size
    return Throughput(_rates(per_hour),
                      {ae: _rates(hours) for ae, hours in sorted(per_ae.items())})


def _rates(hours: dict[datetime, Point]) -> Rates:
    if not hours:
        return Rates(0.0, 0.0, None, 0)
    count = sum(p.count for p in hours.values())
    size = sum(p.bytes for p in hours.values())
    seconds = 3600 * len(hours)
    peak_hour, peak = max(hours.items(), key=lambda kv: kv[1].count)
    return Rates(round(count / seconds, 4), round(size / 1e6 / seconds, 4),
                 PeakHour(peak_hour, round(peak.count / 3600, 4),
                          round(peak.bytes / 1e6 / 3600, 4)),
                 len(hours))


@dataclass(frozen=True)
class Forecast:
    """A least-squares line through the totals: growth per interval and the totals of the
    next intervals."""

    growth_per_interval: int
    next: list[int]
    method: str = "least-squares line over the period"


@dataclass(frozen=True)
class StorageGrowth:
    """Bytes per interval, in columns along `starts` (a year by the hour is thousands of
    intervals for each dimension value: no object each)."""

    starts: list[datetime]  # the intervals' starts, local time
    added: dict[str, list[int]]  # by dimension value (sorted): bytes added in each interval
    stored: dict[str, list[int]]  # by dimension value: bytes stored at each interval's end
    total: list[int]  # bytes stored in all at each interval's end
    forecast: Forecast | None  # None with fewer than two intervals


def storage_growth(rows: Iterable[tuple[datetime, str, int, int]], interval: Interval,
                   tz: ZoneInfo, start_bytes: dict[str, int],
                   forecast_intervals: int = 6) -> StorageGrowth:
    """Bytes added per interval and cumulated (from what was stored before the period), per
    key, plus a linear forecast of the total's growth."""
    series = volume_series(rows, interval, tz)
    keys = sorted(set(series) | set(start_bytes))
    starts = sorted({t for pts in series.values() for t in pts})
    added: dict[str, list[int]] = {}
    stored: dict[str, list[int]] = {}
    totals = [0] * len(starts)
    for key in keys:
        running = start_bytes.get(key, 0)
        points = series.get(key, {})
        added[key] = [points[t].bytes if t in points else 0 for t in starts]
        stored[key] = cumulated = []
        for i, b in enumerate(added[key]):
            running += b
            cumulated.append(running)
            totals[i] += running
    return StorageGrowth(starts, added, stored, totals,
                         _linear_forecast(totals, forecast_intervals))


def _linear_forecast(values: list[int], ahead: int) -> Forecast | None:
    """Fit total = a + b*i; the growth per interval (b) and the totals `ahead` intervals on."""
    n = len(values)
    if n < 2:
        return None
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    b = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sxx
    a = mean_y - b * mean_x
    return Forecast(round(b), [round(a + b * (n + k)) for k in range(ahead)])
