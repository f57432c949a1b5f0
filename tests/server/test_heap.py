"""segsrv.server.heap: a served version's objects are frozen out of the garbage collector's full
collections (which walked them all, every ~1,000 requests), garbage made before is collected first, and
each freeze undoes the last."""

from __future__ import annotations

import gc
import weakref

import pytest

from segsrv.server import heap


class Node:
    pass


def tracked(obj) -> bool:
    """Whether the collector's generations (not the frozen one) hold `obj`."""
    return any(o is obj for o in gc.get_objects())


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


def test_freeze_collects_garbage_then_freezes_what_is_alive(unfrozen):
    garbage = Node()
    garbage.self = garbage  # a cycle: only a collection frees it
    dead = weakref.ref(garbage)
    del garbage
    alive = Node()
    alive.self = alive
    frozen = heap.freeze()
    assert dead() is None
    assert frozen > 0 and gc.get_freeze_count() > 0  # not equal: a frozen object that dies leaves the count
    assert not tracked(alive)
    later = Node()
    assert tracked(later)  # objects made after a freeze are collected as before


def test_each_freeze_undoes_the_last_so_cycles_frozen_before_are_freed(unfrozen):
    cycle = Node()
    cycle.self = cycle
    ref = weakref.ref(cycle)
    heap.freeze()
    del cycle
    gc.collect()
    assert ref() is not None  # frozen: a full collection skips it
    heap.freeze()
    assert ref() is None


def test_a_server_freezes_the_version_it_serves(petnord_root, start_server, unfrozen):
    gc.unfreeze()
    r = start_server(petnord_root)
    snapshot = r.server.segsrv_registry.resolve()
    assert gc.get_freeze_count() > 0
    universe = next(iter(snapshot.universes.values()))
    assert not tracked(snapshot) and not tracked(universe.fields)


def test_a_server_without_warm_up_freezes_too(petnord_root, start_server, unfrozen):
    gc.unfreeze()
    r = start_server(petnord_root, warm=False)
    assert not tracked(r.server.segsrv_registry.resolve())
