"""Bounded, strict YAML reading of manifests: what ``elastiserve validate`` (and anyone handed a file by a
user) reads with.

Stricter than ``yaml.safe_load`` where the API server (kubectl's YAML → JSON) is strict, and bounded where
a hostile file could make it hang:

- a duplicate key in a mapping is an error (kubectl refuses it; PyYAML silently keeps the last one);
- at most ``MAX_BYTES`` per file, read as UTF-8 (a byte-order mark is dropped), so ``/dev/zero`` or a huge
  file ends with a message instead of a MemoryError;
- at most ``MAX_DEPTH`` levels of nesting (no RecursionError) and ``MAX_NODES`` nodes once aliases are
  expanded ("billion laughs" anchors end at once, not after minutes and gigabytes).

Every error names the file, the line and the column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20
"""1 MiB: the API server stores objects of at most about 1.5 MiB; a ModelDeployment is a few KiB."""
MAX_DEPTH = 64
MAX_NODES = 100_000


class ManifestError(ValueError):
    """A file that cannot be read as manifests; the message names file, line and column."""


def _where(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str, source: str):
        super().__init__(stream)
        self.source = source
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}

    def _size(self, node: yaml.Node) -> int:
        """Nodes in ``node`` with aliases expanded (memoized: a shared sub-tree is measured once)."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._size(v) for v in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        return size

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise ManifestError(f"{_where(self.source, mark)}: more than {MAX_NODES} values once aliases are "
                                "expanded; a ModelDeployment has a few hundred")

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            anchored = self.anchors.get(event.anchor)
            if anchored is not None:
                self._count(self._size(anchored), event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ManifestError(f"{_where(self.source, self.peek_event().start_mark)}: nested more than "
                                    f"{MAX_DEPTH} levels deep")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1, node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if first is not None:
                    raise ManifestError(
                        f"{_where(self.source, key_node.start_mark)}: duplicate key {str(key)[:60]!r} "
                        f"(first at line {first.line + 1}); the API server refuses it, remove one")
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# kubectl's YAML (go-yaml) reads 1e3 as a number; YAML 1.1 (PyYAML) as a string. Read it as kubectl does.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def read_text(path: Path) -> str:
    """A file's text: at most ``MAX_BYTES``, UTF-8, without a byte-order mark."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_BYTES} bytes; a manifest is a few KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return text.removeprefix("\ufeff")


def load_all(text: str, source: str) -> list[Any]:
    """Every non-empty YAML document of ``text``."""
    docs = []
    loader = None
    try:
        loader = _BoundedLoader(text, source)
        while loader.check_data():
            doc = loader.get_data()
            if doc is not None:
                docs.append(doc)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or type(exc).__name__
        if isinstance(exc, yaml.reader.ReaderError):
            line = text[: exc.position].count("\n") + 1
            raise ManifestError(f"{source}:{line}: not valid YAML (character #x{exc.character:04x} is not allowed)") from None
        raise ManifestError(f"{_where(source, mark)}: not valid YAML ({str(problem)[:200]})") from None
    finally:
        if loader is not None:
            loader.dispose()
    return docs


def load_file(path: Path) -> list[Any]:
    return load_all(read_text(path), str(path))
