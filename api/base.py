"""Shared pydantic base and helpers for the API models.

Every model uses camelCase names on the wire (the Kubernetes convention) and snake_case in Python.
Unknown fields are rejected (``extra="forbid"``) so that a typo such as ``minReplica`` is an error
that names the field, exactly as the API server's structural schema prunes or rejects it.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][-+]?[0-9]{1,2}))?$"
)
"""A non-negative Kubernetes quantity (``512Mi``, ``2Gi``, ``500m``, ``2e9``, ``1.5``): the API machinery's
grammar without a sign and with a two-digit exponent, so every value accepted here is one the API server
accepts and ``parse_quantity`` reads exactly."""

_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(QUANTITY_PATTERN)


def parse_quantity(quantity: str | int) -> Decimal:
    """A Kubernetes quantity as an exact decimal (``"2e9"`` → 2000000000, ``"500m"`` → 0.5).

    Raises ValueError for anything ``QUANTITY_PATTERN`` does not match. Tested against the Kubernetes
    client's ``kubernetes.utils.parse_quantity`` (not imported here: it loads the whole client)."""
    if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 0:
        return Decimal(quantity)
    text = str(quantity)
    if not _QUANTITY.fullmatch(text):
        raise ValueError(f"{text[:40]!r} is not a Kubernetes quantity such as 512Mi, 2Gi, 500m or 2e9")
    m = re.fullmatch(r"([0-9.]+)([eE][-+]?[0-9]+|[a-zA-Z]*)", text)
    number, suffix = Decimal(m.group(1)), m.group(2)
    if re.fullmatch(r"[eE][-+]?[0-9]+", suffix):
        return Decimal(m.group(1) + suffix)  # exact (scaleb would round to the context's precision)
    return number * _SUFFIX[suffix] if suffix else number


def parse_bytes(quantity: str | int) -> int:
    """A byte quantity as an integer number of bytes (rounded up, as Kubernetes does for memory)."""
    return int(parse_quantity(quantity).to_integral_value(rounding=ROUND_CEILING))


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
