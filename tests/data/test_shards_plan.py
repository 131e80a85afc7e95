"""The streamed epoch's order and its cut between processes (hw3.data.shards.plan), as pure functions: every
sample once per epoch on any number of processes, a resumed process continues exactly, and a change of the
number of processes mid-epoch visits every remaining sample exactly once."""

import itertools

import numpy as np
import pytest

from hw3.data.shards.plan import EpochOrder, piece, remainder, sample_seeds, take, train_keys

COUNTS = (7, 13, 1, 20, 9, 5, 11)  # shards of uneven sizes: 66 samples
N = sum(COUNTS)


def flat(order: EpochOrder, ranges) -> list[int]:
    return [i for a, b in ranges for i in order.ids(a, b).tolist()]


@pytest.mark.parametrize("window", [1, 3, 10])
def test_an_epochs_order_visits_every_sample_once_and_changes_with_the_epoch(window):
    orders = [EpochOrder(COUNTS, seed=5, epoch=e, window=window) for e in range(3)]
    visits = [orders[e].ids(0, N).tolist() for e in range(3)]
    assert all(sorted(v) == list(range(N)) for v in visits)
    assert visits[0] != visits[1] != visits[2]
    assert EpochOrder(COUNTS, seed=5, epoch=1, window=window).ids(0, N).tolist() == visits[1]  # a pure function
    in_pieces = [orders[0].ids(a, min(a + 4, N)).tolist() for a in range(0, N, 4)]
    assert list(itertools.chain(*in_pieces)) == visits[0]  # asked for a bit at a time, the same


def test_a_window_mixes_only_its_own_shards():
    order = EpochOrder(COUNTS, seed=0, epoch=0, window=2)
    shard_of = order.shards_of(order.ids(0, N))
    for w, shards in enumerate(order.windows):
        start, end = order.window_starts[w], order.window_starts[w + 1]
        assert set(shard_of[start:end].tolist()) == set(shards.tolist())


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_processes_get_equal_pieces_with_every_sample_and_at_most_world_minus_one_twice(world):
    order = EpochOrder(COUNTS, seed=1, epoch=2, window=2)
    pieces = [flat(order, piece([(0, N)], world, r)) for r in range(world)]
    assert len({len(p) for p in pieces}) == 1  # the same number of batches on every process
    seen = list(itertools.chain(*pieces))
    assert set(seen) == set(range(N)) and len(seen) - N <= world - 1
    assert len(seen) - N == (-N) % world  # the made-up samples: exactly what equal pieces need


@pytest.mark.parametrize("old, new, consumed", [(2, 1, 10), (2, 3, 7), (3, 2, 0), (1, 2, 30), (4, 4, 5)])
def test_after_another_number_of_processes_every_remaining_sample_is_visited_once(old, new, consumed):
    order = EpochOrder(COUNTS, seed=3, epoch=0, window=3)
    before = [flat(order, piece([(0, N)], old, r))[:consumed] for r in range(old)]
    rest = remainder([(0, N)], old, consumed)
    after = [flat(order, piece(rest, new, r)) for r in range(new)]
    visited_before, visited_after = set(itertools.chain(*before)), list(itertools.chain(*after))
    assert visited_before.isdisjoint(visited_after)
    assert visited_before | set(visited_after) == set(range(N))
    assert len(visited_after) - len(set(visited_after)) <= new - 1  # made up to equal pieces, as any epoch
    twice = remainder(rest, new, 2)  # a second change in the same epoch
    assert set(flat(order, twice)) == set(visited_after) - set(itertools.chain(*(p[:2] for p in after)))


def test_a_resumed_process_continues_its_piece_exactly():
    order = EpochOrder(COUNTS, seed=2, epoch=4, window=2)
    ranges = piece([(0, N)], 2, 1)
    whole = list(itertools.chain(*train_keys(order, ranges, 0, 33, 4)))
    resumed = list(itertools.chain(*train_keys(order, ranges, 12, 21, 4)))
    assert resumed == whole[12:]  # ids and their augmentation seeds
    assert [k[-1] for k in whole] == sample_seeds(2, 4, np.array([k[0] for k in whole])).tolist()


def test_take_cuts_a_segment_by_flattened_position():
    assert take([(0, 5), (10, 12), (20, 30)], 3, 9) == [(3, 5), (10, 12), (20, 22)]
    assert take([(0, 5)], 5, 9) == []


def test_a_process_fetches_ahead_only_the_shards_its_own_piece_reads():
    """The shards fetched ahead for window w: those the process's piece reads in w (none where its piece has
    ended), so no process downloads another's shards."""
    order = EpochOrder(COUNTS, seed=3, epoch=1, window=2)
    for rank in range(4):
        ranges = piece([(0, order.total)], 4, rank)
        read = order.shards_of(np.concatenate([order.ids(a, b) for a, b in ranges]))
        for w in range(len(order.windows)):
            mine = {int(s) for s in read if s in set(order.windows[w].tolist())}
            assert set(order.shards_read(w, ranges)) == mine
        assert sum(bool(order.shards_read(w, ranges)) for w in range(len(order.windows))) < len(order.windows)
