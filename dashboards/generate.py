"""Write the dashboards' Grafana JSON (``dashboards/generated/``) and the chart's ConfigMaps.

    python dashboards/generate.py            # write
    python dashboards/generate.py --check    # exit 1 when a generated file is stale

``hack/sync-chart.py`` calls :func:`outputs` too, together with the CRD template.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    # Run as a script: make `dashboards` importable without putting the repository root first on
    # sys.path (the root holds folders such as `operator/` that must never shadow the stdlib).
    sys.path.append(str(ROOT))
    __package__ = "dashboards"

from dashboards import DASHBOARDS  # noqa: E402
from dashboards.grafana import to_json  # noqa: E402
from dashboards.spec import Dashboard  # noqa: E402

GENERATED = ROOT / "dashboards" / "generated"
CHART_GRAFANA = ROOT / "charts" / "elastiserve" / "templates" / "grafana"

_BRACES = re.compile(r"\{\{|\}\}")


def escape_for_helm(text: str) -> str:
    """Make literal ``{{``/``}}`` (Grafana legends such as ``{{variant}}``) survive Helm's templating."""
    return _BRACES.sub(lambda m: "{{`" + m.group(0) + "`}}", text)


def source_module(d: Dashboard) -> str:
    for name in ("fleet", "model", "operator_health"):
        mod = sys.modules.get(f"dashboards.{name}")
        if mod is not None and getattr(mod, "DASHBOARD", None) is d:
            return f"dashboards/{name}.py"
    return "dashboards/"


def configmap_template(d: Dashboard, json_text: str) -> str:
    short = d.uid.removeprefix("elastiserve-")
    body = "\n".join(("    " + line) if line else line for line in escape_for_helm(json_text).rstrip("\n").split("\n"))
    return f"""{{{{- /* Generated from {source_module(d)} by dashboards/generate.py (hack/sync-chart.py): do not edit. */}}}}
{{{{- if .Values.grafana.dashboards.enabled }}}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{{{ include "elastiserve.fullname" . }}}}-dashboard-{short}
  namespace: {{{{ default .Release.Namespace .Values.grafana.dashboards.namespace }}}}
  labels:
    {{{{- include "elastiserve.labels" (dict "ctx" . "component" "dashboards") | nindent 4 }}}}
    {{{{ .Values.grafana.dashboards.label }}}}: {{{{ .Values.grafana.dashboards.labelValue | quote }}}}
  {{{{- if or .Values.grafana.dashboards.folder .Values.grafana.dashboards.annotations }}}}
  annotations:
    {{{{- with .Values.grafana.dashboards.folder }}}}
    grafana_folder: {{{{ . | quote }}}}
    {{{{- end }}}}
    {{{{- with .Values.grafana.dashboards.annotations }}}}
    {{{{- toYaml . | nindent 4 }}}}
    {{{{- end }}}}
  {{{{- end }}}}
data:
  {d.filename}: |-
{body}
{{{{- end }}}}
"""


def outputs() -> dict[Path, str]:
    """Every generated file: path → content."""
    files: dict[Path, str] = {}
    for d in DASHBOARDS:
        text = to_json(d)
        files[GENERATED / d.filename] = text
        files[CHART_GRAFANA / f"dashboard-{d.uid.removeprefix('elastiserve-')}.yaml"] = configmap_template(d, text)
    return files


def stale(files: dict[Path, str]) -> list[Path]:
    return [p for p, text in files.items() if not p.exists() or p.read_text() != text]


def write(files: dict[Path, str]) -> list[Path]:
    changed = stale(files)
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
    return changed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    files = outputs()
    if "--check" in args:
        bad = stale(files)
        for p in bad:
            print(f"stale: {p.relative_to(ROOT)} (run python dashboards/generate.py)", file=sys.stderr)
        return 1 if bad else 0
    for p in write(files):
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
