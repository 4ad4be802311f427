"""Shared pydantic base and helpers for the API models.

Every model uses camelCase names on the wire (the Kubernetes convention) and snake_case in Python.
Unknown fields are rejected (``extra="forbid"``) so that a typo such as ``minReplica`` is an error
that names the field, exactly as the API server's structural schema prunes or rejects it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
"""A Kubernetes quantity in the subset we accept for byte sizes (e.g. ``512Mi``, ``2Gi``, ``1000000``)."""

_QUANTITY_FACTORS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_bytes(quantity: str | int) -> int:
    """Parse a byte quantity (``"512Mi"``, ``"1G"``, ``1024``) into an integer number of bytes."""
    if isinstance(quantity, int):
        return quantity
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity.strip())
    if not m:
        raise ValueError(f"{quantity!r} is not a byte quantity such as 512Mi, 2Gi or 1000000")
    return int(float(m.group(1)) * _QUANTITY_FACTORS[m.group(2) or ""])


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, no unknown fields, validated on assignment."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, ``None`` fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
