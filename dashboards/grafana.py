"""spec.Dashboard → Grafana dashboard JSON, built with grafana-foundation-sdk.

Every panel queries the ``$datasource`` variable (a Prometheus data source picked in the dashboard),
so the JSON works in any Grafana without editing data source uids.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common as common_builders, dashboard as db, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from .spec import Dashboard, Panel, Variable

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _thresholds(panel: Panel) -> db.ThresholdsConfig:
    steps = [Threshold(value=None, color=panel.base_color)]
    steps += [Threshold(value=float(v), color=c) for v, c in panel.thresholds]
    return db.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def _targets(panel: Panel) -> list[prometheus.Dataquery]:
    out = []
    for i, t in enumerate(panel.targets):
        q = prometheus.Dataquery().expr(t.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if t.legend:
            q = q.legend_format(t.legend)
        if panel.kind != "timeseries":
            q = q.instant()
        else:
            q = q.range()
        out.append(q)
    return out


def _common(builder: Any, panel: Panel, panel_id: int) -> Any:
    b = (
        builder.id(panel_id)
        .title(panel.title)
        .datasource(DATASOURCE)
        .span(panel.width)
        .height(panel.height)
        .unit(panel.unit)
        .thresholds(_thresholds(panel))
        .targets(_targets(panel))
    )
    if panel.description:
        b = b.description(panel.description)
    if panel.min is not None:
        b = b.min(panel.min)
    if panel.max is not None:
        b = b.max(panel.max)
    if panel.min_interval:
        b = b.interval(panel.min_interval)
    return b


def _reduce_last() -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def panel_builder(panel: Panel, panel_id: int) -> Any:
    if panel.kind == "stat":
        b = _common(stat.Panel(), panel, panel_id)
        return (
            b.reduce_options(_reduce_last())
            .graph_mode(common.BigValueGraphMode.AREA)
            .color_mode(common.BigValueColorMode.VALUE)
        )
    if panel.kind == "bargauge":
        b = _common(bargauge.Panel(), panel, panel_id)
        return (
            b.reduce_options(_reduce_last())
            .display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .orientation(common.VizOrientation.HORIZONTAL)
        )
    b = _common(timeseries.Panel(), panel, panel_id)
    b = b.legend(
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
    ).fill_opacity(10 if not panel.stack else 30)
    if panel.bars:
        b = b.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if panel.stack:
        b = b.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if panel.thresholds:
        b = b.thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE))
    if panel.band:
        lower, upper = panel.band
        b = b.override_by_name(
            upper,
            [
                DynamicConfigValue(id_val="custom.fillBelowTo", value=lower),
                DynamicConfigValue(id_val="custom.fillOpacity", value=25),
                DynamicConfigValue(id_val="custom.lineWidth", value=0),
            ],
        ).override_by_name(lower, [DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})])
    return b


def variable_builder(v: Variable) -> Any:
    if v.query:
        b = (
            db.QueryVariable(v.name)
            .label(v.label)
            .datasource(DATASOURCE)
            .query(v.query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(v.multi)
            .include_all(v.include_all)
        )
        if v.include_all:
            b = b.all_value(".*")
    else:
        b = (
            db.CustomVariable(v.name)
            .label(v.label)
            .values(",".join(v.options))
            .current(VariableOption(selected=True, text=v.options[0], value=v.options[0]))
            .multi(False)
        )
    if v.description:
        b = b.description(v.description)
    return b


def build(d: Dashboard) -> db.Dashboard:
    b = (
        db.Dashboard(d.title)
        .uid(d.uid)
        .description(d.description)
        .tags(list(d.tags))
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time(d.time_from, "now")
        .timezone("browser")
        .refresh(d.refresh)
        .link(
            db.DashboardLink("elastiserve")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(["elastiserve"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for v in d.variables:
        b = b.with_variable(variable_builder(v))
    panel_id = 1
    for row in d.rows:
        b = b.with_row(db.Row(row.title).id(panel_id))
        panel_id += 1
        for panel in row.panels:
            b = b.with_panel(panel_builder(panel, panel_id))
            panel_id += 1
    return b


def to_dict(d: Dashboard) -> dict[str, Any]:
    return json.loads(json.dumps(build(d).build(), cls=JSONEncoder))


def to_json(d: Dashboard) -> str:
    """Stable, human-diffable JSON (sorted keys, two-space indent, trailing newline)."""
    return json.dumps(to_dict(d), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
