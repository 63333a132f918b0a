"""The one place C-FIND and QIDO-RS queries (and retrievals) become SQL.

Matchers from `vna.dicom.matching` are applied as bound parameters only; computed
return keys (NumberOf...Related..., ModalitiesInStudy) come from grouped queries over
the matched rows' ids, so their cost does not grow with the size of the archive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from pydicom.multival import MultiValue
from sqlalchemy import ColumnElement, Integer, Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from storage.index.models import Instance, Patient, Series, Study
from vna.dicom.attributes import (
    BY_KEYWORD,
    COMPUTED_KEYS,
    IndexedAttribute,
    Level,
    from_index_value,
)
from vna.dicom.matching import (
    AnyOf,
    InvalidQuery,
    Matcher,
    NamePrefixes,
    Range,
    Single,
    Universal,
    Wildcard,
    fuzzy_name,
    parse_matcher,
    wildcard_to_like,
)

MODELS: dict[Level, Any] = {
    Level.PATIENT: Patient,
    Level.STUDY: Study,
    Level.SERIES: Series,
    Level.IMAGE: Instance,
}


@dataclass
class FindQuery:
    """A C-FIND (or QIDO-RS) request reduced to what the index needs. `departments`, when
    not empty, limits matches to studies with a series of one of these departments
    (InstitutionalDepartmentName): what a department-limited token may see."""

    level: Level
    matchers: dict[str, Matcher] = field(default_factory=dict)
    return_keys: list[str] = field(default_factory=list)
    departments: frozenset[str] = frozenset()

    @classmethod
    def from_identifier(cls, level: Level, items: Iterable[tuple[str, Any]], *,
                        fuzzy_names: bool = False) -> FindQuery:
        """`fuzzy_names`: person names match by word prefixes (QIDO's fuzzymatching)."""
        q = cls(level)
        for keyword, value in items:
            if keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"):
                continue
            if keyword == "ModalitiesInStudy":
                q.return_keys.append(keyword)
                if level is not Level.STUDY:
                    continue  # a study attribute: matched and answered at STUDY level only
                vals = [str(v).strip() for v in _as_list(value) if str(v).strip()]
                if vals and vals != ["*"]:
                    q.matchers[keyword] = AnyOf(tuple(vals))
                continue
            if keyword in COMPUTED_KEYS:
                if COMPUTED_KEYS[keyword] == level:
                    q.return_keys.append(keyword)
                continue
            attr = BY_KEYWORD.get(keyword)
            if attr is None or attr.level.depth > level.depth:
                q.return_keys.append(keyword)  # answered empty
                continue
            q.return_keys.append(keyword)
            m = parse_matcher(attr, value)
            if fuzzy_names and attr.vr == "PN":
                m = fuzzy_name(m)
            if not isinstance(m, Universal):
                q.matchers[keyword] = m
        return q


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple | MultiValue):
        return list(value)
    return [v for v in str(value).split("\\")]


def _predicate(attr: IndexedAttribute, m: Matcher) -> ColumnElement[bool]:
    model = MODELS[attr.level]
    if attr.case_insensitive and hasattr(model, attr.column + "_upper"):
        col = getattr(model, attr.column + "_upper")
        m = upper_matcher(m)
    else:
        col = getattr(model, attr.column)
    return apply_matcher(col, m)


def apply_matcher(col: Any, m: Matcher) -> ColumnElement[bool]:
    """`m` on one column, as bound parameters (the worklist's queries use it too)."""
    if isinstance(col.type, Integer):  # US / IS columns: values were checked to be numbers
        if isinstance(m, Single):
            return col == int(m.value)
        if isinstance(m, AnyOf):
            return col.in_([int(v) for v in m.values])
    if isinstance(m, Single):
        return col == m.value
    if isinstance(m, Wildcard):
        return col.like(m.like, escape="\\")
    if isinstance(m, AnyOf):
        return col.in_(m.values)
    if isinstance(m, NamePrefixes):  # each word begins a component: "^" between, " " within
        return and_(*(or_(col.like(f"{p}%", escape="\\"), col.like(f"%^{p}%", escape="\\"),
                          col.like(f"% {p}%", escape="\\")) for p in m.prefixes))
    if isinstance(m, Range):
        parts = []
        if m.low is not None:
            parts.append(col >= m.low)
        if m.high is not None:
            parts.append(col <= m.high)
        return and_(*parts)
    raise InvalidQuery(f"unsupported matcher {m!r}")


def upper_matcher(m: Matcher) -> Matcher:
    """`m` for a column kept upper-cased (case-insensitive person names)."""
    if isinstance(m, Single):
        return Single(m.value.upper())
    if isinstance(m, Wildcard):
        return Wildcard(m.like.upper())
    if isinstance(m, AnyOf):
        return AnyOf(tuple(v.upper() for v in m.values))
    if isinstance(m, NamePrefixes):
        return NamePrefixes(tuple(p.upper() for p in m.prefixes))
    return m


def _base_select(level: Level) -> Select[Any]:
    """The matched level's rows joined to every level above it."""
    models = [Patient, Study, Series, Instance][: level.depth + 1]
    stmt: Any = select(*models)
    if level.depth >= 1:
        stmt = stmt.join(Study, Study.patient_fk == Patient.id)
    if level.depth >= 2:
        stmt = stmt.join(Series, Series.study_fk == Study.id)
    if level.depth >= 3:
        stmt = stmt.join(Instance, Instance.series_fk == Series.id)
    return stmt


