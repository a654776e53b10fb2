"""Trial results into numbers that may be compared: which runs count, and each cell's summary.

Which runs count: one protocol, and per dataset one version of its data.

Every report, cell summary and recommendation goes through :func:`current_results` before it computes
anything, so a table never mixes runs of different fingerprints (:mod:`rayexp.fingerprint`). The current
fingerprints are those of the newest finished run: the protocol over the whole experiment, the data per
dataset. Runs left out are counted and said, never silently dropped. No Ray and no MLflow here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

from rayexp.fingerprint import short
from rayexp.grid import TrialKey


def current_results(rows: Iterable[dict]) -> tuple[list[dict], list[str]]:
    """``(rows to use, notes on what was left out)`` from trial result rows (``tracking.fetch_trial_results``).

    Unfinished rows carry no number and are always kept (they show as missing or failed). Finished rows
    without fingerprints (made by an older rayexp) are kept only when no finished row has one, with a note
    that nothing shows they share data and protocol.
    """
    rows = list(rows)
    finished = [r for r in rows if r.get("status") == "FINISHED"]
    marked = [r for r in finished if r.get("data_fingerprint") and r.get("protocol_fingerprint")]
    if not marked:
        notes = [f"{len(finished)} finished run(s) record no data or protocol fingerprint (an older rayexp made them): "
                 "nothing shows they were trained on the same data with the same settings"] if finished else []
        return rows, notes

    def newest(candidates: list[dict]) -> dict:
        return max(candidates, key=lambda r: (r.get("start_time") or 0, r.get("run_id") or ""))

    protocol = newest(marked)["protocol_fingerprint"]
    data = {
        dataset: newest([r for r in marked if r["dataset"] == dataset and r["protocol_fingerprint"] == protocol])["data_fingerprint"]
        for dataset in sorted({r["dataset"] for r in marked if r["protocol_fingerprint"] == protocol})
    }
    kept, left = [], {"protocol": 0, "data": 0, "none": 0}
    for row in rows:
        if row.get("status") != "FINISHED":
            kept.append(row)
        elif not row.get("protocol_fingerprint") or not row.get("data_fingerprint"):
            left["none"] += 1
        elif row["protocol_fingerprint"] != protocol:
            left["protocol"] += 1
        elif row["data_fingerprint"] != data.get(row["dataset"]):
            left["data"] += 1
        else:
            kept.append(row)
    notes = []
    if left["protocol"]:
        notes.append(f"{left['protocol']} finished run(s) left out: trained with another protocol than the newest run's "
                     f"({short(protocol)}); compare the protocol_settings tag in MLflow")
    if left["data"]:
        changed = sorted({r["dataset"] for r in finished if r.get("data_fingerprint") and r["dataset"] in data
                          and r["data_fingerprint"] != data[r["dataset"]]})
        notes.append(f"{left['data']} finished run(s) left out: trained on an earlier version of "
                     + ", ".join(f"{d} (current data {short(data[d])})" for d in changed))
    if left["none"]:
        notes.append(f"{left['none']} finished run(s) left out: they record no fingerprint (an older rayexp made them)")
    return kept, notes


@dataclass(frozen=True)
class CellSummary:
    backbone: str
    dataset: str
    domain: str
    fraction: float
    best_of_3: float | None
    mean: float | None
    std: float | None  # sample standard deviation over seeds; None with fewer than two
    n_seeds: int
    weights: str = ""


def summarize(results: Iterable[dict], expected: Sequence[TrialKey] = ()) -> list[CellSummary]:
    """One summary per cell from finished trial results; cells of ``expected`` with none are missing."""
    finished: dict[tuple[str, str, float], list[dict]] = {}
    domains: dict[str, str] = {}
    for row in results:
        cell = (row["backbone"], row["dataset"], float(row["fraction"]))
        domains[row["dataset"]] = row.get("domain") or ""
        if row.get("status") == "FINISHED" and row.get("best_test_acc") is not None:
            finished.setdefault(cell, []).append(row)
        else:
            finished.setdefault(cell, [])
    for key in expected:
        finished.setdefault(key.cell, [])
    summaries = []
    for (backbone, dataset, fraction), rows in sorted(finished.items(), key=lambda kv: (kv[0][1], -kv[0][2], kv[0][0])):
        accs = [r["best_test_acc"] for r in rows]
        weights = sorted({r.get("weights") or "" for r in rows} - {""})
        summaries.append(
            CellSummary(
                backbone=backbone,
                dataset=dataset,
                domain=domains.get(dataset, ""),
                fraction=fraction,
                best_of_3=max(accs) if accs else None,
                mean=statistics.fmean(accs) if accs else None,
                std=statistics.stdev(accs) if len(accs) >= 2 else None,
                n_seeds=len(accs),
                weights=",".join(weights),
            )
        )
    return summaries
