"""QIDO-RS (PS3.18 10.6): studies, series and instances found by query parameters.

Each route is a C-FIND in URL form: `vna.dicom.qido` turns the path and query string into
the identifier items, `storage.index.query` (the one place queries become SQL, shared with
C-FIND) matches them, `vna.dicom.json_model` writes the answer. No match is 200 with `[]`
(as Orthanc and dcm4chee answer; dicomweb-client and OHIF take both). At most
`vna.dicom.qido.MAX_LIMIT` matches per request: with more, a `Warning: 299` header says so,
and `offset` pages on.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from starlette.responses import Response

from services.xds_api.deps import IndexDep
from services.xds_api.dicomweb.common import (
    DICOM_JSON,
    DICOM_JSON_SCHEMA,
    PREFIX,
    DicomJSONResponse,
    audit_patients,
    audit_study,
    check_uid,
    dicomweb_base,
    instance_url,
    require_json,
    series_url,
    study_url,
)
from services.xds_api.security import authorize
from storage.index.query import FindQuery, find
from vna.access import Action, Principal
from vna.dicom.attributes import Level
from vna.dicom.json_model import dataset_json
from vna.dicom.matching import InvalidQuery
from vna.dicom.qido import InvalidQidoQuery, parse

router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
Reader = Annotated[Principal, authorize(Action.DICOMWEB_QUERY)]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {DICOM_JSON: {"schema": DICOM_JSON_SCHEMA}},
          "description": "the matches, in the DICOM JSON model"},
    400: {"description": "a query parameter vna cannot answer"},
}
_CHARSET = ("00080005", {"vr": "CS", "Value": ["ISO_IR 192"]})
_ONLINE = ("00080056", {"vr": "CS", "Value": ["ONLINE"]})


def _retrieve_url(level: Level, base: str, match: dict[str, Any]) -> str | None:
    study, series = match.get("StudyInstanceUID"), match.get("SeriesInstanceUID")
    instance = match.get("SOPInstanceUID")
    if level is Level.STUDY and study:
        return study_url(base, study)
    if level is Level.SERIES and study and series:
        return series_url(base, study, series)
    if level is Level.IMAGE and study and series and instance:
        return instance_url(base, study, series, instance)
    return None


def search(request: Request, index: IndexDep, principal: Principal, level: Level,
           scope: list[tuple[str, str]]) -> Response:
    """One QIDO-RS search at `level` within the UIDs of `scope` (from the path)."""
    require_json(request)
    for keyword, uid in scope:
        check_uid(keyword, uid)
        if keyword == "StudyInstanceUID":
            audit_study(request, uid)
    try:
        qq = parse(level, request.query_params.multi_items(), scope=scope)
        q = FindQuery.from_identifier(level, qq.items, fuzzy_names=qq.fuzzy)
    except (InvalidQidoQuery, InvalidQuery) as exc:
        raise HTTPException(400, str(exc)) from None
    q.departments = principal.departments
    with index.read_session() as s:
        matches = find(s, q, limit=qq.limit + 1, offset=qq.offset)
    more = len(matches) > qq.limit
    matches = matches[:qq.limit]
    audit_patients(request, (m.get("PatientID") for m in matches))
    base = dicomweb_base(request)
    body = []
    for match in matches:
        extra = [_CHARSET, _ONLINE]
        url = _retrieve_url(level, base, match)
        if url:
            extra.append(("00081190", {"vr": "UR", "Value": [url]}))
        body.append(dataset_json(match, extra=extra))
    headers = {}
    if more:
        headers["Warning"] = (f'299 {request.url.hostname or "vna"}: "There are additional '
                              f'results that can be requested" (offset={qq.offset + qq.limit})')
    return DicomJSONResponse(body, headers=headers)


@router.get("/studies", responses=_RESPONSES, response_class=DicomJSONResponse)
def search_studies(request: Request, index: IndexDep, principal: Reader) -> Response:
    """Studies (QIDO-RS Search for Studies)."""
    return search(request, index, principal, Level.STUDY, [])


@router.get("/series", responses=_RESPONSES, response_class=DicomJSONResponse)
def search_all_series(request: Request, index: IndexDep, principal: Reader) -> Response:
    """Series of any study."""
    return search(request, index, principal, Level.SERIES, [])


@router.get("/studies/{study}/series", responses=_RESPONSES,
            response_class=DicomJSONResponse)
def search_series(request: Request, study: str, index: IndexDep,
                  principal: Reader) -> Response:
    """Series of one study."""
    return search(request, index, principal, Level.SERIES, [("StudyInstanceUID", study)])


@router.get("/instances", responses=_RESPONSES, response_class=DicomJSONResponse)
def search_all_instances(request: Request, index: IndexDep, principal: Reader) -> Response:
    """Instances of any study."""
    return search(request, index, principal, Level.IMAGE, [])


@router.get("/studies/{study}/instances", responses=_RESPONSES,
            response_class=DicomJSONResponse)
def search_study_instances(request: Request, study: str, index: IndexDep,
                           principal: Reader) -> Response:
    """Instances of one study."""
    return search(request, index, principal, Level.IMAGE, [("StudyInstanceUID", study)])


@router.get("/studies/{study}/series/{series}/instances", responses=_RESPONSES,
            response_class=DicomJSONResponse)
def search_series_instances(request: Request, study: str, series: str, index: IndexDep,
                            principal: Reader) -> Response:
    """Instances of one series."""
    return search(request, index, principal, Level.IMAGE,
                  [("StudyInstanceUID", study), ("SeriesInstanceUID", series)])
