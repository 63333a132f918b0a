"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data and renders.

- Instances (study, series, instance) are `multipart/related; type="application/dicom"`,
  one part per instance, streamed one object at a time from the object store: as stored
  (file meta included) unless the Accept header names a transfer syntax the instance is not
  stored in, which `vna.dicom.transcode` then produces (406 if it cannot).
- /metadata is the stored headers (`instance_metadata`, derived by the workers) spliced
  into one JSON array, their bulk data placeholders made URLs; an instance the workers
  have not reached yet gets its header built on the spot by the very function they use
  (and kept). An ETag (the instances' hashes, when their headers were derived, the base
  URL) answers If-None-Match with 304.
- /frames, /bulkdata, /rendered, /thumbnail read the object's header and only the frames
  asked for (`vna.dicom.frames`).

What each answer's Accept header may name is decided in `vna.dicom.mediatypes`. Every
route selects its instances with the token's department limit (the same query QIDO-RS
runs): a study outside its departments is a 404, like one that does not exist; the study
and its patient are audited.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, HTTPException, Request
from starlette.responses import Response

from services.xds_api.content import etag_matches
from services.xds_api.deps import IndexDep, StoreDep
from services.xds_api.dicomweb.common import (
    DICOM_JSON_SCHEMA,
    PREFIX,
    audit_access,
    audit_study,
    check_uid,
    dicomweb_base,
    instance_url,
)
from services.xds_api.dicomweb.related import (
    PART_END,
    closing,
    multipart_response,
    new_boundary,
    part_head,
    streamed_response,
)
from services.xds_api.security import authorize
from storage.index.db import Index
from storage.index.dicomweb import (
    ArchivedInstance,
    InstanceHeader,
    archived_instances,
    instance_headers,
    keep_headers,
)
from storage.objectstore import STREAM_CHUNK, ObjectStore
from vna.access import Action, Principal
from vna.dicom import mediatypes as mt
from vna.dicom.frames import (
    DecodeError,
    FrameError,
    ImageObject,
    can_decode,
    check_frame_number,
    decode_frame,
    decoded_frame_bytes,
    open_image,
    parse_frame_numbers,
    pixel_word_size,
    stored_frame,
    to_little_endian,
)
from vna.dicom.metadata import (
    BulkDataPath,
    header_json,
    header_text,
    metadata_array,
    with_bulkdata_urls,
)
from vna.dicom.part10 import PIXEL_TAGS
from vna.dicom.rendering import (
    THUMBNAIL_SIZE,
    InvalidRenderParameter,
    Window,
    parse_quality,
    parse_viewport,
    render,
)
from vna.dicom.transcode import WORD_SIZE, TranscodeError, can_transcode, transcode

log = logging.getLogger("vna.dicomweb")
router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
Reader = Annotated[Principal, authorize(Action.DICOMWEB_RETRIEVE)]

# Bump when header_json changes what it derives: cached metadata is then stale.
METADATA_FORMAT = "2"

_MULTIPART: dict[int | str, dict[str, Any]] = {
    200: {"content": {mt.MULTIPART_RELATED: {}}, "description": "multipart/related"},
    404: {"description": "no such study, series, instance or frame (for this token)"},
    406: {"description": "no representation the Accept header names can be produced"},
}
_METADATA: dict[int | str, dict[str, Any]] = {
    200: {"content": {mt.DICOM_JSON: {"schema": DICOM_JSON_SCHEMA}},
          "description": "the instances' headers, in the DICOM JSON model"},
    304: {"description": "not modified since the ETag given in If-None-Match"},
    404: {"description": "no such study, series or instance (for this token)"},
    406: {"description": "the Accept header does not take application/dicom+json"},
}
_RENDERED: dict[int | str, dict[str, Any]] = {
    200: {"content": {mt.JPEG: {}, mt.PNG: {}}, "description": "the rendered frame"},
    400: {"description": "a malformed window, viewport or quality parameter"},
    404: {"description": "no such instance or frame, or no pixel data"},
    406: {"description": "the Accept header takes neither image/jpeg nor image/png"},
}

# -- selecting instances ---------------------------------------------------------------------

class _PatientRow(Protocol):
    @property
    def patient_id(self) -> str | None: ...


_Row = TypeVar("_Row", bound=_PatientRow)


