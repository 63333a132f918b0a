"""DICOMweb (PS3.18) under `/dicomweb`: QIDO-RS (`qido`), WADO-RS (`wado`), STOW-RS
(`stow`). Web viewers and apps reach the archive here; DIMSE clients through
services/dicom_scp. Both read and write through the same index queries and the same
`Archive.store_file` ingest path. Each router carries the `/dicomweb` prefix itself (not a
parent router's), so the route a request matched, which the audit trail records, is the
whole path template."""

from fastapi import APIRouter

from services.xds_api.dicomweb import qido, stow, wado

ROUTERS: tuple[APIRouter, ...] = (qido.router, wado.router, stow.router)
