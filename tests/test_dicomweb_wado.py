"""WADO-RS against `vna api` under uvicorn, on files + SQLite and S3 + PostgreSQL: the
independent dicomweb-client library and OHIF's exact requests, over instances archived
through `vna import`'s path (objects byte-identical to the files) and through C-STORE from
DCMTK's storescu to a running `vna scp`; pydicom's compressed test files through frames,
bulk data, renders and transcoding, compared with what pydicom itself decodes."""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, get_frame
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from tests.api_client import ADMIN_TOKEN, RunningAPI
from tests.conftest import Backend, running_scp
from tests.factory import PYDICOM_TEST_FILES, dataset_bytes, make_instance, write

pytestmark = pytest.mark.timeout(600)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
OHIF_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OHIF_FRAMES_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax='
OHIF_METADATA = ('application/dicom+json, multipart/related; '
                 'type="application/octet-stream"; transfer-syntax=*')

# pydicom's test files: compressed (every codec vna decodes), native oddities, and bulk data
# inside sequences. name -> series role
CORPUS = {
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline, YBR_FULL",
    "examples_ybr_color.dcm": "JPEG baseline, 30 frames, Basic Offset Table",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless SV1",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless",
    "JPEG2000.dcm": "JPEG 2000",
    "MR_small_RLE.dcm": "RLE",
    "rtdose_rle.dcm": "RLE, 15 frames, no offset table",
    "SC_rgb_rle_2frame.dcm": "RLE RGB, 2 frames",
    "MR_small_bigendian.dcm": "Explicit VR Big Endian",
    "image_dfl.dcm": "Deflated Explicit VR Little Endian",
    "rtdose.dcm": "Implicit VR, 15 frames of 32 bits",
    "liver_1frame.dcm": "1 bit",
    "SC_ybr_full_422_uncompressed.dcm": "native YBR_FULL_422",
    "waveform_ecg.dcm": "bulk data in a sequence (Waveform Data)",
    "examples_overlay.dcm": "Pixel Data in a sequence (Icon Image) and at the top",
    "JPGExtended.dcm": "12-bit JPEG, which no decoder installed here decodes",
}


def _reuid(ds: Dataset, study: str, patient: str, department: str = "Radiology") -> Dataset:
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient
    ds.InstitutionalDepartmentName = department
    return ds


def _multiframe_jpeg_ls(study: str, patient: str, how: str) -> Dataset:
    """Five 8-bit frames in JPEG-LS, encapsulated `how`: with a Basic Offset Table (`bot`),
    one and two fragments per frame (`fragments`), two fragments per frame and no offset
    table, so that frames are found by their EOI markers (`markers`), or with an Extended
    Offset Table (`extended`)."""
    from pydicom.pixels import get_encoder

    frames = [((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * (i + 3)) % 251)
              .astype(np.uint8) for i in range(5)]
    ds = make_instance(patient_id=patient, study_uid=study, series_uid=generate_uid(),
                       size=8, InstitutionalDepartmentName="Radiology")
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 48, 64, 8, 8, 7
    ds.NumberOfFrames = 5
    encoder = get_encoder(JPEGLSLossless)
    encoded = [encoder.encode(f.tobytes(), rows=48, columns=64, samples_per_pixel=1,
                              bits_allocated=8, bits_stored=8, pixel_representation=0,
                              photometric_interpretation="MONOCHROME2",
                              number_of_frames=1) for f in frames]
    if how == "extended":
        data, eot, lengths = encapsulate_extended(encoded)
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = eot, lengths
    elif how == "fragments":
        data = encapsulate(encoded, fragments_per_frame=2, has_bot=True)
    elif how == "markers":  # two fragments a frame, no table: found by their EOI markers
        data = encapsulate(encoded, fragments_per_frame=2, has_bot=False)
    else:
        data = encapsulate(encoded, has_bot=True)
    ds.PixelData = data
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return ds


