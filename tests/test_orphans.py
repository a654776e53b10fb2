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
    ray.get(drivers_own.ready(), timeout=60)
    alive, dying = Controller.remote(), Controller.remote()
    alive_group, dead_group = ray.get([alive.make.remote(), dying.make.remote()], timeout=60)
    free = ray.available_resources().get("CPU", 0)
    ours = {drivers_own.id.hex(), alive_group, dead_group}
    try:
        assert not ours & set(orphaned_placement_groups())
        ray.kill(dying)
        _wait_for(lambda: dead_group in orphaned_placement_groups())
        assert ours & set(orphaned_placement_groups()) == {dead_group}  # the live actor's and the driver's: not

        assert dead_group in remove_orphaned_placement_groups()
        _wait_for(lambda: ray.available_resources().get("CPU", 0) >= free + 0.5)  # its CPU is free again
        assert not ours & set(orphaned_placement_groups())
        table = ray.util.placement_group_table()
        assert table[alive_group]["state"] == "CREATED" and table[drivers_own.id.hex()]["state"] == "CREATED"
        assert table[dead_group]["state"] == "REMOVED"
    finally:
        ray.kill(alive)
        remove_placement_group(drivers_own)
        remove_orphaned_placement_groups()
