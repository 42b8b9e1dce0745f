"""`python -m ptqbench.report`: build a paper-layout table (CSV, Markdown, LaTeX, plots) from the
run records in a results folder.

    python -m ptqbench.report                                   # every run in results/
    python -m ptqbench.report --experiment erq_table            # the table an experiment config describes
    python -m ptqbench.report --models deit_tiny --methods fp,repq --bits w4a4,w6a6 --out results/tables/x
    python -m ptqbench.report --experiment erq_table --float table* --fit small   # a two-column paper
    python -m ptqbench.report --runs-only                       # just <name>_runs.csv, one row per run

Argparse rather than Hydra: a report reads records, it has no config groups to compose.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf

from ptqbench.errors import PTQBenchError
from ptqbench.paths import EXPERIMENT_CONFIGS
from ptqbench.records import load_records
from ptqbench.report.build import console_lines, report_from_records, write_runs_only
from ptqbench.report.names import METRICS
from ptqbench.report.spec import CHOICES, ReportSpec

EXPERIMENTS = EXPERIMENT_CONFIGS


def experiment_block(name: str) -> dict[str, Any]:
    """The `report:` block of `experiments/experiment/<name>.yaml`."""
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
        raise PTQBenchError(f"no experiment {name!r} in {EXPERIMENTS}; choose one of: {known}")
    block = OmegaConf.load(path).get("report")
    if block is None:
        raise PTQBenchError(f"{path} has no `report:` block")
    return OmegaConf.to_container(block, resolve=False)


def _where(items: Sequence[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key:
            raise PTQBenchError(f"--where {item!r}: write KEY=VALUE[,VALUE...], e.g. data.eval_limit=null")
        out[key] = [yaml.safe_load(v) for v in values.split(",")]
    return out


def _csv(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ptqbench.report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", type=Path, default=Path(os.environ.get("PTQBENCH_RESULTS", "results")),
                   help="folder with runs/*.json (default: $PTQBENCH_RESULTS or results)")
    p.add_argument("--experiment", help="start from the report block of experiments/experiment/NAME.yaml")
    p.add_argument("--out", type=Path, help="output prefix (default: <results-dir>/tables/<name>)")
    p.add_argument("--name", help="table name (output files, LaTeX label)")
    p.add_argument("--task", choices=["classification", "detection"])
    p.add_argument("--metric", help=f"comma list of {', '.join(METRICS)} (default: top1; box_ap,mask_ap for COCO)")
    p.add_argument("--models", help="comma list, in column order (default: every model in the runs)")
    p.add_argument("--methods", help="comma list, in row order; include fp for the FP row")
    p.add_argument("--bits", help="comma list of W/A groups, e.g. w3a4,w4a4")
    p.add_argument("--calib-size", type=int, help="only runs with this many calibration images")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                   help="only runs whose config has one of these values (repeatable), e.g. data.eval_limit=null")
    p.add_argument("--decimals", type=int, help="digits after the point (default: the metric's)")
    p.add_argument("--no-second-best", dest="second_best", action="store_const", const=False,
                   help="do not underline the second-best value")
    p.add_argument("--bold", choices=CHOICES["bold"],
                   help="significant (default): bold only a best that a paired bootstrap over the images separates "
                        "from the rest, mark ties; value: by printed value; none")
    p.add_argument("--alpha", type=float, help="significance level (default 0.05)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples (default 2000)")
    p.add_argument("--caption", help="plain-text caption (escaped in the .tex)")
    p.add_argument("--latex-caption", help=r"raw LaTeX caption for the .tex, e.g. 'Top-1 as in \cite{repq}'")
    p.add_argument("--label", help="LaTeX label (default: tab:<name>)")
    p.add_argument("--float", dest="latex_float", choices=CHOICES["latex_float"],
                   help="table (one column) or table* (spans both columns of a two-column page)")
    p.add_argument("--fit", choices=CHOICES["fit"],
                   help="none; small: \\small and a tighter \\tabcolsep; resize: shrink to the line width")
    p.add_argument("--std", choices=CHOICES["std"], help="inline: mean±std (n); separate: on a line below; none")
    p.add_argument("--notes", choices=CHOICES["notes"],
                   help="short (default): one sentence under the table; full: every note; none")
    p.add_argument("--index-order", choices=CHOICES["index_order"],
                   help="first columns 'W/A | Method' (bits-method) or 'Method | W/A' (method-bits)")
    p.add_argument("--cite", metavar="METHOD=KEY[,...]",
                   help="BibTeX keys after the method names (default keys in ptqbench/report/names.py; KEY empty: none)")
    p.add_argument("--with-published", metavar="METHOD[,...]",
                   help="rows with these methods' published numbers, marked *, e.g. ptq4vit,apq_vit")
    p.add_argument("--reference", type=Path, action="append", default=[],
                   help="more folders of published-number CSVs (repeatable; before $PTQBENCH_REFERENCE and the "
                        "shipped ones)")
    p.add_argument("--no-compare", dest="compare", action="store_const", const=False,
                   help="no side-by-side with the papers")
    p.add_argument("--reference-source", help="prefer published rows whose source starts with this text")
    p.add_argument("--fp-threshold", type=float, help="flag models whose FP differs from the paper's by more (points)")
    p.add_argument("--no-plots", dest="plots", action="store_const", const=False)
    p.add_argument("--runs-only", action="store_true",
                   help="write only <out>_runs.csv (one row per run of the selection) and no table")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    command = "python -m ptqbench.report " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        base = ReportSpec.from_mapping(experiment_block(args.experiment) if args.experiment else {})
        cite = ReportSpec.from_mapping({"cite": args.cite}).cite if args.cite else None
        spec = base.replace(
            name=args.name, task=args.task, metrics=_csv(args.metric), models=_csv(args.models),
            methods=_csv(args.methods), bits=_csv(args.bits), calib_size=args.calib_size, decimals=args.decimals,
            second_best=args.second_best, caption=args.caption, latex_caption=args.latex_caption, label=args.label,
            compare=args.compare, reference_source=args.reference_source, fp_threshold=args.fp_threshold,
            plots=args.plots, where={**base.where, **_where(args.where)} or None, bold=args.bold, alpha=args.alpha,
            bootstrap=args.bootstrap, latex_float=args.latex_float, fit=args.fit, std=args.std, notes=args.notes,
            index_order=args.index_order, cite={**base.cite, **cite} if cite else None,
            with_published=_csv(args.with_published),
            reference_dirs=[*base.reference_dirs, *map(str, args.reference)] or None,
        )
        prefix = args.out or args.results_dir / "tables" / (spec.name or "table")
        records = load_records(args.results_dir)
        if not records:
            raise PTQBenchError(f"no run records in {args.results_dir / 'runs'}; "
                                "run a sweep first or pass --results-dir")
        if args.runs_only:
            print(f"wrote {write_runs_only(records, spec, prefix, command)}")
            return 0
        report = report_from_records(records, spec, prefix, None, command, log_console=False)
    except PTQBenchError as e:
        print(f"ptqbench.report: {e}", file=sys.stderr)
        return 2
    print(report.markdown)
    for line in console_lines(report):
        print(line, file=sys.stderr)
    if spec.compare and report.comparison is None:
        print("(no published numbers for this table)")
    print("wrote " + ", ".join(str(p) for p in report.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
