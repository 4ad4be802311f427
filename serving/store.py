"""The model store: URI rules (roots, no escapes), where a sub-model's files live, and version names.

* :class:`ModelStore` turns ``name=uri`` pairs into :class:`ModelSource` objects and refuses
  anything outside the configured store roots (path traversal, foreign schemes or hosts).
  Local paths and ``file://`` are read directly; ``s3://`` and ``http(s)://`` go through fsspec.
* ``name=uri`` text (``--model``, ``--models-file``) is parsed here; versions are named by the last
  directory of a URI (``.../enc/v2``).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlsplit

from . import paths
from .errors import InvalidModelName, ModelLoadError, ServingError, UnsafeModelURI

REMOTE_SCHEMES = ("s3", "http", "https")


# --------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}


def parse_bytes(value: str | int | float) -> int:
    """'512Mi' -> 536870912, '1G' -> 10**9, '2048' -> 2048 (Kubernetes quantity style)."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse byte size {value!r} (examples: 536870912, 512Mi, 1Gi, 500M)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


# --------------------------------------------------------------------------------------
# model store
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """Where one sub-model's files live. ``location`` is a local directory/file or a remote URL."""

    name: str
    location: str
    remote: bool = False
    # the disk cache remote files come through (an ArtifactCache); not part of the identity
    artifacts: Any = field(default=None, compare=False, repr=False)

    def _is_file(self) -> bool:
        return self.location.endswith(".onnx")

    def artifact(self, variant: str) -> str:
        if self._is_file():
            return self.location
        fname = paths.VARIANT_FILES[variant]
        return posixpath.join(self.location, fname) if self.remote else str(Path(self.location) / fname)

    def sibling(self, fname: str) -> str:
        base = posixpath.dirname(self.location) if self._is_file() else self.location
        return posixpath.join(base, fname) if self.remote else str(Path(base) / fname)

    # -- blocking I/O (call from an executor) -------------------------------------------
    def _error(self, e: Exception, uri: str) -> ModelLoadError:
        from .remote import classify

        err = classify(e, uri)
        return ModelLoadError(self.name, str(err), cause=err.cause, uri=uri)

    def _fs(self):
        import fsspec

        scheme = urlsplit(self.location).scheme
        try:
            return fsspec.filesystem(scheme)
        except ImportError as e:  # e.g. s3fs not installed
            raise ModelLoadError(self.name, f"{scheme}:// needs an fsspec backend that is not installed ({e})") from e

    def size(self, variant: str) -> int:
        art = self.artifact(variant)
        try:
            if not self.remote:
                return os.stat(art).st_size
            if self.artifacts is not None:
                return self.artifacts.size(art)
            info = self._fs().info(art)
            size = info.get("size")
            if size is None:
                raise ModelLoadError(self.name, f"cannot determine the size of {art}")
            return int(size)
        except FileNotFoundError:
            if not self.remote:
                raise ModelLoadError(self.name, f"model file not found: {art}") from None
            raise self._error(FileNotFoundError(art), art) from None
        except ServingError:
            raise
        except Exception as e:  # network errors and the like
            raise self._error(e, art) from e

    def read(self, fname_or_uri: str) -> bytes:
        if not self.remote:
            return Path(fname_or_uri).read_bytes()
        if self.artifacts is not None:
            return self.artifacts.fetch(fname_or_uri).read_bytes()
        with self._fs().open(fname_or_uri, "rb") as f:
            return f.read()

    def load(self, variant: str, intra_op_threads: int | None = None):
        """Load the ONNX session + tokenizer; returns a :class:`runtime.Embedder`. Remote files come through
        the artifact cache when there is one (a verified local copy, with ONNX Runtime's optimized graph kept
        beside it), else are read into memory."""
        from .runtime import Embedder, make_session, open_optimized, optimized_graph_name, write_optimized
        from .textproc import shared_tokenizer

        art = self.artifact(variant)
        current = art
        cached = self.remote and self.artifacts is not None
        try:
            manifest: dict = {}
            current = self.sibling(paths.CONFIG_FILE)
            try:
                manifest = json.loads(self._read_optional(current) or b"{}")
            except (FileNotFoundError, ValueError):
                manifest = {}
            max_length = int(manifest.get("max_length", 256))
            current = self.sibling(paths.TOKENIZER_FILE)
            tok_bytes = self._read_optional(current)
            if tok_bytes is None:
                raise ModelLoadError(self.name, f"{paths.TOKENIZER_FILE} not found next to {art}",
                                     cause="no_such_key" if self.remote else None,
                                     uri=current if self.remote else None)
            tok = shared_tokenizer(tok_bytes.decode("utf-8"), max_length)
            current = art
            if cached:
                with self.artifacts.local(art) as local_path:
                    # ORT's optimized graph, kept next to the artifact after a first load (written in the
                    # background): a reload skips the graph optimization and the weights' copy too
                    folder = (self.artifacts.derived_path(local_path, optimized_graph_name())
                              if self.artifacts.keep_derived else None)
                    try:
                        session = open_optimized(folder, intra_op_threads) if folder is not None else None
                        if session is None:
                            session = make_session(local_path, intra_op_threads)
                    except Exception as e:  # the bytes match the store but are no model: do not keep them
                        cleanup = e
                    else:
                        cleanup = None
                        if folder is not None:
                            self.artifacts.derive(local_path, folder.name, write_optimized)
                if cleanup is not None:
                    self.artifacts.drop(art, f"ONNX Runtime could not load it ({type(cleanup).__name__})")
                    raise cleanup
            else:
                model_src = art if not self.remote else self.read(art)
                if not self.remote and not os.path.exists(art):
                    raise ModelLoadError(self.name, f"model file not found: {art}")
                session = make_session(model_src, intra_op_threads)
            emb = Embedder(session, tok, name=self.name, variant=variant, manifest=manifest)
            if emb._output is None or not ({"input_ids", "attention_mask"} <= emb._inputs):
                raise ModelLoadError(self.name, f"{art} is not a sentence encoder (inputs {sorted(emb._inputs)})")
            return emb
        except ServingError:
            raise
        except FileNotFoundError as e:
            if self.remote:
                raise self._error(e, current) from e
            raise ModelLoadError(self.name, f"file not found: {e.filename or e}") from e
        except Exception as e:  # corrupt protobuf, bad tokenizer json, ORT errors, remote errors...
            from .remote import FetchError

            if isinstance(e, FetchError) or (self.remote and not cached and _is_io_error(e)):
                raise self._error(e, current) from e
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(self.name, f"{type(e).__name__}: {msg[:300]}") from e

    def _read_optional(self, path_or_uri: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        if self.remote and self.artifacts is not None:
            with self.artifacts.local(path_or_uri, optional=True) as p:
                return None if p is None else p.read_bytes()
        try:
            return self.read(path_or_uri)
        except FileNotFoundError:
            return None


def _is_io_error(e: Exception) -> bool:
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs")


class ModelStore:
    """The configured store roots; resolves ``name=uri`` pairs and rejects anything outside them."""

    def __init__(self, roots: Iterable[str | Path] | None = None, *, artifacts: Any = None):
        """``artifacts``: the :class:`~.diskcache.ArtifactCache` remote sources read through (None: read
        remote files straight into memory, as without a disk cache)."""
        self.artifacts = artifacts
        roots = [str(r) for r in (roots or [paths.models_root()])]
        if not roots:
            raise ValueError("at least one model store root is required")
        self.local_roots: list[Path] = []
        self.remote_roots: list[str] = []
        for r in roots:
            scheme = urlsplit(r).scheme
            if scheme in REMOTE_SCHEMES:
                self.remote_roots.append(r.rstrip("/") + "/")
            elif scheme == "file":
                self.local_roots.append(Path(unquote(urlsplit(r).path)).expanduser().resolve())
            elif scheme == "" or len(scheme) == 1:  # "C:" style drive letters count as local
                self.local_roots.append(Path(r).expanduser().resolve())
            else:
                raise ValueError(f"unsupported model store scheme {scheme!r} in {r!r} (local path, file://, s3://, http(s)://)")
        self.roots = roots

    @property
    def default_root(self) -> str:
        return self.roots[0]

    def resolve(self, name: str, uri: str | None = None) -> ModelSource:
        if not paths.valid_model_name(name):
            raise InvalidModelName(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
                                   "(one path segment, not starting with '.' and without '..')")
        uri = uri or name
        parts = urlsplit(uri)
        scheme = parts.scheme
        if scheme in REMOTE_SCHEMES:
            return self._remote(name, uri)
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise UnsafeModelURI(f"file:// URI with a host is not allowed: {uri!r}")
            return self._local(name, Path(unquote(parts.path)))
        if scheme and len(scheme) > 1:
            raise UnsafeModelURI(f"unsupported URI scheme {scheme!r} for model {name!r}")
        p = Path(uri).expanduser()
        if not p.is_absolute():
            if self.local_roots and urlsplit(self.default_root).scheme not in REMOTE_SCHEMES:
                p = self.local_roots[0] / p
            elif self.remote_roots:
                return self._remote(name, self.remote_roots[0] + uri)
        return self._local(name, p)

    def _local(self, name: str, p: Path) -> ModelSource:
        real = p.resolve()  # follows symlinks and '..'
        for root in self.local_roots:
            if real == root or root in real.parents:
                return ModelSource(name, str(real), remote=False)
        raise UnsafeModelURI(f"model {name!r}: {str(p)!r} is outside the model store "
                             f"({', '.join(str(r) for r in self.local_roots) or 'no local roots'})")

    def _remote(self, name: str, uri: str) -> ModelSource:
        parts = urlsplit(uri)
        segments = unquote(parts.path).split("/")
        if any(s in ("..", ".") for s in segments) or "\\" in unquote(parts.path) or parts.query or parts.fragment:
            raise UnsafeModelURI(f"model {name!r}: URI {uri!r} contains '..', '.', a query or a fragment")
        norm = f"{parts.scheme}://{parts.netloc}{parts.path}"
        for root in self.remote_roots:
            if norm.startswith(root) or norm.rstrip("/") + "/" == root:
                return ModelSource(name, norm.rstrip("/"), remote=True, artifacts=self.artifacts)
        raise UnsafeModelURI(f"model {name!r}: {uri!r} is outside the model store "
                             f"({', '.join(self.remote_roots) or 'no remote roots'})")

    def resolve_all(self, pairs: Mapping[str, str | None]) -> dict[str, ModelSource]:
        return {name: self.resolve(name, uri) for name, uri in pairs.items()}

    def discover(self) -> dict[str, ModelSource]:
        """Every directory directly under a local root holding a model artifact."""
        found: dict[str, ModelSource] = {}
        for root in self.local_roots:
            if not root.is_dir():
                continue
            for d in sorted(root.iterdir()):
                if d.is_dir() and paths.valid_model_name(d.name) and d.name not in found and any(
                        (d / f).exists() for f in paths.VARIANT_FILES.values()):
                    found[d.name] = ModelSource(d.name, str(d.resolve()))
        return found


def parse_model_pairs(items: Iterable[str]) -> dict[str, str | None]:
    """['a=/x/a', 'b'] -> {'a': '/x/a', 'b': None}; also accepts comma-separated items."""
    out: dict[str, str | None] = {}
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            name, sep, uri = part.partition("=")
            name = name.strip()
            if name in out:
                raise ValueError(f"model {name!r} listed twice")
            out[name] = uri.strip() if sep else None
    return out


def parse_models_text(text: str) -> dict[str, str | None]:
    """The content of a ``--models-file``: ``name=uri`` lines (same syntax as ``--model``; comma lists
    allowed), blank lines and ``#`` comments ignored."""
    lines = [ln.strip() for ln in text.splitlines()]
    return parse_model_pairs([ln for ln in lines if ln and not ln.startswith("#")])


def read_models_file(path: str | Path) -> dict[str, str | None] | None:
    """Parse a ``--models-file``; None when it does not exist (yet). Unparsable content raises
    :class:`ServingError` (the server refuses to start with it)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        return parse_models_text(text)
    except ValueError as e:
        raise ServingError(f"models file {path}: {e}") from None


# --------------------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------------------
DEFAULT_VERSION = "1"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
# a URI segment that names a version: "v2", "2", "v1.3.0", "2024-05-01"
_VERSION_SEGMENT_RE = re.compile(r"^v?[0-9][A-Za-z0-9._+-]{0,62}$")


def valid_version(version: str) -> bool:
    return isinstance(version, str) and bool(_VERSION_RE.match(version))


def version_from_location(location: str) -> str | None:
    """The version named by the last directory of a model URI (``.../enc/v2`` or ``.../enc/v2/model.onnx``
    -> ``v2``; ``.../enc/3`` -> ``3``), or None when that segment does not look like a version."""
    path = urlsplit(location).path if "://" in location else location
    segs = [seg for seg in path.replace("\\", "/").split("/") if seg]
    if segs and segs[-1].endswith(".onnx"):
        segs = segs[:-1]
    if segs and _VERSION_SEGMENT_RE.match(segs[-1]):
        return segs[-1]
    return None
