"""ObservationBuilder: validation, interpolation (slerp), skew/age, grouping, latest-only."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_perception.config import SyncConfig
from vit_perception.core.observation import ObservationBuilder, slerp
from vit_perception.core.types import ImageFrame, JointSample, PoseSample

MS = 1_000_000
S = 1_000_000_000
T0 = 100 * S
IDENTITY = (0.0, 0.0, 0.0, 1.0)


def quat_z(degrees):
    half = math.radians(degrees) / 2
    return (0.0, 0.0, math.sin(half), math.cos(half))


def pose(t_ns, position=(0.0, 0.0, 0.0), quat=IDENTITY, frame_id='base'):
    return PoseSample(t_ns, frame_id, np.array(position, dtype=float), np.array(quat, dtype=float))


def image(t_ns, camera=0):
    return ImageFrame(stamp_ns=t_ns, frame_id=f'cam{camera}', data=b'', camera=camera)


def builder(num_cameras=1, **sync):
    return ObservationBuilder(SyncConfig(**sync), num_cameras=num_cameras)


# ------------------------------------------------------------------------- slerp


def test_slerp_matches_hand_computed_rotation():
    q = slerp(IDENTITY, quat_z(90), 0.5)
    assert q == pytest.approx([0.0, 0.0, math.sin(math.radians(22.5)),
                               math.cos(math.radians(22.5))], abs=1e-12)
    assert slerp(IDENTITY, quat_z(90), 0.25) == pytest.approx(quat_z(22.5), abs=1e-12)
    assert slerp(IDENTITY, quat_z(90), 0.0) == pytest.approx(IDENTITY, abs=1e-12)
    assert slerp(IDENTITY, quat_z(90), 1.0) == pytest.approx(quat_z(90), abs=1e-12)


def test_slerp_takes_short_arc_across_sign_flip():
    minus_q1 = -np.array(quat_z(90))  # same rotation as quat_z(90)
    assert slerp(IDENTITY, minus_q1, 0.5) == pytest.approx(quat_z(45), abs=1e-12)
    # 350 deg about z is -10 deg: halfway from identity is -5 deg, not 175 deg
    assert abs(slerp(IDENTITY, quat_z(350), 0.5) @ quat_z(-5)) == pytest.approx(1.0)


def test_slerp_nearly_equal_quaternions_is_unit():
    q = slerp(IDENTITY, quat_z(0.001), 0.3)
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-15)
    assert q == pytest.approx(quat_z(0.0003), abs=1e-9)


# ------------------------------------------------------------------------- interpolation


def test_pose_interpolated_to_image_stamp():
    b = builder()
    assert b.add_pose(pose(T0, (0, 0, 0), IDENTITY), T0)
    assert b.add_pose(pose(T0 + 100 * MS, (1, 2, 3), quat_z(90)), T0 + 100 * MS)
    assert b.add_image(image(T0 + 25 * MS), T0 + 110 * MS)
    obs = b.take(T0 + 110 * MS)
    assert obs.stamp_ns == T0 + 25 * MS and obs.pose.stamp_ns == T0 + 25 * MS
    assert obs.pose.position == pytest.approx([0.25, 0.5, 0.75])
    assert obs.pose.orientation == pytest.approx(quat_z(22.5), abs=1e-12)
    assert obs.pose.frame_id == 'base'
    assert obs.pose_skew_ns == 25 * MS
    assert obs.frames[0].stamp_ns == T0 + 25 * MS
    assert b.take(T0 + 110 * MS) is None  # consumed


def test_exact_pose_stamp_has_zero_skew():
    b = builder()
    b.add_pose(pose(T0, (1, 1, 1)), T0)
    b.add_pose(pose(T0 + 10 * MS, (2, 2, 2)), T0 + 10 * MS)
    b.add_image(image(T0 + 10 * MS), T0 + 20 * MS)
    obs = b.take(T0 + 20 * MS)
    assert obs.pose_skew_ns == 0 and obs.pose.position.tolist() == [2, 2, 2]


def test_image_newer_than_every_pose_waits_then_holds_newest():
    b = builder(max_pose_skew=0.05)
    b.add_pose(pose(T0, (1, 2, 3)), T0)
    b.add_image(image(T0 + 30 * MS), T0 + 31 * MS)
    assert b.take(T0 + 60 * MS) is None  # pending: a bracketing pose may still come
    assert b.drops.counts() == {}
    obs = b.take(T0 + 81 * MS)  # clock passed stamp + max_pose_skew: hold newest pose
    assert obs.pose.position.tolist() == [1, 2, 3] and obs.pose_skew_ns == 30 * MS


def test_pending_image_completed_by_next_pose():
    b = builder(max_pose_skew=0.05)
    b.add_pose(pose(T0, (0, 0, 0)), T0)
    b.add_image(image(T0 + 30 * MS), T0 + 31 * MS)
    assert not b.has_ready()
    b.add_pose(pose(T0 + 40 * MS, (4, 0, 0)), T0 + 41 * MS)
    assert b.has_ready()
    obs = b.take(T0 + 41 * MS)
    assert obs.pose.position == pytest.approx([3.0, 0.0, 0.0])
    assert obs.pose_skew_ns == 10 * MS


def test_held_pose_beyond_skew_is_dropped():
    b = builder(max_pose_skew=0.05)
    b.add_pose(pose(T0), T0)
    b.add_image(image(T0 + 70 * MS), T0 + 70 * MS)
    assert b.take(T0 + 121 * MS) is None
    assert b.drops.counts() == {'pose_skew': 1}


def test_wide_bracket_is_dropped_as_skew():
    b = builder(max_pose_skew=0.05)
    b.add_pose(pose(T0), T0)
    b.add_pose(pose(T0 + 200 * MS), T0 + 200 * MS)
    b.add_image(image(T0 + 100 * MS), T0 + 200 * MS)  # 100 ms from either sample
    assert b.take(T0 + 200 * MS) is None
    assert b.drops.counts() == {'pose_skew': 1}


def test_image_older_than_every_pose_holds_oldest_within_skew():
    b = builder(max_pose_skew=0.05)
    b.add_pose(pose(T0, (7, 0, 0)), T0)
    b.add_image(image(T0 - 20 * MS), T0)
    obs = b.take(T0)
    assert obs.pose.position.tolist() == [7, 0, 0] and obs.pose_skew_ns == 20 * MS
    b.add_image(image(T0 - 10 * MS), T0)
    b.add_pose(pose(T0 + 200 * MS), T0 + 200 * MS)
    assert b.take(T0 + 200 * MS) is not None
    # too old for the oldest sample
    b2 = builder(max_pose_skew=0.05)
    b2.add_pose(pose(T0), T0)
    b2.add_image(image(T0 - 60 * MS), T0)
    assert b2.take(T0) is None and b2.drops.counts() == {'pose_skew': 1}


def test_no_pose_at_all_is_dropped_after_skew():
    b = builder(max_pose_skew=0.05)
    b.add_image(image(T0), T0)
    assert b.take(T0 + 40 * MS) is None and b.drops.counts() == {}
    assert b.take(T0 + 60 * MS) is None
    assert b.drops.counts() == {'no_pose': 1}


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize('bad, reason', [
    (pose(T0, (np.nan, 0, 0)), 'pose_nonfinite'),
    (pose(T0, (0, 0, 0), (0, 0, np.inf, 1)), 'pose_nonfinite'),
    (pose(T0, quat=(0, 0, 0, 0)), 'pose_zero_quaternion'),
    (pose(T0, quat=(0, 0, 0, 1.1)), 'pose_bad_quaternion'),
    (pose(T0, quat=(0, 0, 0, 0.9)), 'pose_bad_quaternion'),
    (pose(T0, frame_id='world'), 'pose_wrong_frame'),
    (pose(0), 'pose_zero_stamp'),
    (pose(T0 + 150 * MS), 'pose_future'),
    (PoseSample(T0, 'base', np.zeros(2), np.array(IDENTITY)), 'pose_malformed'),
    (PoseSample(T0, 'base', np.zeros(3), np.array(['a', 'b', 'c', 'd'])), 'pose_malformed'),
    (PoseSample(float(T0), 'base', np.zeros(3), np.array(IDENTITY)), 'pose_malformed'),
    (None, 'pose_malformed'),
])
def test_bad_poses_are_dropped_by_reason(bad, reason):
    b = builder(pose_frame_id='base', max_future=0.1, quaternion_tolerance=0.05)
    assert b.add_pose(bad, T0) is False
    assert b.drops.counts() == {reason: 1}
    assert b.newest_pose() is None


def test_slightly_off_quaternion_is_renormalized():
    b = builder(quaternion_tolerance=0.05)
    assert b.add_pose(pose(T0, quat=(0, 0, 0, 1.04)), T0)
    assert b.newest_pose().orientation.tolist() == [0, 0, 0, 1.0]
    q = np.array(quat_z(30)) * 0.97
    assert b.add_pose(pose(T0 + MS, quat=q), T0 + MS)
    assert b.newest_pose().orientation == pytest.approx(quat_z(30), abs=1e-15)


def test_pose_duplicates_and_backwards_stamps_are_dropped():
    b = builder()
    assert b.add_pose(pose(T0 + 10 * MS), T0 + 10 * MS)
    assert not b.add_pose(pose(T0 + 10 * MS), T0 + 11 * MS)
    assert not b.add_pose(pose(T0 + 5 * MS), T0 + 12 * MS)
    assert b.drops.counts() == {'pose_duplicate': 1, 'pose_out_of_order': 1}
    assert b.newest_pose().stamp_ns == T0 + 10 * MS


def test_pose_history_bounded_by_seconds():
    b = builder(pose_history=2.0)
    for i in range(100):  # 10 Hz for 10 s
        b.add_pose(pose(T0 + i * 100 * MS), T0 + i * 100 * MS)
    assert b.num_poses == 21  # newest - 2 s .. newest, inclusive


@pytest.mark.parametrize('frame, now, reason', [
    (image(T0 - 600 * MS), T0, 'stale'),
    (image(T0 + 200 * MS), T0, 'image_future'),
    (image(0), T0, 'image_zero_stamp'),
    (image(T0, camera=1), T0, 'image_bad_camera'),
    (image(T0, camera=-1), T0, 'image_bad_camera'),
])
def test_bad_images_are_dropped_by_reason(frame, now, reason):
    b = builder(max_observation_age=0.5, max_future=0.1)
    assert b.add_image(frame, now) is False
    assert b.drops.counts() == {reason: 1}


def test_image_duplicate_and_out_of_order():
    b = builder()
    b.add_pose(pose(T0 + 50 * MS), T0 + 50 * MS)
    assert b.add_image(image(T0 + 40 * MS), T0 + 50 * MS)
    assert not b.add_image(image(T0 + 40 * MS), T0 + 50 * MS)
    assert not b.add_image(image(T0 + 30 * MS), T0 + 50 * MS)
    assert b.drops.counts() == {'image_duplicate': 1, 'image_out_of_order': 1}
    assert b.last_image_stamp_ns(0) == T0 + 40 * MS


def test_stale_at_take_time_is_dropped():
    b = builder(max_observation_age=0.5)
    b.add_pose(pose(T0), T0)
    b.add_image(image(T0), T0)
    assert b.has_ready()
    assert b.take(T0 + 600 * MS) is None
    assert b.drops.counts() == {'stale': 1}


# ------------------------------------------------------------------------- latest-only


def test_newer_observation_supersedes_unconsumed_one():
    b = builder()
    b.add_pose(pose(T0 + 500 * MS), T0 + 500 * MS)
    for k in range(5):
        b.add_image(image(T0 + 470 * MS + k * MS), T0 + 500 * MS)
    assert b.drops.counts() == {'superseded': 4}
    assert b.take(T0 + 500 * MS).stamp_ns == T0 + 474 * MS
    assert b.take(T0 + 500 * MS) is None


def test_newer_image_supersedes_pending_one():
    b = builder(max_pose_skew=0.05)
    b.add_pose(pose(T0), T0)
    b.add_image(image(T0 + 10 * MS), T0 + 10 * MS)  # pending
    b.add_image(image(T0 + 20 * MS), T0 + 20 * MS)  # pending, replaces the first
    b.add_pose(pose(T0 + 30 * MS, (3, 0, 0)), T0 + 30 * MS)
    assert b.drops.counts() == {'superseded_pending': 1}
    obs = b.take(T0 + 30 * MS)
    assert obs.stamp_ns == T0 + 20 * MS and obs.pose.position == pytest.approx([2, 0, 0])


# ------------------------------------------------------------------------- multi-camera


def test_two_cameras_grouped_within_tolerance_camera0_is_reference():
    b = builder(num_cameras=2, camera_tolerance=0.02)
    b.add_pose(pose(T0, (0, 0, 0)), T0)
    b.add_pose(pose(T0 + 100 * MS, (10, 0, 0)), T0 + 100 * MS)
    b.add_image(image(T0 + 60 * MS, camera=1), T0 + 100 * MS)  # cam1 arrives first
    assert not b.has_ready()
    b.add_image(image(T0 + 50 * MS, camera=0), T0 + 100 * MS)
    obs = b.take(T0 + 100 * MS)
    assert [f.camera for f in obs.frames] == [0, 1]
    assert obs.stamp_ns == T0 + 50 * MS and obs.camera_spread_ns == 10 * MS
    assert obs.pose.position == pytest.approx([5.0, 0.0, 0.0])


def test_unpaired_camera_frames_are_dropped():
    b = builder(num_cameras=2, camera_tolerance=0.02)
    b.add_pose(pose(T0 + 100 * MS), T0 + 100 * MS)
    b.add_image(image(T0 + 10 * MS, camera=0), T0 + 100 * MS)
    b.add_image(image(T0 + 50 * MS, camera=1), T0 + 100 * MS)  # cam0 frame can never pair
    assert b.drops.counts() == {'camera_unpaired': 1} and not b.has_ready()
    b.add_image(image(T0 + 60 * MS, camera=0), T0 + 100 * MS)
    obs = b.take(T0 + 100 * MS)
    assert obs.stamp_ns == T0 + 60 * MS and obs.camera_spread_ns == 10 * MS
    b.add_image(image(T0 + 70 * MS, camera=0), T0 + 100 * MS)
    b.add_image(image(T0 + 80 * MS, camera=0), T0 + 100 * MS)  # replaces unpaired cam0 frame
    assert b.drops.counts() == {'camera_unpaired': 2}


# ------------------------------------------------------------------------- clock, proprio


def test_clock_jump_backwards_resets_history():
    b = builder()
    b.add_pose(pose(T0), T0)
    b.add_image(image(T0 + 100 * MS), T0 + 100 * MS)
    assert b.check_clock(T0 + 100 * MS) is False
    assert b.check_clock(T0 + 50 * MS) is False  # small step back: within the margin
    assert b.newest_pose() is not None
    assert b.check_clock(T0 - 10 * S) is True
    assert b.newest_pose() is None and b.last_image_stamp_ns(0) is None
    assert not b.has_ready() and b.take(T0 - 10 * S) is None
    assert b.check_clock(T0 - 10 * S + MS) is False


def arm_pose(t_ns, arm, position=(0.0, 0.0, 0.0), quat=IDENTITY):
    return PoseSample(t_ns, 'base', np.array(position, dtype=float), np.array(quat, dtype=float),
                      arm)


def joints(t_ns, *values):
    return JointSample(t_ns, np.array(values, dtype=float))


def test_two_arms_and_joint_states_interpolated_to_the_image_stamp():
    b = ObservationBuilder(SyncConfig(), num_arms=2, num_joints=2)
    b.add_pose(arm_pose(T0, 0, (0.0, 0.0, 0.0)), T0)
    b.add_pose(arm_pose(T0, 1, (1.0, 0.0, 0.0), quat_z(0)), T0)
    b.add_joints(joints(T0, 0.0, 1.0), T0)
    b.add_image(image(T0 + 10 * MS), T0 + 10 * MS)  # newer than every sample: waits
    b.add_pose(arm_pose(T0 + 20 * MS, 0, (0.2, 0.0, 0.0)), T0 + 20 * MS)
    b.add_pose(arm_pose(T0 + 40 * MS, 1, (2.0, 0.0, 0.0), quat_z(90)), T0 + 40 * MS)
    assert not b.has_ready()  # the joint states have nothing after the image yet
    b.add_joints(joints(T0 + 30 * MS, 0.3, -2.0), T0 + 30 * MS)
    obs = b.take(T0 + 30 * MS)
    assert obs.stamp_ns == T0 + 10 * MS and [p.arm for p in obs.poses] == [0, 1]
    assert obs.poses[0].position == pytest.approx([0.1, 0.0, 0.0])  # halfway
    assert obs.poses[1].position == pytest.approx([1.25, 0.0, 0.0])  # a quarter of the way
    assert obs.poses[1].orientation == pytest.approx(quat_z(22.5), abs=1e-12)
    assert obs.proprio == pytest.approx([0.1, 0.0])  # a third of the way
    assert obs.pose_skew_ns == 10 * MS and obs.pose is obs.poses[0]
    assert b.drops.counts() == {}


def test_an_observation_lacking_an_arm_or_the_joint_states_is_dropped():
    b = ObservationBuilder(SyncConfig(max_pose_skew=0.05), num_arms=2, num_joints=1)
    b.add_pose(arm_pose(T0, 0), T0)
    b.add_joints(joints(T0, 0.5), T0)
    b.add_image(image(T0), T0)
    assert b.take(T0 + 60 * MS) is None  # arm 1 never came
    assert b.drops.counts() == {'no_pose': 1}
    b.add_pose(arm_pose(T0 + 100 * MS, 1), T0 + 100 * MS)
    b.add_pose(arm_pose(T0 + 100 * MS, 0), T0 + 100 * MS)
    b.add_image(image(T0 + 100 * MS), T0 + 100 * MS)
    assert b.take(T0 + 160 * MS) is None  # the joint states are 100 ms old > 50 ms
    assert b.drops.counts() == {'no_pose': 1, 'joint_state_skew': 1}
    b.add_joints(joints(T0 + 200 * MS, 0.7), T0 + 200 * MS)
    b.add_pose(arm_pose(T0 + 200 * MS, 0), T0 + 200 * MS)
    b.add_pose(arm_pose(T0 + 200 * MS, 1), T0 + 200 * MS)
    b.add_image(image(T0 + 200 * MS), T0 + 200 * MS)
    assert b.take(T0 + 200 * MS).proprio.tolist() == [0.7]  # all inputs present: one obs


def test_malformed_joint_states_and_arm_indices_are_dropped_by_reason():
    b = ObservationBuilder(SyncConfig(), num_arms=2, num_joints=2)
    assert b.add_joints(joints(T0, 0.1, 0.2), T0)
    assert not b.add_joints(joints(T0 + MS, np.nan, 0.2), T0 + MS)
    assert not b.add_joints(joints(T0 + MS, 0.1), T0 + MS)
    assert not b.add_joints(JointSample(T0 + MS, ['x', 'y']), T0 + MS)
    assert not b.add_joints(joints(T0, 0.1, 0.2), T0)
    assert not b.add_joints(joints(T0 - MS, 0.1, 0.2), T0)
    assert not b.add_joints(joints(0, 0.1, 0.2), T0)
    assert not b.add_joints(joints(T0 + S, 0.1, 0.2), T0)
    assert not b.add_pose(arm_pose(T0, 2), T0)
    assert not b.add_pose(arm_pose(T0, True), T0)
    assert b.add_pose(arm_pose(T0, 1), T0) and b.newest_pose(0) is None
    assert b.drops.counts() == {
        'joint_state_nonfinite': 1, 'joint_state_malformed': 2, 'joint_state_duplicate': 1,
        'joint_state_out_of_order': 1, 'joint_state_zero_stamp': 1, 'joint_state_future': 1,
        'pose_bad_arm': 2}
    one_arm = builder()
    assert not one_arm.add_joints(joints(T0, 0.1), T0)  # the checkpoint reads no joints
    assert one_arm.drops.counts() == {'joint_state_unused': 1}


def test_on_drop_hook_gets_reason_and_one_line_detail():
    seen = []
    b = ObservationBuilder(SyncConfig(), on_drop=lambda r, d: seen.append((r, d)))
    b.add_pose(pose(T0, quat=(0, 0, 0, 2)), T0)
    assert seen[0][0] == 'pose_bad_quaternion'
    assert 'quaternion_tolerance' in seen[0][1] and '\n' not in seen[0][1]


# ------------------------------------------------------------------------- properties

finite = st.floats(-1e3, 1e3, allow_nan=False)
garbage_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True), finite)
position_st = st.one_of(st.tuples(finite, finite, finite), st.tuples(*[garbage_float] * 3),
                        st.lists(finite, max_size=5))
quat_st = st.one_of(
    st.tuples(*[st.floats(-1, 1)] * 4),  # random norms, including ~0 and ~1
    st.tuples(*[garbage_float] * 4),
    st.tuples(finite, finite, finite).map(lambda v: tuple(np.r_[v, 1.0] / np.linalg.norm(
        np.r_[v, 1.0]))),  # unit
)
# stamps relative to the clock: mostly plausible, sometimes far off
step_ns = st.one_of(st.integers(-40 * MS, 10 * MS), st.integers(-800 * MS, 300 * MS))
event_st = st.one_of(
    st.tuples(st.just('pose'), step_ns, position_st, quat_st, st.sampled_from(['base', 'x'])),
    st.tuples(st.just('image'), step_ns, st.integers(-30 * MS, 30 * MS), st.integers(0, 2)),
    st.tuples(st.just('clock'), st.one_of(st.integers(0, 40 * MS), st.integers(-2 * S, S))),
    st.tuples(st.just('take'),),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_st, max_size=60))
def test_builder_never_raises_and_observations_are_sound(events):
    sync = SyncConfig(max_pose_skew=0.05, camera_tolerance=0.02, pose_frame_id='base')
    skew_ns = 50 * MS
    b = ObservationBuilder(sync, num_cameras=2)
    now = T0
    accepted_poses = []  # (stamp, position) of every pose the builder accepted
    image_stamps = set()
    observations = []
    for event in events:
        if event[0] == 'clock':
            now += event[1]
            b.check_clock(now)
        elif event[0] == 'pose':
            _, dt, position, quat, frame_id = event
            sample = PoseSample(now + dt, frame_id, np.array(position), np.array(quat))
            if b.add_pose(sample, now):
                accepted_poses.append((now + dt, np.array(position, dtype=float)))
        elif event[0] == 'image':  # camera 0, then (1: camera 1 | 2: bad index) offset by dt1
            _, dt, dt1, other = event
            if b.add_image(image(now + dt, 0), now):
                image_stamps.add(now + dt)
            if other:
                b.add_image(image(now + dt + dt1, other), now)
        else:
            obs = b.take(now)
            if obs is not None:
                observations.append(obs)
    obs = b.take(now + S // 10)
    if obs is not None:
        observations.append(obs)
    for obs in observations:
        q = obs.pose.orientation
        assert np.all(np.isfinite(q)) and np.linalg.norm(q) == pytest.approx(1.0, abs=1e-9)
        assert np.all(np.isfinite(obs.pose.position))
        assert obs.stamp_ns in image_stamps and obs.pose.stamp_ns == obs.stamp_ns
        assert 0 <= obs.pose_skew_ns <= skew_ns
        nearest = min(abs(s - obs.stamp_ns) for s, _ in accepted_poses)
        assert nearest <= obs.pose_skew_ns  # a real accepted sample is that close
        positions = np.stack([p for _, p in accepted_poses])
        assert np.all(obs.pose.position >= positions.min(axis=0) - 1e-9)
        assert np.all(obs.pose.position <= positions.max(axis=0) + 1e-9)
        assert obs.camera_spread_ns <= 20 * MS
        assert [f.camera for f in obs.frames] == [0, 1]


unit_quat_st = st.tuples(*[st.floats(-1, 1)] * 4).filter(
    lambda q: np.linalg.norm(q) > 0.1).map(lambda q: tuple(np.array(q) / np.linalg.norm(q)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_builder_on_live_like_streams_with_corruption(data):
    """Regular pose + image streams with latency jitter and some corrupted poses."""
    pose_period = data.draw(st.integers(5, 40), 'pose_period_ms') * MS
    image_period = data.draw(st.integers(10, 100), 'image_period_ms') * MS
    messages = []  # (arrival, kind, payload)
    for k in range(data.draw(st.integers(2, 40), 'num_poses')):
        stamp = T0 + k * pose_period + data.draw(st.integers(0, 3 * MS))
        position = data.draw(st.tuples(finite, finite, finite))
        quat = data.draw(st.one_of(unit_quat_st, unit_quat_st, unit_quat_st, quat_st))
        messages.append((stamp + data.draw(st.integers(0, 30 * MS)), 'pose',
                         PoseSample(stamp, 'base', np.array(position), np.array(quat))))
    for j in range(data.draw(st.integers(1, 15), 'num_images')):
        stamp = T0 + j * image_period + data.draw(st.integers(0, 5 * MS))
        messages.append((stamp + data.draw(st.integers(0, 80 * MS)), 'image', image(stamp)))
    messages.sort(key=lambda m: m[0])
    b = ObservationBuilder(SyncConfig(max_pose_skew=0.05, max_observation_age=0.5))
    accepted, observations = [], []
    for arrival, kind, payload in messages:
        if kind == 'pose':
            if b.add_pose(payload, arrival):
                accepted.append(payload)
        else:
            b.add_image(payload, arrival)
        if data.draw(st.booleans()):
            obs = b.take(arrival)
            observations += [obs] if obs is not None else []
    obs = b.take(messages[-1][0] + 60 * MS)
    observations += [obs] if obs is not None else []
    for obs in observations:
        q = obs.pose.orientation
        assert np.all(np.isfinite(q)) and np.linalg.norm(q) == pytest.approx(1.0, abs=1e-9)
        assert np.all(np.isfinite(obs.pose.position))
        assert 0 <= obs.pose_skew_ns <= 50 * MS
        assert min(abs(p.stamp_ns - obs.stamp_ns) for p in accepted) <= obs.pose_skew_ns
    stamps = [o.stamp_ns for o in observations]
    assert stamps == sorted(set(stamps))  # latest-only: never repeats or goes back
