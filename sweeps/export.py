"""Register a finished trial as a servable MLflow model (the network, its classes, input size and normalization):

    python sweeps/export.py --experiment my-data-xrays --key convnext_tiny/xrays/1.0/2 [--register NAME]
    python sweeps/export.py --experiment my-data-xrays --best xrays          # the recommendation's winner

The trial's best weights must have been kept (--keep-best-weights, or --log-models, in its sweep; my_data.py keeps
them until it has registered its winner). Prints how to load, serve and call the registered version.
"""

from __future__ import annotations

import argparse
import sys

from rayexp import publish, tracking
from rayexp.errors import RayexpError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="MLflow experiment of the sweep")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="the trial key, backbone/dataset/fraction/seed")
    which.add_argument("--best", metavar="DATASET", help="the recommended backbone's best seed on DATASET")
    p.add_argument(
        "--register", metavar="NAME", default=None, help="registered model name (default <dataset>-<backbone>)"
    )
    p.add_argument(
        "--new-label-set",
        action="store_true",
        help="register a new version of NAME even though its latest version classifies other classes",
    )
    args = p.parse_args(argv)
    try:
        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        tracking.existing_experiment(uri, args.experiment)  # nothing is created for a mistyped name
        key = args.key
        if args.best:
            domains = {r.get("domain") for r in tracking.fetch_trial_results(uri, args.experiment, dataset=args.best)}
            key = publish.winner_key(uri, args.experiment, args.best, next(iter(domains - {None}), ""), [])
            if key is None:
                raise RayexpError(f"no backbone learned on {args.best} in {args.experiment} (none is above chance)")
        model = publish.register_trial(uri, args.experiment, key, args.register, args.new_label_set)
    except RayexpError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(publish.usage_lines(model, uri)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
