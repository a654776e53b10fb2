"""Placement groups that outlive the actor that made them, found and removed while the sweep runs.

A trial's Train controller creates the worker group's placement group. When a scheduler stops the trial while the
controller is restarting its worker group (ASHA, a budget), the controller can create the new group and die before
Train's own cleaner knows of it (ray-project/ray#62753). The group then keeps its CPUs (or GPU) for as long as the
sweep's driver lives: on a small machine the next trial's Ray Data tasks wait for a CPU that never frees and the
sweep hangs without an error. Tune's own trial groups are made by the driver, not by an actor, so they are never
touched, nor are other jobs' groups on a shared cluster.

Ray has no public API for a group's creator (``ray.util.placement_group_table`` drops it), so this reads the GCS
table through ``ray._private.state``; ``pyproject.toml`` pins Ray's minor version and ``tests/test_orphans.py``
checks the hook on a real instance.
"""

from __future__ import annotations

import time

import ray
import ray.tune
from ray._private.state import state
from ray.core.generated import gcs_pb2
from ray.util.placement_group import PlacementGroup, remove_placement_group

_REMOVED = gcs_pb2.PlacementGroupTableData.REMOVED


def _actor_dead(actor_id: bytes) -> bool:
    """Whether the actor table says the actor is dead (or no longer knows it: a group's creator was registered)."""
    info = state.actor_table(ray.ActorID(actor_id).hex())
    return not info or info.get("State") == "DEAD"


def orphaned_placement_groups(job: str | None = None) -> list[str]:
    """Hex ids of the live placement groups of ``job`` (default: this one) whose creating actor is dead.

    The group's own ``creator_actor_dead`` flag is not enough: the GCS sets it on the groups that exist when the
    actor dies, and the orphan of ray-project/ray#62753 is registered just after (seen in CI: flag False, creator
    DEAD). So the creator is looked up in the actor table too."""
    job = job or ray.get_runtime_context().get_job_id()
    orphans = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = gcs_pb2.PlacementGroupTableData.FromString(raw)
        made_by_actor = ray.ActorID(group.creator_actor_id) != ray.ActorID.nil()
        if (
            made_by_actor
            and not group.is_detached
            and group.state != _REMOVED
            and group.creator_job_id.hex() == job
            and (group.creator_actor_dead or _actor_dead(group.creator_actor_id))
        ):
            orphans.append(group.placement_group_id.hex())
    return orphans


def remove_orphaned_placement_groups() -> list[str]:
    """Remove this job's orphaned placement groups; returns their ids (a note is printed for each)."""
    removed = orphaned_placement_groups()
    for hex_id in removed:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(hex_id)))
        print(f"[rayexp] released placement group {hex_id[:12]}, left behind by a stopped trial", flush=True)
    return removed


def reap() -> None:
    """:func:`remove_orphaned_placement_groups`, at best effort: a sweep never stops for its bookkeeping."""
    try:
        remove_orphaned_placement_groups()
    except Exception as exc:
        print(f"[rayexp] could not check for orphaned placement groups: {exc}", flush=True)


class OrphanReaper(ray.tune.Callback):
    """Removes orphaned placement groups when a trial ends and every few seconds while trials run (the orphan
    appears just after its trial was stopped)."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self.last = every_s, 0.0

    def _reap(self) -> None:
        self.last = time.monotonic()
        reap()

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self._reap()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._reap()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._reap()