def _select(request: Request, index: Index, principal: Principal, study: str,
            series: str | None = None, instance: str | None = None) -> list[ArchivedInstance]:
    _check_uids(study, series, instance)
    with index.read_session() as s:
        rows = archived_instances(s, study, series, instance,
                                  departments=principal.departments)
    return _found(request, rows, study, series, instance)


def _found(request: Request, rows: list[_Row], study: str, series: str | None,
           instance: str | None) -> list[_Row]:
    """The rows a retrieval found: the study audited whatever was found (and the patient
    when it was one's), 404 when nothing was."""
    audit_study(request, study)
    if not rows:
        raise HTTPException(404, _missing(study, series, instance))
    audit_access(request, study, (r.patient_id for r in rows))
    return rows


def _check_uids(study: str, series: str | None, instance: str | None) -> None:
    """400 for a path UID that is not a UID (nothing is looked up with it)."""
    check_uid("StudyInstanceUID", study)
    if series is not None:
        check_uid("SeriesInstanceUID", series)
    if instance is not None:
        check_uid("SOPInstanceUID", instance)


def _missing(study: str, series: str | None, instance: str | None) -> str:
    if instance is not None:
        return f"no instance {instance} in series {series} of study {study}"
    if series is not None:
        return f"no series {series} in study {study}"
    return f"no study {study}"


@contextmanager
def _image(store: ObjectStore, row: ArchivedInstance) -> Iterator[ImageObject]:
    """The instance opened for its frames (its header read, its pixel data located)."""
    stream = store.open_seekable(row.storage_key, row.size)
    try:
        image = open_image(stream, row.transfer_syntax_uid, row.dataset_offset)
    except BaseException:
        stream.close()
        raise
    try:
        yield image
    finally:
        image.close()


def _not_acceptable(what: str, accept: str | None) -> HTTPException:
    return HTTPException(406, f"{what}; Accept was {accept or '(none)'!r}")


# -- instances -------------------------------------------------------------------------------


def _retrieve(request: Request, index: Index, store: ObjectStore, principal: Principal,
              study: str, series: str | None = None,
              instance: str | None = None) -> Response:
    rows = _select(request, index, principal, study, series, instance)
    accept = request.headers.get("accept")
    ranges = mt.parse_accept(accept)
    if not mt.takes_instances(ranges):
        raise _not_acceptable('this resource is multipart/related; type="application/dicom"',
                              accept)
    plan: list[tuple[ArchivedInstance, str]] = []
    for row in rows:
        syntax = mt.instance_syntax(ranges, row.transfer_syntax_uid, can_transcode)
        if syntax is None:
            raise _not_acceptable(f"instance {row.sop_instance_uid} is stored in "
                                  f"{row.transfer_syntax_uid} and cannot be transcoded to a "
                                  "transfer syntax the Accept header names", accept)
        plan.append((row, syntax))
    base = dicomweb_base(request)
    boundary = new_boundary()
    # One instance to transcode is transcoded before the answer begins, so that what
    # cannot be decoded here is a 406; in a series or study it ends the answer unfinished.
    ready: dict[str, bytes] = {}
    if len(plan) == 1 and plan[0][1] != plan[0][0].transfer_syntax_uid:
        try:
            ready[plan[0][0].sop_instance_uid] = _transcoded(store, *plan[0])
        except TranscodeError as exc:
            raise _not_acceptable(str(exc), accept) from None

    def body() -> Iterator[bytes]:
        for row, syntax in plan:
            yield part_head(boundary, f"{mt.DICOM}; transfer-syntax={syntax}",
                            instance_url(base, row.study_instance_uid,
                                         row.series_instance_uid, row.sop_instance_uid))
            if syntax == row.transfer_syntax_uid:
                with store.open(row.storage_key) as f:
                    while chunk := f.read(STREAM_CHUNK):
                        yield chunk
            elif row.sop_instance_uid in ready:
                yield ready.pop(row.sop_instance_uid)
            else:
                try:
                    yield _transcoded(store, row, syntax)
                except TranscodeError as exc:
                    # The answer has begun: all that is left is to end it unfinished.
                    log.error("WADO-RS: %s", exc)
                    raise
            yield PART_END
        yield closing(boundary)

    return streamed_response(mt.DICOM, boundary, body())


def _transcoded(store: ObjectStore, row: ArchivedInstance, syntax: str) -> bytes:
    with store.open_seekable(row.storage_key, row.size) as f:
        return transcode(f, syntax)


