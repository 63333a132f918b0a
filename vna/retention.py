"""Retention ("gallring") rules: what may be deleted when, per document class, department
and modality. Rules live in a JSON file (VNA_RETENTION_RULES, default
VNA_DATA_DIR/retention.json) that the region's archivist keeps under change control:

    [{"name": "dermatology photos, 10 years", "target": "documents",
      "classCode": ["photo"], "practiceSettingCode": ["dermatology"], "keepDays": 3650},
     {"name": "ultrasound, 5 years", "target": "instances",
      "modality": ["US"], "department": ["Radiology"], "keepDays": 1825}]

A rule matches what has all its listed attributes (a list: any of its values) and is older
than `keepDays`: documents by creationTime, DICOM instances by the time they were
archived. With no file there are no rules and nothing is ever deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class RetentionRule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=128)]
    target: Literal["documents", "instances"]
    keep_days: Annotated[int, Field(alias="keepDays", ge=1)]
    class_codes: list[str] = Field(default=[], alias="classCode")
    departments: list[str] = Field(default=[], alias="practiceSettingCode")
    modalities: list[str] = Field(default=[], alias="modality")
    dicom_departments: list[str] = Field(default=[], alias="department")

    def model_post_init(self, _context: object) -> None:
        if self.target == "documents" and (self.modalities or self.dicom_departments):
            raise ValueError(f"rule {self.name!r}: documents have classCode and "
                             f"practiceSettingCode, not modality or department")
        if self.target == "instances" and (self.class_codes or self.departments):
            raise ValueError(f"rule {self.name!r}: instances have modality and department, "
                             f"not classCode or practiceSettingCode")
        if not (self.class_codes or self.departments or self.modalities
                or self.dicom_departments):
            raise ValueError(f"rule {self.name!r} selects nothing: name at least one "
                             f"class, department or modality")


_RULES = TypeAdapter(list[RetentionRule])


def load_rules(path: Path) -> list[RetentionRule]:
    """The rules in `path`; none if it does not exist. Raises ValueError if malformed."""
    if not path.exists():
        return []
    return _RULES.validate_json(path.read_bytes())
