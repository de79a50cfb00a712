#!/usr/bin/env python3
"""Checks the Grafana dashboard JSON the chart ships (charts/ssm-operator/dashboards/).

No well-kept tool checks a dashboard against Grafana's own schema offline (Grafana
validates on import; its schema lives in CUE inside Grafana), so this checks the
structure Grafana and the sidecar rely on and what the issue promises:

- valid JSON with title, uid, schemaVersion, panels, and the template variables
  datasource (type datasource, prometheus), namespace and job;
- every panel: unique id, a type, a title, a description, a gridPos inside the
  24-column grid, the ${datasource} data source, and targets, each with a
  unique refId, the same data source, and a PromQL expr;
- the panels the issue asks for are there (by title);
- every panel's expr, with the variables filled in ($namespace and $job as
  ".*", $__rate_interval as 1m), is written as a recording rule to the file
  given as the second argument, so `promtool check rules` can parse them all.

  hack/check-dashboard.py DASHBOARD.json OUT-RULES.yaml

Prints each problem; exits 1 if there is any.
"""
import json
import sys

REQUIRED_PANELS = [
    "Resources by condition and kind",
    "Status lag p50 / p99",
    "SSM calls by operation and outcome",
    "SSM budget rate and throttles",
    "Reconciles and errors",
    "Watch errors",
    "Push messages by kind",
    "Leader",
    "Resident memory",
]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SUBSTITUTIONS = [("$namespace", ".*"), ("$job", ".*"), ("$__rate_interval", "1m")]


def fill(expr):
    for var, value in SUBSTITUTIONS:
        expr = expr.replace(var, value)
    return expr


def main(path, out):
    problems = []
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as error:
        print(f"check-dashboard: {path}: {error}")
        return 1
    for key in ("title", "uid", "schemaVersion", "panels", "templating"):
        if key not in dash:
            problems.append(f"dashboard has no {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no datasource variable of type datasource querying prometheus")
    for name in ("namespace", "job"):
        var = variables.get(name)
        if not var or var.get("datasource") != DATASOURCE or var.get("allValue") != ".*":
            problems.append(f"no {name} variable on ${{datasource}} with allValue .*")
    rules, ids, titles = [], set(), []
    for panel in dash.get("panels", []):
        title = panel.get("title") or f"panel {panel.get('id')}"
        titles.append(title)
        if panel.get("id") in ids:
            problems.append(f"{title}: duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        for key in ("type", "title", "description", "gridPos", "targets"):
            if not panel.get(key):
                problems.append(f"{title}: no {key}")
        grid = panel.get("gridPos", {})
        if not (0 <= grid.get("x", -1) and grid.get("x", 0) + grid.get("w", 0) <= 24 and grid.get("h", 0) > 0):
            problems.append(f"{title}: gridPos {grid} outside the 24-column grid")
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{title}: data source {panel.get('datasource')}, not ${{datasource}}")
        refs = set()
        for target in panel.get("targets", []):
            ref = target.get("refId")
            if not ref or ref in refs:
                problems.append(f"{title}: missing or duplicate refId {ref}")
            refs.add(ref)
            if target.get("datasource") != DATASOURCE:
                problems.append(f"{title} {ref}: data source is not ${{datasource}}")
            if not target.get("expr"):
                problems.append(f"{title} {ref}: no expr")
                continue
            rules.append((f"dashboard:panel{panel.get('id')}:{ref}", fill(target["expr"])))
    for wanted in REQUIRED_PANELS:
        if wanted not in titles:
            problems.append(f"no panel titled {wanted!r}")
    with open(out, "w", encoding="utf-8") as f:
        f.write("groups:\n  - name: dashboard-queries\n    rules:\n")
        for record, expr in rules:
            f.write(f"      - record: {record}\n        expr: {json.dumps(expr)}\n")
    for p in problems:
        print(f"check-dashboard: {p}")
    print(f"check-dashboard: {len(dash.get('panels', []))} panels, {len(rules)} queries written to {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
