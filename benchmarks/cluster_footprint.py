"""What each running trial costs the node that drives it, on a multi-node Ray cluster started on this machine.

A head shaped like ``cluster.yaml``'s (no CPUs for tasks, the ``rayexp_trial_driver`` resource) and N worker nodes
with one logical GPU each run N concurrent tiny trials of a real sweep (``sweeps/demo.py --address``). Once all N
training workers are alive, every Ray actor's process is measured from ``/proc``: unique (USS) and proportional
(PSS) set size and CPU seconds so far, grouped by the actor's class and node; Ray Data's tasks are counted per
node. The head's cost per concurrent trial is fitted over N (least squares), beside the head's own services (GCS,
dashboard, the sweep's driver).

Prints a table per N, the fit, ``head_mb_per_trial <value>`` and, last, ``ratio head_16_trials_over_head_ram
<value>``: the memory 16 concurrent trials need on the head (with the services) over ``--head-ram-gb`` (the head
machine of cluster.yaml). Linux only (it reads /proc).

    python benchmarks/cluster_footprint.py --trials 1 2 4 6
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from rayexp.data.catalog import get_dataset_info
from rayexp.data.sources import digits
from rayexp.data.writer import write_dataset
from rayexp.orchestrate import DRIVER_RESOURCE

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVICES = ("gcs_server", "dashboard/dashboard.py")


def memory_mb(pid: int) -> tuple[float, float]:
    """(USS, PSS) of a process in MB, from /proc/<pid>/smaps_rollup."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return uss / 1024, fields.get("Pss", 0) / 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def service_pids() -> dict[str, int]:
    """The cluster-wide services' processes (one of each here: the cluster is the only Ray on this machine)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        for name in SERVICES:
            if name in cmdline and name not in found:
                found[name] = int(entry)
    return found


def measure(n: int, data_dir: Path, work: Path, backbone: str, timeout: float) -> dict:
    head_resources = {DRIVER_RESOURCE: 64}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "resources": head_resources})
    for _ in range(n):
        cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    head = ray.get_runtime_context().get_node_id()  # this process attaches to the head
    seeds = [str(s) for s in range(n)]
    argv = [sys.executable, "sweeps/demo.py", "--address", cluster.address, "--experiment", f"footprint{n}"]
    argv += ["--backbones", backbone, "--seeds", *seeds, "--fractions", "0.1", "--max-epochs", "200"]
    argv += ["--patience", "200", "--no-dualopt", "--worker-cpus", "1", "--data-cpus", "1", "--device", "gpu"]
    argv += ["--data-dir", str(data_dir), "--storage", str(work / f"storage{n}")]
    argv += ["--tracking-uri", f"sqlite:///{work / f'mlflow{n}.db'}", "--out", str(work / f"report{n}")]
    driver = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    started = time.monotonic()
    try:
        while True:  # every trial with its training worker and its data pipeline's manager up
            alive = [
                a.class_name
                for a in list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], limit=10000)
            ]
            up = min(alive.count("RayTrainWorker"), alive.count("DatasetManager"))
            if up >= n:
                break
            if driver.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"{up} of {n} trials came up (driver rc {driver.poll()})")
            time.sleep(1)
        time.sleep(10)  # every trial past its first batches
        rows = []
        for actor in list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], detail=True, limit=10000):
            try:
                uss, pss = memory_mb(actor.pid)
                cpu = cpu_seconds(actor.pid)
            except OSError:
                continue
            rows.append(
                {
                    "class": actor.class_name,
                    "node": "head" if actor.node_id == head else "gpu",
                    "uss": uss,
                    "pss": pss,
                    "cpu": cpu,
                }
            )
        services = {}
        for name, pid in {**service_pids(), "sweep driver": driver.pid}.items():
            services[name] = memory_mb(pid) + (cpu_seconds(pid),)
        tasks = defaultdict(int)
        for task in list_tasks(address=cluster.address, detail=True, limit=10000):
            if task.type == "NORMAL_TASK" and any(k in task.name for k in ("ReadParquet", "MapBatches", "Map(")):
                tasks["head" if task.node_id == head else "gpu"] += 1
        return {"n": n, "rows": rows, "services": services, "tasks": dict(tasks), "seconds": time.monotonic() - started}
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        ray.shutdown()
        cluster.shutdown()


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y over x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / max(1e-9, sum((x - mx) ** 2 for x in xs))
    return slope, my - slope * mx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4, 6])
    p.add_argument("--backbone", default="torchvision:mobilenet_v3_small")
    p.add_argument("--head-ram-gb", type=float, default=64.0, help="the head machine's memory (cluster.yaml)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for N training workers to come up")
    args = p.parse_args()
    os.environ.setdefault("RAYEXP_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="rayexp-footprint-"))
    data_dir = work / "data"
    write_dataset(data_dir, get_dataset_info("digits"), digits.load_source("digits"))
    results = []
    for n in args.trials:
        print(f"[footprint] {n} concurrent trial(s)...", flush=True)
        result = measure(n, data_dir, work, args.backbone, args.timeout)
        results.append(result)
        by_class: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for row in result["rows"]:
            by_class[(row["node"], row["class"])].append(row)
        print(f"\n{n} trial(s), up in {result['seconds']:.0f} s; Ray Data tasks by node: {result['tasks']}")
        print(f"{'node':5} {'actor class':32} {'count':>5} {'USS MB':>8} {'PSS MB':>8} {'CPU s':>7}  (per process)")
        for (node, cls), rows in sorted(by_class.items()):
            k = len(rows)
            print(
                f"{node:5} {cls:32} {k:>5} {sum(r['uss'] for r in rows) / k:>8.0f} "
                f"{sum(r['pss'] for r in rows) / k:>8.0f} {sum(r['cpu'] for r in rows) / k:>7.1f}"
            )
        for name, (uss, pss, cpu) in result["services"].items():
            print(f"head  {name:32} {1:>5} {uss:>8.0f} {pss:>8.0f} {cpu:>7.1f}")
    head_uss = [(r["n"], sum(x["uss"] for x in r["rows"] if x["node"] == "head")) for r in results]
    head_pss = [(r["n"], sum(x["pss"] for x in r["rows"] if x["node"] == "head")) for r in results]
    slope_uss, base_uss = fit(head_uss)
    slope_pss, base_pss = fit(head_pss)
    services = max(sum(v[1] for v in r["services"].values()) for r in results)
    need = services + base_pss + 16 * slope_pss
    print(
        f"\nhead, Ray actors: {slope_uss:.0f} MB USS / {slope_pss:.0f} MB PSS per concurrent trial "
        f"(+ {base_uss:.0f} / {base_pss:.0f} MB fixed); head services (GCS, dashboard, sweep driver) "
        f"{services:.0f} MB PSS"
    )
    print(f"16 concurrent trials: {need / 1024:.1f} GB on the head")
    print(f"head_mb_per_trial {slope_pss:.0f}")
    print(f"ratio head_16_trials_over_head_ram {need / 1024 / args.head_ram_gb:.3f}")


if __name__ == "__main__":
    main()