@router.get("/studies/{study}", responses=_MULTIPART, response_class=Response)
def retrieve_study(request: Request, study: str, index: IndexDep, store: StoreDep,
                   principal: Reader) -> Response:
    """The instances of a study (WADO-RS Retrieve Study)."""
    return _retrieve(request, index, store, principal, study)


@router.get("/studies/{study}/series/{series}", responses=_MULTIPART, response_class=Response)
def retrieve_series(request: Request, study: str, series: str, index: IndexDep,
                    store: StoreDep, principal: Reader) -> Response:
    """The instances of a series."""
    return _retrieve(request, index, store, principal, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}", responses=_MULTIPART,
            response_class=Response)
def retrieve_instance(request: Request, study: str, series: str, instance: str,
                      index: IndexDep, store: StoreDep, principal: Reader) -> Response:
    """One instance."""
    return _retrieve(request, index, store, principal, study, series, instance)


# -- metadata --------------------------------------------------------------------------------


def _etag(base: str, rows: list[InstanceHeader]) -> str:
    """Changes when an instance comes or goes, its object changes, its header is derived
    (again), or the answer's URLs would name another base."""
    h = hashlib.sha256(f"{METADATA_FORMAT}\n{base}\n".encode())
    for r in rows:
        derived = r.derived_at.isoformat() if r.derived_at is not None else "-"
        h.update(f"{r.sop_instance_uid} {r.sha256} {derived}\n".encode())
    return f'"{h.hexdigest()[:40]}"'


def _headers_now(index: Index, store: ObjectStore, rows: list[InstanceHeader]) -> dict[str, str]:
    """The headers of instances the workers have not reached yet: built from their
    objects by the function the workers use, and kept (in one transaction; the worker's
    later upsert writes the same)."""
    built = []
    for row in rows:
        with store.local_copy(row.storage_key) as path:
            built.append((row.sop_instance_uid, header_json(path)))
    try:
        keep_headers(index, built)
    except Exception as exc:  # noqa: BLE001 - the answer does not depend on keeping them
        log.warning("could not keep %d headers built on demand: %s", len(built),
                    type(exc).__name__)
    return {sop: header_text(header) for sop, header in built}


def _metadata(request: Request, index: Index, store: ObjectStore, principal: Principal,
              study: str, series: str | None = None,
              instance: str | None = None) -> Response:
    _check_uids(study, series, instance)
    with index.read_session() as s:
        found = instance_headers(s, study, series, instance,
                                 departments=principal.departments)
    rows = _found(request, found, study, series, instance)
    accept = request.headers.get("accept")
    if not mt.takes_json(mt.parse_accept(accept)):
        raise _not_acceptable(f"this resource is {mt.DICOM_JSON}", accept)
    base = dicomweb_base(request)
    etag = _etag(base, rows)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    built = _headers_now(index, store, [r for r in rows if r.header is None])
    body = metadata_array(
        with_bulkdata_urls(r.header if r.header is not None else built[r.sop_instance_uid],
                           instance_url(base, r.study_instance_uid, r.series_instance_uid,
                                        r.sop_instance_uid))
        for r in rows)
    return Response(body, media_type=mt.DICOM_JSON, headers=headers)


@router.get("/studies/{study}/metadata", responses=_METADATA, response_class=Response)
def study_metadata(request: Request, study: str, index: IndexDep, store: StoreDep,
                   principal: Reader) -> Response:
    """The headers of a study's instances (WADO-RS Retrieve Study Metadata)."""
    return _metadata(request, index, store, principal, study)


@router.get("/studies/{study}/series/{series}/metadata", responses=_METADATA,
            response_class=Response)
def series_metadata(request: Request, study: str, series: str, index: IndexDep,
                    store: StoreDep, principal: Reader) -> Response:
    """The headers of a series' instances."""
    return _metadata(request, index, store, principal, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
            responses=_METADATA, response_class=Response)
def instance_metadata(request: Request, study: str, series: str, instance: str,
                      index: IndexDep, store: StoreDep, principal: Reader) -> Response:
    """The header of one instance."""
    return _metadata(request, index, store, principal, study, series, instance)


# -- frames ----------------------------------------------------------------------------------


def _one(request: Request, index: Index, principal: Principal, study: str, series: str,
         instance: str) -> ArchivedInstance:
    return _select(request, index, principal, study, series, instance)[0]


