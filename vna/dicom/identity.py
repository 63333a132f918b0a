"""Patient identity and the conflicts an archive must not paper over.

An instance is filed under the patient its own header names, never under another: filing
patient B's image in patient A's study is the most dangerous error an archive can make
(C-FIND for B finds nothing; A's study shows an image whose header says B). A patient is
PatientID plus IssuerOfPatientID; an empty issuer matches any issuer (a modality that
does not send one still means the same patient). IDs are compared as sent, case and all.

`VNA_PATIENT_CONFLICT` says what happens to an instance whose study (or SOP Instance) the
archive holds for another patient: `reject` refuses it (C-STORE 0xA778, as dcm4chee-arc
answers) and stores nothing; `accept` files it under a study row of the patient it names,
beside the other patient's row of the same Study Instance UID. Both count it as a
data-quality finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class ConflictPolicy(StrEnum):
    REJECT = "reject"
    ACCEPT = "accept"


@dataclass(frozen=True)
class PatientIdentity:
    patient_id: str
    issuer: str = ""

    def matches(self, other: PatientIdentity) -> bool:
        """The same patient: equal IDs, and issuers equal unless one of them is empty."""
        return self.patient_id == other.patient_id and (
            not self.issuer or not other.issuer or self.issuer == other.issuer)

    def __str__(self) -> str:
        return f"{self.patient_id} (issuer {self.issuer})" if self.issuer else self.patient_id


# patient_conflict: the study or SOP Instance is archived for another patient.
# uid_conflict: a UID archived elsewhere in the hierarchy, or with other content.
Rule = Literal["patient_conflict", "uid_conflict"]


@dataclass(frozen=True)
class IdentityConflict:
    """An instance that contradicts what the archive holds: which rule, and the words the
    sender gets (C-STORE ErrorComment, `vna import`'s reason)."""

    rule: Rule
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sent: PatientIdentity
    archived: PatientIdentity | None
    reason: str

    @classmethod
    def study_of_another_patient(cls, sop: str, study: str, series: str,
                                 sent: PatientIdentity,
                                 archived: PatientIdentity) -> IdentityConflict:
        return cls("patient_conflict", sop, study, series, sent, archived,
                   f"Patient ID {sent} differs from Patient ID {archived} of the archived "
                   f"Study[uid={study}]")

    @classmethod
    def instance_of_another_patient(cls, sop: str, study: str, series: str,
                                    sent: PatientIdentity,
                                    archived: PatientIdentity) -> IdentityConflict:
        return cls("patient_conflict", sop, study, series, sent, archived,
                   f"Patient ID {sent} differs from Patient ID {archived} of the archived "
                   f"SOP Instance[uid={sop}]")

    @classmethod
    def series_of_another_study(cls, sop: str, study: str, series: str,
                                sent: PatientIdentity, archived_study: str) -> IdentityConflict:
        return cls("uid_conflict", sop, study, series, sent, None,
                   f"Series[uid={series}] is archived in Study[uid={archived_study}], "
                   f"not in Study[uid={study}]")

    @classmethod
    def instance_elsewhere(cls, sop: str, study: str, series: str, sent: PatientIdentity,
                           archived_study: str, archived_series: str) -> IdentityConflict:
        return cls("uid_conflict", sop, study, series, sent, None,
                   f"SOP Instance[uid={sop}] is archived in Series[uid={archived_series}] "
                   f"of Study[uid={archived_study}]")

    @classmethod
    def other_content(cls, sop: str, study: str, series: str,
                      sent: PatientIdentity) -> IdentityConflict:
        return cls("uid_conflict", sop, study, series, sent, None,
                   "an instance with this SOPInstanceUID and other content is archived")


def first_match(candidates: list[tuple[int, PatientIdentity]],
                sent: PatientIdentity) -> int | None:
    """The id of the candidate row (study rows of one Study Instance UID, oldest first)
    that belongs to the patient sent: the same issuer first, else a compatible one."""
    compatible = None
    for row_id, who in candidates:
        if who == sent:
            return row_id
        if compatible is None and who.matches(sent):
            compatible = row_id
    return compatible
