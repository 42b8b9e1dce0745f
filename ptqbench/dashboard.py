"""A wandb report for one sweep group, made from code: the sweep's table, accuracy vs bits,
per-layer SQNR, time and memory (docs/wandb.md).

`python -m ptqbench.dashboard --group G [--project P --entity E] [--save]`. Without `--save` it
needs no network: it builds the report, checks every panel, and writes the panels' wandb JSON to
`--out` (default `results/dashboards/<group>.json`). `--save` uploads the report (wandb online,
logged in) and prints its URL. The panels read the keys ptqbench.tracking logs (PANEL_KEYS), so a
renamed key fails the tests instead of leaving an empty panel. Needs the optional
`wandb-workspaces` package: `pip install -e ".[dashboard]"`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from ptqbench.errors import ConfigError

# Summary keys of the job runs and media/Table keys of the `summary` run that the panels read.
JOB_METRICS = {
    "accuracy": ["top1", "drop_top1"],
    "time": ["time/calibration_s", "time/eval_s"],
    "memory": ["memory/calibration/peak_rss_mb", "memory/evaluation/peak_rss_mb"],
    "sqnr": ["sqnr/output_sqnr_db", "sqnr/mean_sqnr_db", "sqnr/min_sqnr_db"],
}
SUMMARY_TABLES = ["report/table", "report/runs", "report/layer_sqnr"]
SUMMARY_MEDIA = ["report/bits", "report/drop", "report/layer_sqnr_plot"]
JOB_TABLES = ["layer_sqnr"]
PANEL_KEYS = {"job_summary": [k for ks in JOB_METRICS.values() for k in ks], "summary_tables": SUMMARY_TABLES,
              "summary_media": SUMMARY_MEDIA, "job_tables": JOB_TABLES}


def _workspaces() -> Any:
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as e:
        raise ConfigError(f"the dashboard needs the optional wandb-workspaces package ({e}): "
                          "pip install -c constraints.txt -e \".[dashboard]\"") from e
    return wr


def runset_filter(group: str, job_type: str) -> str:
    """The runset query of one group's jobs or its summary run (wandb's filter expression)."""
    if "'" in group:
        raise ConfigError(f"group {group!r} contains a quote; wandb filter expressions cannot hold it")
    return f"Metric('Group') == '{group}' and Metric('JobType') == '{job_type}'"


def _panels(wr: Any) -> tuple[list[Any], list[Any]]:
    """(panels over the summary run, panels over the job runs)."""
    by_method = wr.Config("method.name")
    summary = [
        wr.WeavePanelSummaryTable(table_name="report/table"),
        wr.MediaBrowser(title="accuracy vs bits, drop from FP, per-layer SQNR", media_keys=SUMMARY_MEDIA),
        wr.WeavePanelSummaryTable(table_name="report/layer_sqnr"),
        wr.WeavePanelSummaryTable(table_name="report/runs"),
    ]
    jobs = [
        wr.ScatterPlot(title="top-1 vs activation bits", x=wr.Config("bits.a"), y=wr.SummaryMetric("top1")),
        wr.ScatterPlot(title="top-1 vs weight bits", x=wr.Config("bits.w"), y=wr.SummaryMetric("top1")),
        wr.BarPlot(title="drop from FP (points)", metrics=[wr.SummaryMetric("drop_top1")], groupby=by_method,
                   groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.BarPlot(title="logits SQNR vs FP (dB)", metrics=[wr.SummaryMetric(k) for k in JOB_METRICS["sqnr"]],
                   groupby=by_method, groupby_aggfunc="mean"),
        wr.BarPlot(title="time (s)", metrics=[wr.SummaryMetric(k) for k in JOB_METRICS["time"]], groupby=by_method,
                   groupby_aggfunc="mean"),
        wr.BarPlot(title="peak memory (MB)", metrics=[wr.SummaryMetric(k) for k in JOB_METRICS["memory"]],
                   groupby=by_method, groupby_aggfunc="max"),
        wr.WeavePanelSummaryTable(table_name="layer_sqnr"),
    ]
    return summary, jobs


def build_report(group: str, project: str = "ptqbench", entity: str = "") -> Any:
    """The report object (wandb_workspaces.reports.v2.Report) for `group`; building it needs no
    network, saving it does."""
    wr = _workspaces()
    summary_panels, job_panels = _panels(wr)
    summary_runs = wr.Runset(entity=entity, project=project, name="summary", filters=runset_filter(group, "summary"))
    job_runs = wr.Runset(entity=entity, project=project, name="jobs", filters=runset_filter(group, "job"),
                         groupby=["method.name"])
    return wr.Report(
        project=project, entity=entity, title=f"ptqbench: {group}",
        description="The sweep's table, accuracy vs bits, per-layer SQNR, time and memory (ptqbench.dashboard).",
        blocks=[
            wr.H1(f"Sweep {group}"),
            wr.P("Table and figures of the sweep (the `summary` run, updated by every relaunch)."),
            wr.PanelGrid(runsets=[summary_runs], panels=summary_panels),
            wr.H2("Jobs: accuracy, quantization error, time and memory"),
            wr.PanelGrid(runsets=[job_runs], panels=job_panels),
        ],
    )


def panel_spec(report: Any) -> dict[str, Any]:
    """The report's panels as wandb JSON, and each runset's filter: what `--save` would upload,
    without the network (runset serialization needs a logged-in API, panels do not)."""
    from wandb_workspaces.expr import expr_to_filters

    grids = []
    for block in report.blocks:
        if type(block).__name__ != "PanelGrid":
            continue
        grids.append({
            "runsets": [{"name": rs.name, "filters": rs.filters,
                         "parsed": expr_to_filters(rs.filters).model_dump(exclude_none=True)} for rs in block.runsets],
            "panels": [json.loads(p._to_model().model_dump_json(by_alias=True, exclude_none=True)) for p in block.panels],
        })
    return {"title": report.title, "project": report.project, "entity": report.entity, "grids": grids}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ptqbench.dashboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", required=True, help="the sweep's wandb group (a record's wandb.group, or the experiment name)")
    ap.add_argument("--project", default="ptqbench")
    ap.add_argument("--entity", default="", help="wandb entity (user or team); needed with --save")
    ap.add_argument("--out", default=None, help="where the offline panel spec goes (default results/dashboards/<group>.json)")
    ap.add_argument("--save", action="store_true", help="upload the report (online, logged in) and print its URL")
    args = ap.parse_args(argv)
    try:
        report = build_report(args.group, args.project, args.entity)
        if args.save:
            if not args.entity:
                raise ConfigError("--save needs --entity (your wandb user or team)")
            report.save()
            print(report.url)
            return 0
        out = Path(args.out or Path("results") / "dashboards" / f"{args.group}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(panel_spec(report), indent=1))
        print(f"dashboard of group {args.group}: {out} (upload it with --save --entity NAME when online)")
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