def _frame_numbers(text: str) -> list[int]:
    try:
        return parse_frame_numbers(text)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _check_frames(image: ImageObject, numbers: list[int]) -> None:
    if image.pixel is None:
        raise HTTPException(404, "the instance has no pixel data, so no frames")
    for n in numbers:
        try:
            check_frame_number(image, n)
        except IndexError as exc:
            raise HTTPException(404, str(exc)) from None


def _damaged(exc: FrameError, row: ArchivedInstance) -> HTTPException:
    """A frame that cannot be decoded here is 406 (the client may take it as stored); one
    the object does not hold as its header says is a damaged object, 500."""
    if isinstance(exc, DecodeError):
        return HTTPException(406, f"{exc}; it can be had as stored, in "
                                  f"{row.transfer_syntax_uid}")
    log.error("WADO-RS: instance %s: %s", row.sop_instance_uid, exc)
    return HTTPException(500, f"the archived instance's pixel data cannot be read: {exc}")


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            responses={**_MULTIPART, 400: {"description": "a malformed frame list"}},
            response_class=Response)
def retrieve_frames(request: Request, study: str, series: str, instance: str, frames: str,
                    index: IndexDep, store: StoreDep, principal: Reader) -> Response:
    """Frames of an instance, one part each (WADO-RS Retrieve Frames): native frames as
    little endian bytes, compressed ones as stored or decoded, as the Accept header asks."""
    numbers = _frame_numbers(frames)
    row = _one(request, index, principal, study, series, instance)
    accept = request.headers.get("accept")
    answer = mt.frame_answer(mt.parse_accept(accept), row.transfer_syntax_uid, can_decode)
    if answer is None:
        raise _not_acceptable(f"the frames are stored in {row.transfer_syntax_uid}", accept)
    with _image(store, row) as image:
        _check_frames(image, numbers)
        try:
            parts = [(answer.content_type,
                      decoded_frame_bytes(image, n) if answer.decode else stored_frame(image, n))
                     for n in numbers]
        except FrameError as exc:
            raise _damaged(exc, row) from None
    return multipart_response(answer.media_type, parts)


# -- bulk data -------------------------------------------------------------------------------

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_RAW = f"{mt.OCTET_STREAM}; transfer-syntax={mt.EXPLICIT_LE}"


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}",
            responses={**_MULTIPART, 400: {"description": "a malformed bulk data path"}},
            response_class=Response)
def retrieve_bulkdata(request: Request, study: str, series: str, instance: str, path: str,
                      index: IndexDep, store: StoreDep, principal: Reader) -> Response:
    """The value of one bulk data attribute as /metadata's BulkDataURI names it: a top-level
    tag (`7FE00010`), or a path into sequence items (`54000100/1/54001010`, items counted
    from 1). Pixel Data is its frames, one part each, as /frames answers them; any other
    value is one `application/octet-stream` part of its bytes (little endian)."""
    try:
        where = BulkDataPath.parse(path)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    row = _one(request, index, principal, study, series, instance)
    accept = request.headers.get("accept")
    ranges = mt.parse_accept(accept)
    if where.top_level and where.tag in PIXEL_TAGS:
        return _pixel_bulkdata(store, row, ranges, accept, where.tag)
    if mt.frame_answer(ranges, mt.EXPLICIT_LE, can_decode) is None:
        raise _not_acceptable(f"bulk data is {mt.OCTET_STREAM}", accept)
    with _image(store, row) as image:
        try:
            elem = where.element(image.header)
        except (KeyError, IndexError):
            raise HTTPException(404, f"instance {instance} has no bulk data {where}") \
                from None
        if elem.VR not in _BINARY_VRS or not isinstance(elem.value, bytes | bytearray):
            raise HTTPException(404, f"{where} of instance {instance} is not bulk data")
        value = bytes(elem.value)
        if row.transfer_syntax_uid == mt.EXPLICIT_BE:
            value = to_little_endian(value, WORD_SIZE.get(elem.VR, 1))
    return multipart_response(mt.OCTET_STREAM, [(_RAW, value)])


