"""ActionScheduler: step indexing, ACT ensembling weights, pruning, late-fusion refresh."""

import math

import numpy as np
import pytest

from vit_perception.core.scheduler import ActionScheduler

MS = 1_000_000
DT = 100 * MS  # dt = 0.1 s


def steps_chunk(horizon, tag, dims=2):
    """Row i = [10 * i + tag, -(10 * i + tag)]: identifies chunk and step."""
    col = 10.0 * np.arange(horizon) + tag
    return np.stack([col, -col], axis=1)[:, :dims]  # (H, A)


def test_single_chunk_steps_follow_time_with_rounding():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=0.01)
    sched.add_chunk(1000 * MS, steps_chunk(4, tag=1))
    assert sched.action_at(1000 * MS).action.tolist() == [1.0, -1.0]
    assert sched.action_at(1049 * MS).action.tolist() == [1.0, -1.0]  # rounds down
    assert sched.action_at(1050 * MS).action.tolist() == [11.0, -11.0]  # halves round up
    out = sched.action_at(1300 * MS)
    assert out.action.tolist() == [31.0, -31.0]
    assert out.observation_stamp_ns == 1000 * MS and out.num_chunks == 1
    assert sched.action_at(1350 * MS) is None  # index 4 == H: chunk exhausted
    assert len(sched) == 0  # and pruned


def test_chunk_in_the_future_does_not_cover_now():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=0.01)
    sched.add_chunk(1000 * MS, steps_chunk(4, tag=1))
    assert sched.action_at(900 * MS) is None
    assert len(sched) == 1  # still kept: it will cover later


@pytest.mark.parametrize('coeff', [0.0, 0.5, 2.0])
def test_ensembling_weights_oldest_first(coeff):
    sched = ActionScheduler(dt=0.1, horizon=5, ensemble_coeff=coeff)
    for i, value in enumerate([1.0, 2.0, 4.0]):  # chunks at 0, dt, 2 dt with constant rows
        sched.add_chunk(i * DT, np.full((5, 1), value))
    out = sched.action_at(2 * DT)
    w = [1.0, math.exp(-coeff), math.exp(-2 * coeff)]  # i = 0 is the OLDEST chunk
    expected = (w[0] * 1.0 + w[1] * 2.0 + w[2] * 4.0) / sum(w)
    assert out.action[0] == pytest.approx(expected, rel=1e-12)
    assert out.num_chunks == 3
    assert out.observation_stamp_ns == 2 * DT


def test_ensembling_numbers_by_hand():
    sched = ActionScheduler(dt=0.1, horizon=5, ensemble_coeff=0.0)
    for i, value in enumerate([1.0, 2.0, 6.0]):
        sched.add_chunk(i * DT, np.full((5, 1), value))
    assert sched.action_at(2 * DT).action[0] == pytest.approx(3.0)  # uniform mean
    sched = ActionScheduler(dt=0.1, horizon=5, ensemble_coeff=math.log(2))  # weights 1, 1/2
    sched.add_chunk(0, np.full((5, 1), 3.0))
    sched.add_chunk(DT, np.full((5, 1), 6.0))
    assert sched.action_at(DT).action[0] == pytest.approx((3.0 + 3.0) / 1.5)  # = 4


def test_ensembling_uses_each_chunks_own_step():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=0.0)
    sched.add_chunk(0, steps_chunk(4, tag=1))
    sched.add_chunk(DT, steps_chunk(4, tag=2))
    out = sched.action_at(2 * DT)  # chunk 1 at step 2 (21), chunk 2 at step 1 (12)
    assert out.action.tolist() == pytest.approx([16.5, -16.5])


def test_negative_coeff_uses_newest_chunk_only():
    sched = ActionScheduler(dt=0.1, horizon=5, ensemble_coeff=-1.0)
    sched.add_chunk(0, np.full((5, 1), 1.0))
    sched.add_chunk(DT, np.full((5, 1), 7.0))
    out = sched.action_at(2 * DT)
    assert out.action.tolist() == [7.0] and out.num_chunks == 1


def test_chunks_that_no_longer_cover_now_are_dropped():
    sched = ActionScheduler(dt=0.1, horizon=3, ensemble_coeff=0.0)
    sched.add_chunk(0, np.full((3, 1), 1.0))
    sched.add_chunk(2 * DT, np.full((3, 1), 5.0))
    assert len(sched) == 2
    out = sched.action_at(3 * DT)  # first chunk index 3 == H: gone
    assert out.action.tolist() == [5.0] and len(sched) == 1


def test_add_chunk_prunes_chunks_that_cannot_cover_the_newest_stamp():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=0.0)
    sched.add_chunk(0, np.zeros((4, 1)))
    sched.add_chunk(5 * DT, np.ones((4, 1)))
    assert len(sched) == 1 and sched.newest_stamp_ns == 5 * DT


def test_add_chunk_copies_and_sorts():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=-1.0)
    chunk = np.full((4, 1), 3.0, dtype=np.float32)
    sched.add_chunk(DT, chunk)
    chunk[:] = 99.0  # caller reuses its array: the scheduler kept a copy
    sched.add_chunk(0, np.full((4, 1), 1.0))  # out of order: still sorted oldest first
    assert sched.newest_stamp_ns == DT
    assert sched.action_at(DT).action.tolist() == [3.0]


def test_add_chunk_rejects_wrong_shapes():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=0.0)
    with pytest.raises(ValueError, match=r'expected \(4, A\)'):
        sched.add_chunk(0, np.zeros((3, 2)))
    sched.add_chunk(0, np.zeros((4, 2)))
    with pytest.raises(ValueError):
        sched.add_chunk(DT, np.zeros((4, 3)))


def test_refresh_replaces_remaining_steps_time_aligned():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=-1.0)
    sched.add_chunk(1000 * MS, steps_chunk(4, tag=1, dims=1))  # rows 1, 11, 21, 31
    refreshed = 100.0 + steps_chunk(4, tag=0, dims=1)  # rows 100, 110, 120, 130
    assert sched.refresh(1130 * MS, refreshed) is True  # in effect at 1.13 s: step 1
    values = [sched.action_at(1000 * MS + k * DT).action[0] for k in range(4)]
    assert values == [1.0, 100.0, 110.0, 120.0]
    assert sched.newest_stamp_ns == 1000 * MS  # coverage unchanged


def test_refresh_refuses_old_pose_wrong_shape_or_no_chunk():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=0.0)
    assert sched.refresh(0, np.zeros((4, 1))) is False
    sched.add_chunk(1000 * MS, np.ones((4, 1)))
    assert sched.refresh(999 * MS, np.zeros((4, 1))) is False
    assert sched.refresh(1000 * MS, np.zeros((3, 1))) is False
    assert sched.refresh(1400 * MS, np.zeros((4, 1))) is False  # after the chunk's end
    assert sched.action_at(1000 * MS).action.tolist() == [1.0]


def test_refresh_only_touches_newest_chunk():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=0.0)
    sched.add_chunk(0, np.full((4, 1), 2.0))
    sched.add_chunk(DT, np.full((4, 1), 4.0))
    sched.refresh(DT, np.full((4, 1), 8.0))
    assert sched.action_at(DT).action.tolist() == [5.0]  # mean of 2 and 8


def test_clear():
    sched = ActionScheduler(dt=0.1, horizon=4, ensemble_coeff=0.0)
    sched.add_chunk(0, np.ones((4, 1)))
    sched.clear()
    assert len(sched) == 0 and sched.newest_stamp_ns is None and sched.action_at(0) is None
