"""Grafana JSON building blocks (schema version 39): queries, panels, variables, layout, the dashboard.

Plain dictionaries, no dependency. Every panel and query uses the `datasource` template variable, so
the JSON works with file provisioning (which does not resolve `${DS_...}` import inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Json = dict[str, Any]

SCHEMA_VERSION = 39
DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
DAY = 86400


# ------------------------------------------------------------------------------------------- queries


def query(expr: str, legend: str = "", *, fmt: str = "time_series", instant: bool = False) -> Json:
    """A Prometheus query; `fmt` is `time_series`, `table` or `heatmap`."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }


def current(expr: str, legend: str = "") -> Json:
    """An instant query as a table: the latest value of each series, one row per series."""
    return query(expr, legend, fmt="table", instant=True)


# ---------------------------------------------------------------------------------------- field config


def thresholds(base: str, *steps: tuple[str, float]) -> Json:
    """Absolute thresholds: `base` colour below the first step."""
    return {
        "mode": "absolute",
        "steps": [{"color": base, "value": None}] + [{"color": color, "value": value} for color, value in steps],
    }


def boolean(true_text: str, false_text: str, *, good: int = 1) -> Json:
    """Field defaults for a 0/1 gauge: texts for both values, green for the `good` one, red for the other."""
    colors = {good: "green", 1 - good: "red"}
    return {
        "mappings": [
            {
                "type": "value",
                "options": {
                    "1": {"color": colors[1], "index": 0, "text": true_text},
                    "0": {"color": colors[0], "index": 1, "text": false_text},
                },
            }
        ],
        "thresholds": thresholds(colors[0], (colors[1], 1)),
        "color": {"mode": "thresholds"},
    }


def countdown(warning: float, critical: float) -> Json:
    """Field defaults for seconds left until a deadline: red below `critical`, orange below `warning`."""
    return {"thresholds": thresholds("red", ("orange", critical), ("green", warning)), "color": {"mode": "thresholds"}}


def by_name(field: str, **properties: Any) -> Json:
    """A field override matching a field by its name."""
    return {
        "matcher": {"id": "byName", "options": field},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def link(title: str, url: str) -> Json:
    return {"title": title, "url": url, "targetBlank": url.startswith("docs/")}


# ------------------------------------------------------------------------------------------------ panels


def panel(
    kind: str,
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    size: tuple[int, int],
    options: Json,
    defaults: Json | None = None,
    overrides: Sequence[Json] = (),
    transformations: Sequence[Json] = (),
    links: Sequence[Json] = (),
) -> Json:
    """A panel of any `kind`; `size` is (width, height) in grid units, the position comes from `layout`."""
    width, height = size
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "targets": [{**target, "refId": chr(ord("A") + index)} for index, target in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": list(overrides)},
        "options": options,
        "transformations": list(transformations),
        "links": list(links),
    }


def stat(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    size: tuple[int, int],
    defaults: Json,
    no_value: str,
    links: Sequence[Json] = (),
) -> Json:
    """Big coloured numbers (or mapped texts), one per series, named by the legend."""
    options = {
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "center",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "auto",
        "wideLayout": True,
    }
    return panel(
        "stat",
        title,
        description,
        targets,
        unit=unit,
        size=size,
        options=options,
        defaults={**defaults, "noValue": no_value},
        links=links,
    )


def timeseries(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    size: tuple[int, int],
    bars: bool = False,
    links: Sequence[Json] = (),
) -> Json:
    custom = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if bars else "none"},
    }
    options = {
        "legend": {"calcs": ["mean", "max"], "displayMode": "table", "placement": "right", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel(
        "timeseries",
        title,
        description,
        targets,
        unit=unit,
        size=size,
        options=options,
        defaults={"custom": custom, "min": 0},
        links=links,
    )


def state_timeline(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    size: tuple[int, int],
    defaults: Json,
    links: Sequence[Json] = (),
) -> Json:
    """One coloured band per series: the history of a 0/1 state."""
    options = {
        "alignValue": "center",
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
        "mergeValues": True,
        "rowHeight": 0.8,
        "showValue": "never",
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return panel(
        "state-timeline",
        title,
        description,
        targets,
        unit="none",
        size=size,
        options=options,
        defaults={**defaults, "custom": {"fillOpacity": 80, "lineWidth": 0}},
        links=links,
    )


def table(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    size: tuple[int, int],
    defaults: Json | None = None,
    overrides: Sequence[Json] = (),
    transformations: Sequence[Json] = (),
    links: Sequence[Json] = (),
) -> Json:
    """A table whose cells are coloured by the thresholds or value mappings of `defaults`."""
    custom = {"align": "auto", "cellOptions": {"type": "color-background", "mode": "basic"}, "filterable": True}
    options = {"cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}, "showHeader": True}
    return panel(
        "table",
        title,
        description,
        targets,
        unit=unit,
        size=size,
        options=options,
        defaults={"custom": custom, **(defaults or {})},
        overrides=overrides,
        transformations=transformations,
        links=links,
    )


def heatmap(
    title: str, description: str, target: Json, *, y_unit: str, size: tuple[int, int], links: Sequence[Json] = ()
) -> Json:
    """A heatmap of pre-bucketed histogram series (query format `heatmap`, legend `{{le}}`)."""
    options = {
        "calculate": False,
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5, "steps": 64},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "yHistogram": True},
        "yAxis": {"axisPlacement": "left", "unit": y_unit},
    }
    return panel("heatmap", title, description, [target], unit="short", size=size, options=options, links=links)


def bargauge(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    size: tuple[int, int],
    defaults: Json,
    links: Sequence[Json] = (),
) -> Json:
    """Horizontal bars, one per series: many targets at a glance."""
    options = {
        "displayMode": "basic",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "valueMode": "color",
    }
    return panel(
        "bargauge", title, description, targets, unit=unit, size=size, options=options, defaults=defaults, links=links
    )


def row(title: str) -> Json:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": 0},
        "panels": [],
    }


def layout(panels: Iterable[Json]) -> list[Json]:
    """Place panels left to right, wrapping at the grid width; a row starts a new line. Numbers them."""
    placed, x, y, line_height = [], 0, 0, 0
    for number, item in enumerate(panels, start=1):
        pos = item["gridPos"]
        if item["type"] == "row" or x + pos["w"] > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        placed.append({**item, "id": number, "gridPos": {**pos, "x": x, "y": y}})
        x, line_height = x + pos["w"], max(line_height, pos["h"])
    return placed


# --------------------------------------------------------------------------------------------- variables


def datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def query_variable(name: str, label: str, definition: str, *, all_value: str | None = ".*") -> Json:
    """A multi-value variable from `label_values(...)`; "All" is `all_value`, or every option when None."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": definition,
        "query": {"query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "allValue": all_value,
        "current": {},
        "hide": 0,
        "includeAll": True,
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }


# --------------------------------------------------------------------------------------------- dashboard


def dashboard(
    uid: str,
    title: str,
    description: str,
    *,
    panels: Iterable[Json],
    variables: Sequence[Json],
    links: Sequence[Json],
    time_from: str,
    time_to: str,
    tags: Sequence[str],
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": list(tags),
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": time_from, "to": time_to},
        "timepicker": {},
        "timezone": "",
        "refresh": "1m",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": []},
        "templating": {"list": [datasource_variable(), *variables]},
        "links": list(links),
        "panels": layout(panels),
    }
