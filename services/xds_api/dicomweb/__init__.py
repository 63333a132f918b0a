"""DICOMweb (PS3.18) under `/dicomweb`: QIDO-RS (`qido`), WADO-RS (`wado`), STOW-RS
(`stow`). Web viewers and apps reach the archive here; DIMSE clients through
services/dicom_scp. Both read and write through the same index queries and the same
`Archive.store_file` ingest path."""

from fastapi import APIRouter

from services.xds_api.dicomweb import qido, stow, wado

router = APIRouter(prefix="/dicomweb")
router.include_router(qido.router)
router.include_router(wado.router)
router.include_router(stow.router)
