"""Placement groups left behind by a dead actor (a Train controller stopped mid-restart) are found and removed on a
real Ray instance; the driver's own groups (Tune's trial groups) and a live actor's are left alone."""

from __future__ import annotations

import time

from rayexp.orchestrate.orphans import orphaned_placement_groups, remove_orphaned_placement_groups


def _wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_dead_actors_placement_group_is_released_and_no_other(ray_local):
    ray = ray_local
    from ray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=0)
    class Controller:  # makes its worker group's placement group, as Train's controller does
        def make(self) -> str:
            group = placement_group([{"CPU": 0.5}])
            ray.get(group.ready())
            return group.id.hex()

    drivers_own = placement_group([{"CPU": 0.25}])  # as Tune's trial groups, made by the driver
    ray.get(drivers_own.ready())
    alive, dying = Controller.remote(), Controller.remote()
    alive_group, dead_group = ray.get(alive.make.remote()), ray.get(dying.make.remote())
    free = ray.available_resources().get("CPU", 0)
    try:
        assert orphaned_placement_groups() == []
        ray.kill(dying)
        _wait_for(lambda: dead_group in orphaned_placement_groups())
        assert orphaned_placement_groups() == [dead_group]  # the live actor's and the driver's are not orphans

        assert remove_orphaned_placement_groups() == [dead_group]
        _wait_for(lambda: ray.available_resources().get("CPU", 0) >= free + 0.5)  # its CPU is free again
        assert orphaned_placement_groups() == []
        table = ray.util.placement_group_table()
        assert table[alive_group]["state"] == "CREATED" and table[drivers_own.id.hex()]["state"] == "CREATED"
        assert table[dead_group]["state"] == "REMOVED"
    finally:
        ray.kill(alive)
        remove_placement_group(drivers_own)
        remove_orphaned_placement_groups()
