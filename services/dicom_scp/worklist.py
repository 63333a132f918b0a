"""Modality Worklist Information Model - FIND (PS3.4 K): the C-FIND a modality sends to pick
today's patient, answered from the orders in the index."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from storage.archive import Archive
from vna.settings import Settings

STATUS_UNABLE_TO_PROCESS = 0xC000


class WorklistService:
    """The MWL C-FIND handler of one SCP process."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive

    def find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        yield STATUS_UNABLE_TO_PROCESS, None  # not there yet