def _pixel_bulkdata(store: ObjectStore, row: ArchivedInstance, ranges: list[mt.MediaRange],
                    accept: str | None, tag: int) -> Response:
    """Pixel Data as bulk data, streamed: native pixel data is one part, its whole value
    (little endian); encapsulated pixel data is one part per frame, as /frames answers."""
    answer = mt.frame_answer(ranges, row.transfer_syntax_uid, can_decode)
    if answer is None:
        raise _not_acceptable(f"the pixel data is stored in {row.transfer_syntax_uid}",
                              accept)
    with _image(store, row) as image:
        if image.pixel is None or image.pixel.tag != tag:
            raise HTTPException(404, f"instance {row.sop_instance_uid} has no "
                                     f"{PIXEL_TAGS[tag]}")
        count, encapsulated = image.number_of_frames, image.encapsulated
    boundary = new_boundary()

    def frames() -> Iterator[bytes]:
        with _image(store, row) as image:
            for n in range(1, count + 1):
                yield part_head(boundary, answer.content_type)
                yield decoded_frame_bytes(image, n) if answer.decode else \
                    stored_frame(image, n)
                yield PART_END
        yield closing(boundary)

    def value() -> Iterator[bytes]:
        with _image(store, row) as image:
            assert image.pixel is not None and image.pixel.length is not None
            width = pixel_word_size(image) if row.transfer_syntax_uid == mt.EXPLICIT_BE \
                else 1
            yield part_head(boundary, _RAW)
            image.stream.seek(image.pixel.value_offset)
            remaining = image.pixel.length
            while remaining > 0:
                chunk = image.stream.read(min(STREAM_CHUNK, remaining))
                if not chunk:
                    raise FrameError("the object ends inside its pixel data")
                remaining -= len(chunk)
                yield to_little_endian(chunk, width)
            yield PART_END
        yield closing(boundary)

    return streamed_response(answer.media_type, boundary,
                             frames() if encapsulated else value())


# -- rendered --------------------------------------------------------------------------------


def _rendered(request: Request, index: Index, store: ObjectStore, principal: Principal,
              study: str, series: str, instance: str, frame: str | None,
              thumbnail: bool) -> Response:
    accept = request.headers.get("accept")
    media_type = mt.rendered_type(mt.parse_accept(accept))
    if media_type is None:
        raise _not_acceptable("renders are image/jpeg or image/png", accept)
    params = request.query_params
    try:
        window = Window.parse(params["window"]) if params.get("window") else None
        viewport = parse_viewport(params["viewport"]) if params.get("viewport") else \
            (THUMBNAIL_SIZE if thumbnail else None)
        quality = parse_quality(params["quality"]) if params.get("quality") else 90
    except InvalidRenderParameter as exc:
        raise HTTPException(400, str(exc)) from None
    numbers = [1] if frame is None else _frame_numbers(frame)
    if len(numbers) != 1:
        raise HTTPException(400, "a render is of one frame")
    row = _one(request, index, principal, study, series, instance)
    with _image(store, row) as image:
        _check_frames(image, numbers)
        try:
            arr = decode_frame(image, numbers[0])
            body = render(arr, image.header, media_type=media_type, window=window,
                          viewport=viewport, quality=quality)
        except FrameError as exc:
            raise _damaged(exc, row) from None
    return Response(body, media_type=media_type, headers={"Cache-Control": "private"})


_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


@router.get(_INSTANCE + "/rendered", responses=_RENDERED, response_class=Response)
def rendered_instance(request: Request, study: str, series: str, instance: str,
                      index: IndexDep, store: StoreDep, principal: Reader) -> Response:
    """The instance rendered (its first frame): `window=center,width[,function]`,
    `viewport=width,height`, `quality` (JPEG)."""
    return _rendered(request, index, store, principal, study, series, instance, None, False)


@router.get(_INSTANCE + "/frames/{frame}/rendered", responses=_RENDERED,
            response_class=Response)
def rendered_frame(request: Request, study: str, series: str, instance: str, frame: str,
                   index: IndexDep, store: StoreDep, principal: Reader) -> Response:
    """One frame rendered."""
    return _rendered(request, index, store, principal, study, series, instance, frame, False)


@router.get(_INSTANCE + "/thumbnail", responses=_RENDERED, response_class=Response)
def thumbnail_instance(request: Request, study: str, series: str, instance: str,
                       index: IndexDep, store: StoreDep, principal: Reader) -> Response:
    """A thumbnail of the instance (its first frame, 128x128 unless `viewport` says)."""
    return _rendered(request, index, store, principal, study, series, instance, None, True)


@router.get(_INSTANCE + "/frames/{frame}/thumbnail", responses=_RENDERED,
            response_class=Response)
def thumbnail_frame(request: Request, study: str, series: str, instance: str, frame: str,
                    index: IndexDep, store: StoreDep, principal: Reader) -> Response:
    """A thumbnail of one frame."""
    return _rendered(request, index, store, principal, study, series, instance, frame, True)
