"""Lazy loading of sub-models: the public names of the loading machinery, in one import.

The pieces live in a file each:

* :mod:`.errors` - the serving errors (one HTTP status each);
* :mod:`.store` - store roots and URI rules, :class:`ModelSource`, ``name=uri`` parsing, version names;
* :mod:`.memcache` - :class:`ModelCache`, the in-memory LRU under a byte budget, and the hot switch;
* :mod:`.watcher` - :class:`ModelsFileWatcher`, the mounted models file that triggers hot switches.
"""

from __future__ import annotations

from .errors import (BudgetExhausted, InvalidModelName, InvalidVersion, ModelLoadError, ModelTooLarge, ServingError,
                     SwitchFailed, UnknownModel, UnsafeModelURI)
from .memcache import CacheStats, Entry, ModelCache, SwitchResult
from .store import (DEFAULT_VERSION, REMOTE_SCHEMES, ModelSource, ModelStore, parse_bytes, parse_model_pairs,
                    parse_models_text, read_models_file, valid_version, version_from_location)
from .watcher import ModelsFileWatcher

__all__ = [
    "BudgetExhausted", "CacheStats", "DEFAULT_VERSION", "Entry", "InvalidModelName", "InvalidVersion",
    "ModelCache", "ModelLoadError", "ModelSource", "ModelStore", "ModelTooLarge", "ModelsFileWatcher",
    "REMOTE_SCHEMES", "ServingError", "SwitchFailed", "SwitchResult", "UnknownModel", "UnsafeModelURI",
    "parse_bytes", "parse_model_pairs", "parse_models_text", "read_models_file", "valid_version",
    "version_from_location",
]