def build_select(q: FindQuery) -> Select[Any]:
    stmt = _base_select(q.level)
    for keyword, m in q.matchers.items():
        if keyword == "ModalitiesInStudy":
            assert isinstance(m, AnyOf)
            wild = [v for v in m.values if "*" in v or "?" in v]
            plain = [v for v in m.values if v not in wild]
            conds = []
            if plain:
                conds.append(Series.modality.in_(plain))
            conds += [Series.modality.like(wildcard_to_like(v), escape="\\") for v in wild]
            sub = select(Series.id).where(Series.study_fk == Study.id, or_(*conds))
            stmt = stmt.where(exists(sub))
            continue
        stmt = stmt.where(_predicate(BY_KEYWORD[keyword], m))
    if q.departments and q.level.depth >= Level.STUDY.depth:
        dept = aliased(Series)  # not the matched series: any series of the study
        seen_by = select(dept.id).where(
            dept.study_fk == Study.id,
            dept.institutional_department_name.in_(sorted(q.departments)))
        stmt = stmt.where(exists(seen_by))
    return stmt.order_by(MODELS[q.level].id)


def find(session: Session, q: FindQuery, *, limit: int | None = None,
         offset: int = 0,
         touched: set[tuple[str, str | None]] | None = None) -> list[dict[str, Any]]:
    """Run a C-FIND query: one dict (keyword -> value) per match, return keys only; at most
    `limit` matches after skipping `offset` (in the order of the index). `touched` gets
    the (PatientID, StudyInstanceUID) pairs of the matches, for the audit trail."""
    stmt = build_select(q)
    if limit:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    rows = session.execute(stmt).all()
    own = MODELS[q.level]
    computed = [k for k in q.return_keys if COMPUTED_KEYS.get(k) is q.level]
    ids = [getattr(r, own.__name__).id for r in rows]
    extra = _computed(session, q.level, computed, ids) if computed and ids else {}
    results = []
    for row in rows:
        objs = {m: getattr(row, MODELS[m].__name__) for m in MODELS if m.depth <= q.level.depth}
        if touched is not None:
            study = objs.get(Level.STUDY)
            touched.add((objs[Level.PATIENT].patient_id,
                         study.study_instance_uid if study is not None else None))
        out: dict[str, Any] = {}
        for key in q.return_keys:
            attr = BY_KEYWORD.get(key)
            if attr is not None and attr.level.depth <= q.level.depth:
                out[key] = from_index_value(attr, getattr(objs[attr.level], attr.column))
            elif key in computed:
                out[key] = extra.get(key, {}).get(objs[q.level].id)
            else:
                out[key] = None
        results.append(out)
    return results


class StoredInstance(NamedTuple):
    """What sending an archived instance needs: where its bytes are and what they are."""

    storage_key: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""  # for the audit trail
    study_instance_uid: str = ""


def retrieve_instances(session: Session, q: FindQuery) -> list[StoredInstance]:
    """The instances a retrieval (C-GET, C-MOVE) selects: every instance under what the
    matchers of `q` match, whatever its level."""
    stmt = build_select(replace(q, level=Level.IMAGE)).with_only_columns(
        Instance.storage_key, Instance.sop_class_uid, Instance.sop_instance_uid,
        Instance.transfer_syntax_uid, Patient.patient_id, Study.study_instance_uid)
    return [StoredInstance(*row) for row in session.execute(stmt).all()]


def _computed(session: Session, level: Level, keys: Sequence[str],
              ids: list[int]) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = {}

    def counts(stmt: Any) -> dict[int, int]:
        return {k: v for k, v in session.execute(stmt).all()}

    for key in keys:
        if key == "NumberOfPatientRelatedStudies":
            out[key] = counts(select(Study.patient_fk, func.count(Study.id))
                              .where(Study.patient_fk.in_(ids)).group_by(Study.patient_fk))
        elif key == "NumberOfPatientRelatedSeries":
            out[key] = counts(select(Study.patient_fk, func.count(Series.id))
                              .join(Series, Series.study_fk == Study.id)
                              .where(Study.patient_fk.in_(ids)).group_by(Study.patient_fk))
        elif key == "NumberOfPatientRelatedInstances":
            out[key] = counts(select(Study.patient_fk, func.count(Instance.id))
                              .join(Series, Series.study_fk == Study.id)
                              .join(Instance, Instance.series_fk == Series.id)
                              .where(Study.patient_fk.in_(ids)).group_by(Study.patient_fk))
        elif key == "NumberOfStudyRelatedSeries":
            out[key] = counts(select(Series.study_fk, func.count(Series.id))
                              .where(Series.study_fk.in_(ids)).group_by(Series.study_fk))
        elif key == "NumberOfStudyRelatedInstances":
            out[key] = counts(select(Series.study_fk, func.count(Instance.id))
                              .join(Instance, Instance.series_fk == Series.id)
                              .where(Series.study_fk.in_(ids)).group_by(Series.study_fk))
        elif key == "NumberOfSeriesRelatedInstances":
            out[key] = counts(select(Instance.series_fk, func.count(Instance.id))
                              .where(Instance.series_fk.in_(ids)).group_by(Instance.series_fk))
        elif key in ("ModalitiesInStudy", "SOPClassesInStudy"):
            col = Series.modality if key == "ModalitiesInStudy" else Instance.sop_class_uid
            stmt = select(Series.study_fk, col).where(Series.study_fk.in_(ids))
            if key == "SOPClassesInStudy":
                stmt = stmt.join(Instance, Instance.series_fk == Series.id)
            values: dict[int, set[str]] = defaultdict(set)
            for sid, v in session.execute(stmt.distinct()).all():
                if v:
                    values[sid].add(v)
            out[key] = {sid: sorted(v) for sid, v in values.items()}
    for key in keys:
        if key.startswith("NumberOf"):
            out[key] = {i: out[key].get(i, 0) for i in ids}
    return out
