"""Storage Commitment Push Model SOP Class (PS3.4 J): the N-ACTION a modality sends before
it deletes its copy. The answer says the request was taken; the result goes back later in
an N-EVENT-REPORT, sent by a worker on a new association."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from storage.archive import Archive
from vna.settings import Settings

PROCESSING_FAILURE = 0x0110


class CommitmentService:
    """The Storage Commitment N-ACTION handler of one SCP process."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive

    def action(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        return PROCESSING_FAILURE, None  # not there yet
