"""DIMSE messages as bytes: command sets, the P-DATA that carries them, and the statuses.

A command set is a list of implicit VR little endian elements of group 0000 (PS3.7 6.3.1,
E.1); it travels, like a dataset, as presentation data values (PDVs) in P-DATA-TF PDUs
(PS3.8 9.3.5, E.2). vna reads the fields it acts on straight from the bytes
(`parse_command`) and encodes its responses directly (`encode_response_command`,
byte-identical to pynetdicom's: tests/test_fastpath.py), on the storage loop and on
pynetdicom's path alike. The statuses vna answers, and the comments that go with them,
are defined here and nowhere else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from vna.dicom.part10 import pad

# -- the upper layer (PS3.8 9.3) ---------------------------------------------------------------

A_ASSOCIATE_RQ_PDU, A_ASSOCIATE_AC_PDU, A_ASSOCIATE_RJ_PDU = 0x01, 0x02, 0x03
P_DATA_TF_PDU, A_RELEASE_RQ_PDU, A_RELEASE_RP_PDU, A_ABORT_PDU = 0x04, 0x05, 0x06, 0x07
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))

# A-ABORT source and reasons (PS3.8 9.3.8)
SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED, UNRECOGNIZED_PDU, UNEXPECTED_PDU = 0x00, 0x01, 0x02
UNRECOGNIZED_PDU_PARAMETER, INVALID_PDU_PARAMETER = 0x04, 0x06

# Message control header of a PDV (PS3.8 E.2)
PDV_COMMAND, PDV_LAST = 0x01, 0x02


class ProtocolError(Exception):
    """The peer broke the protocol: the association is aborted with `reason`."""

    def __init__(self, message: str, reason: int = INVALID_PDU_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


_PDATA_HEADER = struct.Struct(">BxIIBB")  # PDU type, PDU length, PDV length, context, control


def pdv_fragments(data: bytes, max_pdu: int, *, command: bool) -> Iterator[tuple[int, bytes]]:
    """(message control header, fragment) of each PDV that carries `data`, one PDV per
    P-DATA-TF PDU within the peer's maximum PDU length (0: unlimited), cut as pynetdicom
    cuts them. Empty data is one empty PDV."""
    step = max(max_pdu - 6, 1) if max_pdu else max(len(data), 1)
    kind = PDV_COMMAND if command else 0
    for start in range(0, max(len(data), 1), step):
        yield (kind | PDV_LAST if start + step >= len(data) else kind), data[start:start + step]


def pdata_pdus(context_id: int, command: bool, data: bytes, max_pdu: int) -> bytes:
    """`data` as encoded P-DATA-TF PDUs (`pdv_fragments`)."""
    return b"".join(_PDATA_HEADER.pack(P_DATA_TF_PDU, len(fragment) + 6, len(fragment) + 2,
                                       context_id, control) + fragment
                    for control, fragment in pdv_fragments(data, max_pdu, command=command))


# -- command sets (PS3.7 9.3, E.1) -------------------------------------------------------------

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATASET = 0x0101  # CommandDataSetType when no dataset follows

_ELEMENT = struct.Struct("<HHI")  # group, element, value length (implicit VR little endian)
_US = struct.Struct("<H")
_UL = struct.Struct("<I")


@dataclass(frozen=True)
class Command:
    """The fields of a request command set that vna acts on."""

    command_field: int
    message_id: int
    has_dataset: bool
    sop_class_uid: str
    sop_instance_uid: str


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def parse_command(data: bytes) -> Command:
    """Read a command set; raises ProtocolError for one that is not well formed."""
    fields: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise ProtocolError("malformed command set")
        fields[elem] = data[pos:pos + length]
        pos += length
    if pos != end or 0x0100 not in fields or 0x0110 not in fields:
        raise ProtocolError("malformed command set")

    def us(elem: int, default: int = 0) -> int:
        raw = fields.get(elem)
        return _US.unpack_from(raw)[0] if raw and len(raw) >= 2 else default

    return Command(us(0x0100), us(0x0110), us(0x0800, NO_DATASET) != NO_DATASET,
                   _text(fields.get(0x0002, b"")), _text(fields.get(0x1000, b"")))


def _element(elem: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, elem, len(value)) + value


def encode_response_command(command_field: int, message_id: int, status: int, *,
                            sop_class_uid: str | None = None,
                            sop_instance_uid: str | None = None,
                            error_comment: str | None = None,
                            has_dataset: bool = False) -> bytes:
    """The command set of a DIMSE response with the common fields (PS3.7 9.3, 9.1.5), in
    the order and padding pynetdicom encodes them."""
    parts = []
    if sop_class_uid:
        parts.append(_element(0x0002, pad(sop_class_uid, b"\x00")))
    parts.append(_element(0x0100, _US.pack(command_field)))
    parts.append(_element(0x0120, _US.pack(message_id)))
    parts.append(_element(0x0800, _US.pack(0x0001 if has_dataset else NO_DATASET)))
    parts.append(_element(0x0900, _US.pack(status)))
    if error_comment:
        parts.append(_element(0x0902, pad(error_comment, b" ")))
    if sop_instance_uid:
        parts.append(_element(0x1000, pad(sop_instance_uid, b"\x00")))
    body = b"".join(parts)
    return _element(0x0000, _UL.pack(len(body))) + body


# -- statuses (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4; PS3.7 C) --------------------------

STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900  # C-STORE: the dataset does not match the SOP Class
STATUS_IDENTIFIER_MISMATCH = 0xA900  # C-FIND/GET/MOVE: the identifier does not match
STATUS_CANNOT_UNDERSTAND = 0xC000  # C-STORE
STATUS_UNABLE_TO_PROCESS = 0xC000  # C-FIND/GET/MOVE
STATUS_DUPLICATE_CONFLICT = 0xC001  # the SOP Instance UID is archived with other content
# The study or SOP Instance is archived for another patient (vna.dicom.identity); the
# code dcm4chee-arc answers, so that what modality engineers know applies.
STATUS_PATIENT_CONFLICT = 0xA778
STATUS_PROCESSING_FAILURE = 0x0110  # PS3.7 C.4.2: a failure vna did not foresee (a bug)
STATUS_NOT_AUTHORIZED = 0x0124  # PS3.7 C.4.5: outside the caller's departments
# PS3.18 10.5.3 (STOW-RS FailureReason): "Referenced Transfer Syntax not supported"
STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


def refusal_status(outcome: str, unreadable: bool) -> int:
    """The status of an instance the archive refused (`storage.archive.StoreResult`): a
    patient conflict, a UID archived with other content, bytes that are not DICOM, or a
    dataset without valid identifying UIDs. C-STORE and STOW-RS answer the same."""
    if outcome == "patient_conflict":
        return STATUS_PATIENT_CONFLICT
    if outcome == "conflict":
        return STATUS_DUPLICATE_CONFLICT
    return STATUS_CANNOT_UNDERSTAND if unreadable else STATUS_DATASET_MISMATCH

# The error comments that are not a refusal's own reason
ARCHIVE_UNAVAILABLE = "archive unavailable"  # with 0xA700: a server or disk under it failed
INVALID_AFFECTED_UIDS = "Affected SOP Class or Instance UID missing or invalid"
INVALID_QUERY_LEVEL = "invalid QueryRetrieveLevel"
QUERY_FAILED = "query failed"

# ErrorComment is an LO (64 characters). A conflict's comment names the study and both
# patient IDs, which a UID alone can fill: like dcm4chee-arc we send it whole, up to this.
ERROR_COMMENT_MAX = 512


def error_comment(text: str) -> str:
    """What fits an ErrorComment: the default character repertoire (a command set has no
    other), at most ERROR_COMMENT_MAX characters."""
    return text.encode("ascii", "replace").decode("ascii")[:ERROR_COMMENT_MAX]


def status_dataset(code: int, comment: str | None = None) -> Dataset:
    """A status with its Error Comment, as pynetdicom's event handlers return one."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = error_comment(comment)
    return ds


# -- N-services: MPPS (PS3.4 F.7.2) and Storage Commitment (PS3.4 J.3); PS3.7 C.4 --------------

STATUS_NO_SUCH_ATTRIBUTE = 0x0105
STATUS_INVALID_ATTRIBUTE_VALUE = 0x0106
STATUS_MAY_NO_LONGER_BE_UPDATED = STATUS_PROCESSING_FAILURE  # with Error ID 0xA710 (F.7.2.2.4)
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111
STATUS_NO_SUCH_OBJECT_INSTANCE = 0x0112
STATUS_CLASS_INSTANCE_CONFLICT = 0x0119
STATUS_MISSING_ATTRIBUTE = 0x0120
STATUS_NO_SUCH_ACTION_TYPE = 0x0123
