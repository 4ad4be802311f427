"""Pure scaling decisions (no I/O, no clock), shared byte-for-byte by the operator and the simulator."""

from .engine import decide
from .panic import panic
from .variants import equivalents, max_equivalents, split

__all__ = ["decide", "panic", "equivalents", "max_equivalents", "split"]
