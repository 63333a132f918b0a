"""Sending archived instances as they are stored (C-GET and C-MOVE sub-operations).

pynetdicom 3.0.4's C-GET/C-MOVE service classes take `Dataset` objects from the handler
and encode them again. To send the archived bytes unchanged, the handlers yield an
`ArchivedInstance` (a Dataset carrying only its UIDs and where its bytes are), and
`Association.send_c_store` is wrapped once per process: an ArchivedInstance whose
transfer syntax the peer accepted is streamed from its file untouched; otherwise it is
decoded and handed to pynetdicom, which converts between the uncompressed syntaxes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from storage.objectstore import ObjectStore


class ArchivedInstance(Dataset):
    """A stored SOP Instance standing in for its dataset until it is sent."""

    def __init__(self, store: ObjectStore, key: str, sop_class_uid: str,
                 sop_instance_uid: str, transfer_syntax_uid: str) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        object.__setattr__(self, "_vna_store", store)
        object.__setattr__(self, "_vna_key", key)
        object.__setattr__(self, "_vna_ts", transfer_syntax_uid)


def _accepts(assoc: Association, sop_class: str, ts: str) -> bool:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == sop_class and cx.transfer_syntax and cx.transfer_syntax[0] == ts:
            return True
    return False


@functools.cache
def install_send_as_stored() -> None:
    """Wrap Association.send_c_store (once) so ArchivedInstances go out as stored."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    original: Callable[..., Any] = Association.send_c_store

    def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(dataset, ArchivedInstance):
            return original(self, dataset, *args, **kwargs)
        store: ObjectStore = dataset._vna_store
        key: str = dataset._vna_key
        with store.local_copy(key) as path:
            if _accepts(self, str(dataset.SOPClassUID), dataset._vna_ts):
                return original(self, path, *args, **kwargs)
            decoded = dcmread(path)
        return original(self, decoded, *args, **kwargs)

    Association.send_c_store = send_c_store  # type: ignore[method-assign]


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
