#!/usr/bin/env python3
"""Render charts/elastiserve/README.md from README.md.gotmpl and the `# --` comments of values.yaml.

    hack/chart-readme.py            # write the README
    hack/chart-readme.py --check    # exit 1 when the README is stale or a value has no `# --` comment

A small stand-in for helm-docs (not installable here) that reads the same conventions, so the chart
can switch to helm-docs without touching values.yaml or the template:

* a ``# -- text`` comment right above a key documents it; following ``#`` lines continue the text;
* ``# @default -- text`` shows ``text`` instead of the literal default;
* the template may use ``{{ template "chart.name" . }}``, ``chart.description``, ``chart.version``,
  ``chart.appVersion``, ``chart.kubeVersion`` and ``chart.valuesTable``.

Every key needs a comment (habit 15); ``--check`` lists the ones that lack it.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "elastiserve"

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.\-/]+|\"[^\"]+\"):(?:\s|$)")
_DOC = re.compile(r"^\s*# -- ?(?P<text>.*)$")
_DEFAULT = re.compile(r"^\s*# @default -- ?(?P<text>.*)$")
_CONT = re.compile(r"^\s*#(?P<text>.*)$")


@dataclass
class ValueDoc:
    path: str
    description: str | None
    default_override: str | None
    line: int


def parse_comments(text: str) -> list[ValueDoc]:
    """Every key of a values file with its `# --` description (None when undocumented)."""
    docs: list[ValueDoc] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    default: str | None = None
    in_block_scalar: int | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if in_block_scalar is not None:
            if stripped and indent <= in_block_scalar:
                in_block_scalar = None
            else:
                continue
        if not stripped:
            pending, default = None, None
            continue
        if m := _DEFAULT.match(line):
            default = m.group("text").strip()
            continue
        if m := _DOC.match(line):
            pending = [m.group("text").strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None and (m := _CONT.match(line)):
                pending.append(m.group("text").strip())
            continue
        if stripped.startswith("- "):
            continue  # a list item belongs to the key above it
        m = _KEY.match(line)
        if not m:
            continue
        key = m.group("key").strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        docs.append(ValueDoc(path, " ".join(p for p in pending if p) if pending is not None else None, default, lineno))
        pending, default = None, None
        rest = line[m.end() :].strip()
        if rest.startswith(("|", ">")):
            in_block_scalar = indent
    return docs


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def values_table(values_text: str) -> str:
    values = yaml.safe_load(values_text) or {}
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for doc in parse_comments(values_text):
        value = _lookup(values, doc.path)
        if isinstance(value, dict) and value:
            continue  # a section: its keys have their own rows
        default = doc.default_override or f"`{json.dumps(value, separators=(',', ':'))}`"
        rows.append(f"| {doc.path} | {_type(value)} | {_cell(default)} | {_cell(doc.description or '')} |")
    return "\n".join(rows)


def undocumented(values_text: str) -> list[ValueDoc]:
    return [d for d in parse_comments(values_text) if not d.description]


def render(template: str, chart: dict[str, Any], values_text: str) -> str:
    fields = {
        "chart.name": chart["name"],
        "chart.description": chart.get("description", "").strip(),
        "chart.version": chart["version"],
        "chart.appVersion": str(chart.get("appVersion", "")),
        "chart.kubeVersion": chart.get("kubeVersion", ""),
        "chart.valuesTable": values_table(values_text),
    }

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in fields:
            raise KeyError(f"README.md.gotmpl: unknown template {name!r} (known: {', '.join(fields)})")
        return fields[name]

    return re.sub(r"\{\{-?\s*template\s+\"([\w.]+)\"\s+\.\s*-?\}\}", sub, template)


def readme(chart_dir: Path = CHART) -> str:
    values_text = (chart_dir / "values.yaml").read_text()
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    return render((chart_dir / "README.md.gotmpl").read_text(), chart, values_text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    missing = undocumented((CHART / "values.yaml").read_text())
    for d in missing:
        print(f"values.yaml:{d.line}: {d.path} has no `# --` comment", file=sys.stderr)
    text = readme()
    target = CHART / "README.md"
    if "--check" in args:
        if not target.exists() or target.read_text() != text:
            print(f"stale: {target.relative_to(ROOT)} (run hack/chart-readme.py)", file=sys.stderr)
            return 1
        return 1 if missing else 0
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
        print(f"wrote {target.relative_to(ROOT)}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
