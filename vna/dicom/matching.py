"""C-FIND matching keys (PS3.4 C.2.2.2) parsed into typed matchers, independent of SQL.

A query value becomes one of: universal (no constraint), single value, wildcard,
range (DA/TM/DT) or list of UIDs / values. `storage.index.query` turns these into
bound-parameter SQL; nothing here ever formats a value into SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.multival import MultiValue

from vna.dicom.attributes import IndexedAttribute, normalize_date, normalize_time


@dataclass(frozen=True)
class Universal:
    pass


@dataclass(frozen=True)
class Single:
    value: str


@dataclass(frozen=True)
class Wildcard:
    """A LIKE pattern with `\\` as escape character: `*`→`%`, `?`→`_`, literal %/_ escaped."""

    like: str


@dataclass(frozen=True)
class Range:
    low: str | None
    high: str | None


@dataclass(frozen=True)
class AnyOf:
    values: tuple[str, ...]


@dataclass(frozen=True)
class NamePrefixes:
    """Fuzzy person-name matching (QIDO-RS `fuzzymatching=true`): every word of the query
    begins one of the name's components (family, given, middle...), in any order, as LIKE
    prefixes with `\\` as escape character."""

    prefixes: tuple[str, ...]


Matcher = Universal | Single | Wildcard | Range | AnyOf | NamePrefixes


class InvalidQuery(ValueError):
    """An identifier value the SCP cannot match (C-FIND answers 0xC000, retrieves 0xA900)."""


def wildcard_to_like(value: str) -> str:
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _normalize_bound(attr: IndexedAttribute, bound: str) -> str | None:
    if not bound:
        return None
    norm = normalize_date(bound) if attr.vr == "DA" else normalize_time(bound)
    if norm is None:
        raise InvalidQuery(f"{attr.keyword}: {bound!r} is not a valid {attr.vr}")
    return norm


def parse_matcher(attr: IndexedAttribute, raw: object) -> Matcher:
    """Parse the identifier value of `attr` into a matcher."""
    if raw is None:
        return Universal()
    if isinstance(raw, list | tuple | MultiValue):
        values = [str(v).strip() for v in raw if str(v).strip()]
        if not values:
            return Universal()
        return AnyOf(tuple(values)) if len(values) > 1 else parse_matcher(attr, values[0])
    text = str(raw).strip()
    if attr.vr == "PN":
        # A PN query "DOE^JOHN^^^" means the same as "DOE^JOHN".
        text = text.rstrip("^").strip()
    if text in ("", "*"):
        return Universal()
    if attr.vr in ("US", "IS"):
        values = text.split("\\")
        if not all(v.strip().lstrip("-").isdigit() for v in values):
            raise InvalidQuery(f"{attr.keyword}: {text!r} is not a number")
        if attr.vr == "IS" and attr.column != "number_of_frames":
            return AnyOf(tuple(str(int(v)) for v in values)) if len(values) > 1 \
                else Single(str(int(values[0])))
        return AnyOf(tuple(values)) if len(values) > 1 else Single(values[0].strip())
    if attr.vr in ("DA", "TM") and "-" in text:
        low, _, high = text.partition("-")
        if "-" in high:
            raise InvalidQuery(f"{attr.keyword}: {text!r} is not a valid range")
        rng = Range(_normalize_bound(attr, low.strip()), _normalize_bound(attr, high.strip()))
        if rng.low is None and rng.high is None:
            return Universal()
        return rng
    if attr.vr in ("DA", "TM"):
        norm = _normalize_bound(attr, text)
        if attr.vr == "TM":
            # A single time matches the whole of its stated precision (PS3.4 C.2.2.2.5.1).
            return Range(norm, _time_upper(text))
        return Single(norm or text)
    if attr.vr == "UI":
        uids = tuple(u.strip() for u in text.split("\\") if u.strip())
        return AnyOf(uids) if len(uids) > 1 else Single(uids[0])
    if "\\" in text and attr.vr == "CS":
        return AnyOf(tuple(v.strip() for v in text.split("\\") if v.strip()))
    if "*" in text or "?" in text:
        return Wildcard(wildcard_to_like(text))
    return Single(text)


def fuzzy_name(matcher: Matcher) -> Matcher:
    """A PN matcher made fuzzy: a single value (no wildcards) becomes `NamePrefixes` of its
    words; wildcards and lists are matched as sent."""
    if not isinstance(matcher, Single):
        return matcher
    words = [w for w in matcher.value.replace("^", " ").replace("=", " ").split() if w]
    return NamePrefixes(tuple(wildcard_to_like(w) for w in words)) if words else Universal()


def _time_upper(text: str) -> str:
    main, _, frac = text.strip().replace(":", "").partition(".")
    filled = main + "595959"[len(main):]
    return filled + "." + frac[:6].ljust(6, "9")
