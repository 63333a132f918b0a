"""Modality Performed Procedure Step SOP Class (PS3.4 F.7): N-CREATE when an exam starts,
N-SET while it runs and when it is COMPLETED or DISCONTINUED."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from storage.archive import Archive
from vna.settings import Settings

PROCESSING_FAILURE = 0x0110


class MppsService:
    """The MPPS N-CREATE and N-SET handlers of one SCP process."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive

    def create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        return PROCESSING_FAILURE, None  # not there yet

    def set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        return PROCESSING_FAILURE, None  # not there yet