@pytest.fixture(scope="module")
def corpus(module_backend: Backend, api: RunningAPI,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The corpus in one study (a series per file), archived by `vna import`'s path, plus a
    CT series of three instances and, for department limits, a study of another
    department."""
    from services.runtime import open_archive

    d = tmp_path_factory.mktemp("wado")
    tag = uuid.uuid4().hex[:8]
    patient, study = f"W{tag}", generate_uid()
    files: dict[str, Path] = {}
    for name in CORPUS:
        ds = _reuid(dcmread(PYDICOM_TEST_FILES / name), study, patient)
        files[name] = write(ds, d / name)
    for how in ("bot", "fragments", "markers", "extended"):
        files[f"jls-{how}"] = write(_multiframe_jpeg_ls(study, patient, how), d / f"jls-{how}.dcm")
    ct_series = generate_uid()
    ct = [write(make_instance(patient_id=patient, study_uid=study, series_uid=ct_series,
                              instance_number=i + 1, size=16, WindowCenter=["100", "50"],
                              WindowWidth=["200", "100"], RescaleIntercept=-1024,
                              RescaleSlope=1, InstitutionalDepartmentName="Radiology"),
                d / f"ct{i}.dcm") for i in range(3)]
    mono1 = write(make_instance(patient_id=patient, study_uid=study, size=16,
                                PhotometricInterpretation="MONOCHROME1",
                                InstitutionalDepartmentName="Radiology"), d / "mono1.dcm")
    lung_study = generate_uid()
    lung = write(make_instance(patient_id=patient, study_uid=lung_study, modality="MR",
                               InstitutionalDepartmentName="Lung"), d / "lung.dcm")
    archive = open_archive(module_backend.settings())
    try:
        results = archive.store_files([*files.values(), *ct, mono1, lung], source_aet="TEST")
    finally:
        archive.index.dispose()
    assert all(r.ok for r in results), results
    return {"study": study, "patient": patient, "files": files, "ct": ct,
            "ct_series": ct_series, "mono1": mono1, "lung_study": lung_study}


# -- helpers ---------------------------------------------------------------------------------

def client(api: RunningAPI, token: str = ADMIN_TOKEN) -> DICOMwebClient:
    return DICOMwebClient(f"{api.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def uids(path: Path) -> tuple[str, str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def instance_path(path: Path) -> str:
    st, se, sop = uids(path)
    return f"/dicomweb/studies/{st}/series/{se}/instances/{sop}"


def parts(r: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related answer, parsed here (independently of vna)."""
    ct = r.headers["content-type"]
    assert ct.startswith("multipart/related"), ct
    m = re.search(r'boundary="?([^";]+)"?', ct)
    assert m, ct
    delimiter = b"\r\n--" + m.group(1).encode()
    body = b"\r\n" + r.content
    segments = body.split(delimiter)
    assert segments[0] == b"" and segments[-1] == b"--\r\n", (segments[0][:40], segments[-1])
    out = []
    for seg in segments[1:-1]:
        head, _, content = seg.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().strip().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        out.append((headers, content))
    return out


def pixels(path: Path) -> np.ndarray:
    return dcmread(path).pixel_array


def frames_of(path: Path) -> list[np.ndarray]:
    arr = pixels(path)
    ds = dcmread(path, stop_before_pixels=True)
    return list(arr) if int(ds.get("NumberOfFrames") or 1) > 1 else [arr]


def native(arr: np.ndarray) -> bytes:
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def state(backend: Backend) -> tuple[int, int, int]:
    """(instances, headers kept, audit-free fingerprint): what a bad request must not change."""
    from storage.index.db import Index

    settings: Any = backend.settings()
    index = Index(settings.resolved_database_url)
    try:
        with index.read_session() as s:
            return (s.execute(sa.text("SELECT count(*) FROM instance")).scalar_one(),
                    s.execute(sa.text("SELECT count(*) FROM instance_metadata")).scalar_one(),
                    s.execute(sa.text("SELECT count(*) FROM outbox_event")).scalar_one())
    finally:
        index.dispose()


def assert_error(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


# -- retrieve instances ----------------------------------------------------------------------

def test_retrieve_as_stored_is_byte_identical(api: RunningAPI, corpus: dict[str, Any]) -> None:
    """transfer-syntax=* (quoted or not) and no transfer syntax: the archived bytes."""
    c = api.client()
    paths = [corpus["files"][n] for n in ("examples_ybr_color.dcm", "image_dfl.dcm",
                                          "MR_small_bigendian.dcm")]
    for accept in ('multipart/related; type="application/dicom"; transfer-syntax=*',
                   'multipart/related; type=application/dicom; transfer-syntax="*"',
                   'multipart/related; type="application/dicom"', None):
        for path in paths:
            r = c.get(instance_path(path), headers={"Accept": accept} if accept else {})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith(
                'multipart/related; type="application/dicom"; boundary=')
            [(headers, content)] = parts(r)
            assert content == path.read_bytes()
            ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
            assert headers["content-location"].endswith(instance_path(path))


def test_dicomweb_client_retrieves_study_series_instance(api: RunningAPI,
                                                         corpus: dict[str, Any]) -> None:
    c = client(api)
    study = c.retrieve_study(corpus["study"])
    assert len(study) == len(corpus["files"]) + 4  # + CT series + MONOCHROME1
    by_uid = {str(ds.SOPInstanceUID): ds for ds in study}
    for path in corpus["files"].values():
        assert uids(path)[2] in by_uid
    series = c.retrieve_series(corpus["study"], corpus["ct_series"])
    assert sorted(int(ds.InstanceNumber) for ds in series) == [1, 2, 3]
    path = corpus["files"]["MR_small_jpeg_ls_lossless.dcm"]
    st, se, sop = uids(path)
    ds = c.retrieve_instance(st, se, sop)
    assert np.array_equal(ds.pixel_array, pixels(path))


@pytest.mark.parametrize("name", [
    "SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm", "SC_rgb_jpeg_gdcm.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
    "MR_small_RLE.dcm", "rtdose_rle.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
    "jls-extended"])
def test_transcoded_to_explicit_vr_little_endian(api: RunningAPI, corpus: dict[str, Any],
                                                 name: str) -> None:
    """An explicit transfer syntax the instance is not stored in: decoded by pydicom's
    plugins; the pixels are pydicom's own decoding of the stored file."""
    path = corpus["files"][name]
    st, se, sop = uids(path)
    ds = client(api).retrieve_instance(st, se, sop,
                                       media_types=(("application/dicom", EXPLICIT_LE),))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    assert str(ds.SOPInstanceUID) == sop
    assert np.array_equal(ds.pixel_array, pixels(path))


def test_transcoded_to_implicit_and_preference_order(api: RunningAPI,
                                                     corpus: dict[str, Any]) -> None:
    c = api.client()
    path = corpus["files"]["MR_small_RLE.dcm"]
    r = c.get(instance_path(path), headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={IMPLICIT_LE}'})
    assert r.status_code == 200
    [(headers, content)] = parts(r)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={IMPLICIT_LE}"
    ds = dcmread(io.BytesIO(content))
    assert ds.file_meta.TransferSyntaxUID == IMPLICIT_LE
    assert np.array_equal(ds.pixel_array, pixels(path))
    # JPEG baseline cannot be made, Explicit VR Little Endian can: the second range wins;
    # with q-values, the stored syntax is preferred over Explicit VR Little Endian
    for accept, expected in (
            (f"{DICOM_ANY}1.2.840.10008.1.2.4.50, {DICOM_ANY}{EXPLICIT_LE}", EXPLICIT_LE),
            (f"{DICOM_ANY}{EXPLICIT_LE};q=0.5, {DICOM_ANY}*", "1.2.840.10008.1.2.5")):
        r = c.get(instance_path(path), headers={"Accept": accept})
        [(headers, _)] = parts(r)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={expected}"


def test_unsupported_transfer_syntax_is_406(api: RunningAPI, corpus: dict[str, Any],
                                            module_backend: Backend) -> None:
    before = state(module_backend)
    c = api.client()
    path = corpus["ct"][0]
    for accept in (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4',
            "application/dicom+json", "image/jpeg"):
        r = c.get(instance_path(path), headers={"Accept": accept})
        assert_error(r, 406)
    st, se, _ = uids(path)
    r = c.get(f"/dicomweb/studies/{st}/series/{se}",
              headers={"Accept": f"{DICOM_ANY}1.2.840.10008.1.2.4.80"})
    assert_error(r, 406)
    assert state(module_backend) == before


def test_dimse_in_dicomweb_out(module_backend: Backend, api: RunningAPI,
                               tmp_path: Path) -> None:
    """C-STORE (pynetdicom, sending the files' bytes as they are) -> `vna scp` -> WADO-RS:
    the datasets come back byte for byte; /metadata is right before any worker ran, and
    equals what the worker derives afterwards. (DCMTK's storescu re-encodes some files,
    such as the ECG, on the way: it would not show that vna changes nothing.)"""
    from services.runtime import open_archive
    from storage.derive import Deriver
    from tests.dicom_client import store

    study, series = generate_uid(), generate_uid()
    sent = [write(make_instance(patient_id="DIMSE1", study_uid=study, series_uid=series,
                                instance_number=i + 1, size=32,
                                InstitutionalDepartmentName="Radiology"),
                  tmp_path / "in" / f"{i}.dcm") for i in range(4)]
    sent.append(write(_reuid(dcmread(PYDICOM_TEST_FILES / "waveform_ecg.dcm"), study,
                             "DIMSE1"), tmp_path / "in" / "ecg.dcm"))
    with running_scp(module_backend) as scp:
        assert store(scp.port, sent) == [0] * len(sent)
    c = api.client()
    r = c.get(f"/dicomweb/studies/{study}", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200
    got = {str(dcmread(io.BytesIO(content), stop_before_pixels=True).SOPInstanceUID): content
           for _, content in parts(r)}
    assert len(got) == len(sent)
    for i, path in enumerate(sent):
        back = tmp_path / f"back-{i}.dcm"
        back.write_bytes(got[uids(path)[2]])
        assert dataset_bytes(back) == dataset_bytes(path), path.name  # exactly as sent
    # /metadata before any worker: built from the objects on the spot (and kept)
    h = {"Accept": "application/dicom+json"}
    first = c.get(f"/dicomweb/studies/{study}/metadata", headers=h)
    assert first.status_code == 200, first.text
    assert state(module_backend)[1] >= len(sent)
    settings: Any = module_backend.settings()
    archive = open_archive(settings)
    try:
        assert Deriver(archive.index, archive.store).drain() >= len(sent)
    finally:
        archive.index.dispose()
    second = c.get(f"/dicomweb/studies/{study}/metadata", headers=h)
    assert second.status_code == 200
    assert first.json() == second.json()  # the worker derived the very same headers
    by_sop = {m["00080018"]["Value"][0]: m for m in second.json()}
    for path in sent:
        ds = dcmread(path, stop_before_pixels=True)
        m = by_sop[str(ds.SOPInstanceUID)]
        assert m["00100020"]["Value"] == ["DIMSE1"]
        assert m["0020000D"]["Value"] == [study]


# -- metadata --------------------------------------------------------------------------------

def test_metadata_at_three_levels(api: RunningAPI, corpus: dict[str, Any]) -> None:
    c = client(api)
    study = c.retrieve_study_metadata(corpus["study"])
    assert len(study) == len(corpus["files"]) + 4
    series = c.retrieve_series_metadata(corpus["study"], corpus["ct_series"])
    assert sorted(m["00200013"]["Value"][0] for m in series) == [1, 2, 3]
    st, se, sop = uids(corpus["ct"][0])
    [inst] = [c.retrieve_instance_metadata(st, se, sop)]
    assert inst["00080018"]["Value"] == [sop]
    assert inst["00281050"]["Value"] == [100, 50]  # Window Center, both values
    for m in study:
        assert list(m) == sorted(m)
        for tag, element in m.items():
            assert len(element.get("InlineBinary", "")) <= 1024, tag  # never large inline
    # the composite Accept OHIF once sent on metadata gets metadata, not 406
    r = api.client().get(f"/dicomweb/studies/{st}/series/{se}/metadata",
                         headers={"Accept": OHIF_METADATA})
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "application/dicom+json")
    assert len(r.json()) == 3


def test_bulkdata_uris_resolve(api: RunningAPI, corpus: dict[str, Any]) -> None:
    """Every BulkDataURI is an absolute URL under the instance; top-level Pixel Data, a
    value in a sequence item and Pixel Data inside a sequence (an icon) do not collide."""
    c = client(api)
    http = api.client()

    def fetch(uri: str) -> list[bytes]:
        # dicomweb-client sends no port in Host, so its URLs name none: put it back
        return c.retrieve_bulkdata(re.sub(r"^http://[^/]+", api.url, uri))

    ecg = corpus["files"]["waveform_ecg.dcm"]
    st, se, sop = uids(ecg)
    meta = c.retrieve_instance_metadata(st, se, sop)
    items = meta["54000100"]["Value"]
    assert len(items) == 2
    uri = items[0]["54001010"]["BulkDataURI"]
    assert uri.startswith("http") and uri.endswith(
        f"/studies/{st}/series/{se}/instances/{sop}/bulkdata/54000100/1/54001010")
    assert items[1]["54001010"]["BulkDataURI"].endswith("/bulkdata/54000100/2/54001010")
    source = dcmread(ecg)
    assert fetch(uri) == [bytes(source.WaveformSequence[0].WaveformData)]
    assert fetch(items[1]["54001010"]["BulkDataURI"]) == \
        [bytes(source.WaveformSequence[1].WaveformData)]
    r = http.get(re.sub(r"^http://[^/]+", "", uri))  # httpx's Host has the port
    assert r.status_code == 200
    [(headers, content)] = parts(r)
    assert headers["content-type"].startswith("application/octet-stream")

    overlay = corpus["files"]["examples_overlay.dcm"]
    st, se, sop = uids(overlay)
    meta = c.retrieve_instance_metadata(st, se, sop)
    source = dcmread(overlay)
    top = meta["7FE00010"]["BulkDataURI"]
    icon = meta["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert top != icon and icon.endswith("/bulkdata/00880200/1/7FE00010")
    assert fetch(icon) == [bytes(source.IconImageSequence[0].PixelData)]
    assert fetch(top) == [bytes(source.PixelData)]  # native: one part, the whole value

    # compressed Pixel Data: one part per frame, as stored under */*
    multi = corpus["files"]["examples_ybr_color.dcm"]
    st, se, sop = uids(multi)
    meta = c.retrieve_instance_metadata(st, se, sop)
    got = fetch(meta["7FE00010"]["BulkDataURI"])
    source = dcmread(multi)
    assert got == [get_frame(source.PixelData, i, number_of_frames=30) for i in range(30)]


def test_bulkdata_bad_paths(api: RunningAPI, corpus: dict[str, Any],
                            module_backend: Backend) -> None:
    before = state(module_backend)
    c = api.client()
    base = instance_path(corpus["files"]["waveform_ecg.dcm"])
    for path, status in (("54000100/3/54001010", 404), ("12345678", 404),
                         ("00100010", 404), ("54000100/0/54001010", 400), ("zz", 400),
                         ("54000100/1", 400)):
        assert_error(c.get(f"{base}/bulkdata/{path}"), status)
    assert state(module_backend) == before


def test_metadata_etag_and_304(api: RunningAPI, corpus: dict[str, Any]) -> None:
    c = api.client()
    url = f"/dicomweb/studies/{corpus['study']}/series/{corpus['ct_series']}/metadata"
    c.get(url)  # headers kept if a worker had not derived them yet
    r1, r2 = c.get(url), c.get(url)
    etag = r1.headers["etag"]
    assert etag and etag == r2.headers["etag"] and r1.content == r2.content
    r = c.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    r = c.get(url, headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200 and r.content == r1.content
    other = c.get(f"/dicomweb/studies/{corpus['study']}/metadata").headers["etag"]
    assert other != etag


# -- frames ----------------------------------------------------------------------------------

FRAME_FILES = ["SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm", "SC_rgb_jpeg_gdcm.dcm",
               "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
               "MR_small_RLE.dcm", "rtdose_rle.dcm", "SC_rgb_rle_2frame.dcm", "jls-bot",
               "jls-fragments", "jls-markers", "jls-extended"]


@pytest.mark.parametrize("name", FRAME_FILES)
def test_compressed_frames(api: RunningAPI, corpus: dict[str, Any], name: str) -> None:
    """As stored for OHIF's Accept (quoted and unquoted), decoded to native bytes for
    application/octet-stream with Explicit VR Little Endian (dicomweb-client)."""
    path = corpus["files"][name]
    st, se, sop = uids(path)
    ds = dcmread(path)
    ts = str(ds.file_meta.TransferSyntaxUID)
    n = int(ds.get("NumberOfFrames") or 1)
    wanted = sorted({1, n, (n + 1) // 2})
    expected = frames_of(path)
    for accept in (OHIF_FRAMES, OHIF_FRAMES_QUOTED):
        r = api.client().get(f"{instance_path(path)}/frames/{','.join(map(str, wanted))}",
                             headers={"Accept": accept})
        assert r.status_code == 200, r.text
        got = parts(r)
        assert [h["content-type"] for h, _ in got] == \
            [f"application/octet-stream; transfer-syntax={ts}"] * len(wanted)
        eot = None
        if "ExtendedOffsetTable" in ds:
            eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        assert [c for _, c in got] == [get_frame(ds.PixelData, i - 1, number_of_frames=n,
                                                 extended_offsets=eot) for i in wanted]
    decoded = client(api).retrieve_instance_frames(
        st, se, sop, wanted, media_types=(("application/octet-stream", EXPLICIT_LE),))
    assert decoded == [native(expected[i - 1]) for i in wanted]


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "image_dfl.dcm", "rtdose.dcm",
                                  "liver_1frame.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_native_frames(api: RunningAPI, corpus: dict[str, Any], name: str) -> None:
    """Native frames are little endian bytes, whatever the stored byte order, encoding or
    bit packing; for every Accept form that takes octet-stream."""
    path = corpus["files"][name]
    st, se, sop = uids(path)
    ds = dcmread(path)
    n = int(ds.get("NumberOfFrames") or 1)
    wanted = sorted({1, n})
    if name == "liver_1frame.dcm":  # bit-packed: compare with pydicom's packing of the frame
        from pydicom.pixels import pack_bits
        expected = [pack_bits(frames_of(path)[i - 1]) for i in wanted]
    elif name.startswith("SC_ybr_full_422"):  # two samples per pixel, as stored
        expected = [bytes(ds.PixelData)]
    else:
        expected = [native(frames_of(path)[i - 1]) for i in wanted]
    frame_list = ",".join(map(str, wanted))
    octets = "multipart/related; type=application/octet-stream"
    for accept in (OHIF_FRAMES, OHIF_FRAMES_QUOTED, octets,
                   f"{octets}; transfer-syntax={EXPLICIT_LE}", None):
        r = api.client().get(f"{instance_path(path)}/frames/{frame_list}",
                             headers={"Accept": accept} if accept else {})
        assert r.status_code == 200, (accept, r.text)
        got = parts(r)
        assert [c for _, c in got] == expected, accept
        assert all(h["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
                   for h, _ in got)
    assert client(api).retrieve_instance_frames(st, se, sop, wanted) == expected


def test_frame_errors(api: RunningAPI, corpus: dict[str, Any], module_backend: Backend) -> None:
    before = state(module_backend)
    c = api.client()
    multi = instance_path(corpus["files"]["rtdose_rle.dcm"])  # 15 frames
    for frames, status in (("0", 404), ("16", 404), ("1,16", 404), ("1,a", 400),
                           ("1,,2", 400), ("-1", 400), ("1.5", 400), ("%20", 400)):
        assert_error(c.get(f"{multi}/frames/{frames}", headers={"Accept": OHIF_FRAMES}), status)
    no_pixels = instance_path(corpus["files"]["waveform_ecg.dcm"])
    assert_error(c.get(f"{no_pixels}/frames/1"), 404)
    # a compressed frame asked as JPEG 2000 when it is RLE: nothing can be made
    r = c.get(f"{multi}/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert_error(r, 406)
    assert state(module_backend) == before


FRAME_MEDIA = {"1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
               "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.90": "image/jp2",
               "1.2.840.10008.1.2.4.91": "image/jp2", "1.2.840.10008.1.2.5": "image/dicom-rle"}


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "JPEG2000.dcm", "rtdose_rle.dcm"])
def test_frames_in_their_own_media_type(api: RunningAPI, corpus: dict[str, Any],
                                        name: str) -> None:
    """`type="image/jpeg"` (and the other codecs' types, as dicomweb-client names them)."""
    path = corpus["files"][name]
    st, se, sop = uids(path)
    ds = dcmread(path)
    ts = str(ds.file_meta.TransferSyntaxUID)
    got = client(api).retrieve_instance_frames(st, se, sop, [1],
                                               media_types=((FRAME_MEDIA[ts], ts),))
    n = int(ds.get("NumberOfFrames") or 1)
    assert got == [get_frame(ds.PixelData, 0, number_of_frames=n)]
    r = api.client().get(f"{instance_path(path)}/frames/1",
                         headers={"Accept": f'multipart/related; type="{FRAME_MEDIA[ts]}"'})
    [(headers, _)] = parts(r)
    assert headers["content-type"] == f"{FRAME_MEDIA[ts]}; transfer-syntax={ts}"


def test_what_cannot_be_decoded_here_is_406(api: RunningAPI, corpus: dict[str, Any]) -> None:
    """12-bit JPEG (no decoder for it is installed): as stored it is there; decoded,
    transcoded or rendered it is a 406 that says so, not a broken answer."""
    path = corpus["files"]["JPGExtended.dcm"]
    try:
        _ = dcmread(path).pixel_array
    except RuntimeError:
        pass
    else:
        pytest.skip("a decoder for 12-bit JPEG is installed")
    c = api.client()
    url = instance_path(path)
    assert c.get(f"{url}/frames/1", headers={"Accept": OHIF_FRAMES}).status_code == 200
    assert c.get(url).status_code == 200
    assert_error(c.get(f"{url}/frames/1", headers={
        "Accept": "multipart/related; type=application/octet-stream"}), 406)
    assert_error(c.get(url, headers={"Accept": f"{DICOM_ANY}{EXPLICIT_LE}"}), 406)
    assert_error(c.get(f"{url}/rendered"), 406)


# -- rendered --------------------------------------------------------------------------------

def test_rendered_and_thumbnail(api: RunningAPI, corpus: dict[str, Any]) -> None:
    c = client(api)
    path = corpus["files"]["examples_ybr_color.dcm"]  # 240 x 320 RGB, 30 frames
    st, se, sop = uids(path)
    jpeg = c.retrieve_instance_rendered(st, se, sop)
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (320, 240) and img.mode == "RGB"
    expected = pixels(path)[0].astype(int)
    assert np.abs(np.asarray(img).astype(int) - expected).mean() < 8
    http = api.client()
    r = http.get(f"{instance_path(path)}/frames/5/rendered", params={"viewport": "160,160"},
                 headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (160, 120)  # fitted, aspect kept
    assert np.abs(np.asarray(img.resize((320, 240))).astype(int) -
                  pixels(path)[4].astype(int)).mean() < 12
    r = http.get(f"{instance_path(path)}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (128, 96)


def test_rendered_windows_and_monochrome1(api: RunningAPI, corpus: dict[str, Any]) -> None:
    http = api.client()
    ct = corpus["ct"][0]  # values 0..255 (16 x 16), Rescale Intercept -1024

    def png(path: Path, **params: str) -> np.ndarray:
        r = http.get(f"{instance_path(path)}/rendered", params=params,
                     headers={"Accept": "image/png"})
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(r.content)))

    raw = pixels(ct).astype(float) - 1024  # Hounsfield units
    # the dataset's first window: center 100, width 200 -> everything below 0 is black
    assert png(ct).max() == 0
    got = png(ct, window="-900,256")
    expected = np.clip(((raw - (-900 - 0.5)) / 255 + 0.5) * 255, 0, 255)
    assert np.abs(got.astype(float) - expected).max() <= 1
    assert png(ct, window="-900,256,sigmoid").shape == (16, 16)
    mono1 = corpus["mono1"]
    mono2 = corpus["ct"][1]  # same pixels, MONOCHROME2, no window in mono1: full range
    inverted = png(mono1)
    assert inverted[0, 0] == 255 and inverted.min() == 0
    for params, status in (({"window": "1,2,3,4"}, 400), ({"window": "a,b"}, 400),
                           ({"window": "10,0"}, 400), ({"viewport": "0,10"}, 400),
                           ({"viewport": "10"}, 400), ({"quality": "101"}, 400)):
        assert_error(http.get(f"{instance_path(mono2)}/rendered", params=params), status)
    assert_error(http.get(f"{instance_path(mono2)}/rendered",
                          headers={"Accept": "image/gif"}), 406)
    assert_error(http.get(f"{instance_path(corpus['files']['waveform_ecg.dcm'])}/rendered"),
                 404)


# -- access and bad input ---------------------------------------------------------------------

def test_unknown_uids_are_404(api: RunningAPI, corpus: dict[str, Any],
                              module_backend: Backend) -> None:
    before = state(module_backend)
    c = api.client()
    st, se, sop = uids(corpus["ct"][0])
    nope = generate_uid()
    for url in (f"/dicomweb/studies/{nope}", f"/dicomweb/studies/{nope}/metadata",
                f"/dicomweb/studies/{st}/series/{nope}",
                f"/dicomweb/studies/{st}/series/{nope}/metadata",
                f"/dicomweb/studies/{st}/series/{se}/instances/{nope}",
                f"/dicomweb/studies/{st}/series/{se}/instances/{nope}/metadata",
                f"/dicomweb/studies/{st}/series/{se}/instances/{nope}/frames/1",
                f"/dicomweb/studies/{st}/series/{se}/instances/{nope}/rendered",
                f"/dicomweb/studies/{st}/series/{se}/instances/{nope}/bulkdata/7FE00010",
                # the instance exists, but not in this series
                f"/dicomweb/studies/{st}/series/{nope}/instances/{sop}"):
        assert_error(c.get(url), 404)
    assert_error(c.get("/dicomweb/studies/not-a-uid/metadata"), 400)
    assert_error(c.get(f"/dicomweb/studies/{st}/series/x..y"), 400)
    assert state(module_backend) == before


def test_department_limits_and_audit(api: RunningAPI, corpus: dict[str, Any],
                                     module_backend: Backend) -> None:
    lung = api.client(api.token("viewer", ["Lung"]))
    radiology = api.client(api.token("viewer", ["Radiology"]))
    st, se, sop = uids(corpus["ct"][0])
    for url in (f"/dicomweb/studies/{st}", f"/dicomweb/studies/{st}/metadata",
                f"/dicomweb/studies/{st}/series/{se}/instances/{sop}/frames/1"):
        assert_error(lung.get(url), 404)
        assert radiology.get(url).status_code == 200
    assert lung.get(f"/dicomweb/studies/{corpus['lung_study']}/metadata").status_code == 200
    assert_error(radiology.get(f"/dicomweb/studies/{corpus['lung_study']}"), 404)
    uploader = api.client(api.token("uploader"))
    assert uploader.get(f"/dicomweb/studies/{st}/metadata").status_code == 403
    assert api.client(None).get(f"/dicomweb/studies/{st}/metadata").status_code == 401

    from storage.index.db import Index

    settings: Any = module_backend.settings()
    index = Index(settings.resolved_database_url)
    try:
        with index.read_session() as s:
            rows = s.execute(sa.text(
                "SELECT route, status, patient_id, resource FROM audit_event "
                "WHERE action = 'dicomweb.retrieve' AND resource = :st"), {"st": st}).all()
    finally:
        index.dispose()
    routes = {(r.route.removeprefix("/dicomweb"), r.status) for r in rows}
    assert ("/studies/{study}", 404) in routes
    assert ("/studies/{study}", 200) in routes
    assert ("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", 200) \
        in routes
    assert all(r.patient_id == corpus["patient"] for r in rows if r.status == 200)


# -- memory ---------------------------------------------------------------------------------

def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_series_retrieval_streams_in_constant_memory(module_backend: Backend, api: RunningAPI,
                                                     tmp_path: Path) -> None:
    """~200 MB of a series through the API: the server's RSS grows by little (the figure
    is printed; the benchmark proper is benchmarks/dicomweb.py)."""
    from services.runtime import open_archive

    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4096, size=(1024, 1024), dtype=np.uint16)
    paths = []
    for i in range(100):  # 2 MiB each
        ds = make_instance(patient_id="BIG1", study_uid=study, series_uid=series,
                           instance_number=i + 1, size=8)
        ds.Rows = ds.Columns = 1024
        ds.PixelData = np.roll(image, i).tobytes()
        paths.append(write(ds, tmp_path / f"{i}.dcm"))
    archive = open_archive(module_backend.settings())
    try:
        assert all(r.ok for r in archive.store_files(paths, source_aet="TEST"))
    finally:
        archive.index.dispose()
    for p in paths:
        p.unlink()
    pid = api.proc.pid
    c = api.client()
    c.get(f"/dicomweb/studies/{study}/series/{series}/metadata")  # warm up the route
    baseline = _rss(pid)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    total = 0
    started = time.monotonic()
    try:
        with c.stream("GET", f"/dicomweb/studies/{study}/series/{series}", headers={
                "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes(1 << 20):
                total += len(chunk)
                time.sleep(0.001)  # a client a little slower than loopback
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - started
    growth = peak - baseline
    print(f"\n{module_backend.name}: {total / 1e6:.0f} MB in {elapsed:.1f} s "
          f"({total / 1e6 / elapsed:.0f} MB/s), vna api RSS {baseline / 1e6:.0f} MB -> "
          f"peak {peak / 1e6:.0f} MB (+{growth / 1e6:.1f} MB)")
    assert total > 200e6
    assert growth < 50e6, f"RSS grew by {growth / 1e6:.0f} MB while streaming"
