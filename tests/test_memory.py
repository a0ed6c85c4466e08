"""Memory housekeeping: free memory is given back once after each burst, never under load."""

from __future__ import annotations

from recognizer.memory import IdleTrim, limit_malloc_arenas


class World:
    def __init__(self) -> None:
        self.calls = 0
        self.busy = False
        self.trims = 0

    def trim(self) -> bool:
        self.trims += 1
        return True


def trimmer(world: World) -> IdleTrim:
    return IdleTrim(lambda: not world.busy, lambda: world.calls, trim=world.trim)


def test_trims_once_after_a_burst_and_never_under_load() -> None:
    world = World()
    t = trimmer(world)
    assert not t.tick() and world.trims == 0, "no calls yet: nothing to give back"
    world.calls, world.busy = 40, True
    assert not t.tick() and world.trims == 0, "busy: memory is about to be reused"
    world.busy = False
    assert t.tick() and world.trims == 1
    assert not t.tick() and world.trims == 1, "one trim per burst"
    world.calls += 1
    assert t.tick() and world.trims == 2


def test_arena_limit_zero_leaves_malloc_alone() -> None:
    assert limit_malloc_arenas(0) is False
