"""Rebuild a sweep's report from MLflow alone, complete or partial:

    python sweeps/report.py --experiment which-backbone [--out DIR] [--tracking-uri URI]

Writes summary.csv, summary.md, report.md, report.html (self-contained), cost.csv and PNG figures to
--out (default reports/<experiment>) and logs them to the sweep's summary run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rayexp import tracking
from rayexp.errors import RayexpError
from rayexp.report import build_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="MLflow experiment of the sweep")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--out", default=None, help="report folder (default reports/<experiment>)")
    p.add_argument(
        "--no-mlflow-upload", action="store_true", help="write the files only; do not log them to the summary run"
    )
    args = p.parse_args(argv)
    try:
        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        tracking.existing_experiment(uri, args.experiment)  # nothing is created for a mistyped name
        out = Path(args.out or Path("reports") / args.experiment).resolve()
        paths = build_report(uri, args.experiment, out, log_to_mlflow=not args.no_mlflow_upload)
    except RayexpError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    print(paths["report_md"].read_text())
    print(f"Report: {paths['html']} (and the rest in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
