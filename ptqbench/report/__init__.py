"""Paper-style tables, LaTeX, plots and the paper comparison, built from run records.

records (results/runs/*.json) -> collect (tidy DataFrame) -> tables (pivot, aggregate, mark:
significance decides the bold) -> markdown / latex / plots, with reference (the published numbers
shipped in reference_data/) alongside and provenance (comment lines, the tidy runs CSV); `build`
ties them together for the CLI (`python -m ptqbench.report`) and the sweep-end callback.
"""

from ptqbench.report.build import Report, build_report, report_from_records, write_report
from ptqbench.report.collect import Collection, collect, collect_records
from ptqbench.report.spec import ReportSpec
from ptqbench.report.tables import ReportError, Table, build_table

__all__ = ["Collection", "Report", "ReportError", "ReportSpec", "Table", "build_report", "build_table", "collect",
           "collect_records", "report_from_records", "write_report"]
