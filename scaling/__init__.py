"""Pure scaling decisions (no I/O, no clock), shared byte-for-byte by the operator and the simulator."""

from .engine import decide
from .variants import equivalents, max_equivalents, split

__all__ = ["decide", "equivalents", "max_equivalents", "split"]
