"""Sending archived instances as they are stored (C-GET and C-MOVE sub-operations).

pynetdicom 3.0.4's C-GET/C-MOVE service classes take `Dataset` objects from the handler
and encode them again. To send the archived bytes unchanged, the handlers yield an
`ArchivedInstance` (a Dataset carrying only its UIDs and where its bytes are), and
`Association.send_c_store`, wrapped by `pynetdicom_compat`, sends what its `for_sending`
gives: the stored file, streamed untouched, when the peer accepted its transfer syntax;
otherwise the decoded dataset, which pynetdicom converts between the uncompressed syntaxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext

from storage.objectstore import ObjectStore


class ArchivedInstance(Dataset):
    """A stored SOP Instance standing in for its dataset until it is sent."""

    def __init__(self, store: ObjectStore, key: str, sop_class_uid: str,
                 sop_instance_uid: str, transfer_syntax_uid: str,
                 scratch: Path | None = None, *, patient_id: str = "",
                 study_uid: str = "") -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        object.__setattr__(self, "_vna_store", store)
        object.__setattr__(self, "_vna_key", key)
        object.__setattr__(self, "_vna_ts", transfer_syntax_uid)
        object.__setattr__(self, "_vna_scratch", scratch)  # where an S3 object is copied
        object.__setattr__(self, "_vna_patient", patient_id)  # for the audit trail
        object.__setattr__(self, "_vna_study", study_uid)

    @contextmanager
    def for_sending(self, accepted: Iterable[PresentationContext]) -> Iterator[Path | Dataset]:
        """What to hand pynetdicom's `send_c_store`: the stored file when one of the
        `accepted` contexts has its SOP class and transfer syntax (sent unchanged), else
        the decoded dataset (pynetdicom converts it)."""
        sop_class, ts = str(self.SOPClassUID), self._vna_ts
        with self._vna_store.local_copy(self._vna_key, self._vna_scratch) as path:
            if any(cx.abstract_syntax == sop_class and cx.transfer_syntax
                   and cx.transfer_syntax[0] == ts for cx in accepted):
                yield path
                return
            decoded = dcmread(path)
        yield decoded


def contexts_for(pairs: set[tuple[str, str]], limit: int = 128) -> list[PresentationContext]:
    """Presentation contexts to propose to a C-MOVE destination for these (SOP class, TS).

    One context per stored transfer syntax (so it can be sent unchanged) plus, per SOP
    class, the uncompressed little endian syntaxes to fall back on.
    """
    out: list[PresentationContext] = []
    uncompressed = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
    for sop_class in sorted({p[0] for p in pairs}):
        stored = sorted({ts for sc, ts in pairs if sc == sop_class})
        for ts in stored:
            out.append(_cx(sop_class, [ts]))
        out.append(_cx(sop_class, uncompressed))
    return out[:limit]


def _cx(sop_class: str, syntaxes: list[str]) -> PresentationContext:
    """A presentation context proposing `syntaxes` for `sop_class`."""
    cx = PresentationContext()
    cx.abstract_syntax = sop_class
    cx.transfer_syntax = list(syntaxes)
    return cx
