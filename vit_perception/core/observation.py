"""Observation building: timed inputs interpolated to the image stamp, latest-only.

Data flow (all times are integer ns; `now_ns` is the node clock, passed in by the caller):

    add_pose   -> validate -> that arm's pose history (the last `sync.pose_history` seconds)
    add_joints -> validate -> joint-state history (same length; only with proprio names)
    add_image  -> validate -> latest frame per camera -> group (stamps within camera_tolerance)
               -> candidate -> every track at camera 0's stamp -> the ready slot
    take       -> the ready observation (newest only), or None

A track is one timed input: each arm's pose (linear position, slerp rotation) and the joint
states (linear). A candidate newer than a track's every sample waits (pending) for that track's
next sample until the clock passes stamp + max_pose_skew; then it holds the newest sample if that
is within max_pose_skew, else it is dropped ('pose_skew' / 'joint_state_skew'). An observation is
complete only when every track has a value at its stamp. The ready slot holds one observation: a
newer one replaces an unconsumed older one ('superseded'). Nothing ever queues up.

Every rejected input is counted by reason in a DropCounter and reported to `on_drop`.
Not thread-safe on its own: the caller (PerceptionCore) serializes calls with its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from vit_perception.config import SyncConfig
from vit_perception.core.stats import DropCounter
from vit_perception.core.types import (
    NS_PER_S,
    ImageFrame,
    JointSample,
    Observation,
    PoseSample,
)

# The node clock may step back this much (thread interleaving, NTP slew) before it counts as a
# jump that resets the history.
CLOCK_JUMP_MARGIN_NS = 100_000_000


def slerp(q0: np.ndarray, q1: np.ndarray, u: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (xyzw), shortest arc; u in [0, 1]."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: normalized lerp is exact to ~1e-7
        q = q0 + u * (q1 - q0)
    else:
        theta = np.arccos(min(dot, 1.0))
        q = (np.sin((1.0 - u) * theta) * q0 + np.sin(u * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q)


def interpolate_pose(p0: PoseSample, p1: PoseSample, stamp_ns: int) -> PoseSample:
    """Pose at `stamp_ns` between samples p0 <= stamp <= p1: linear position, slerp rotation."""
    span = p1.stamp_ns - p0.stamp_ns
    u = 0.0 if span <= 0 else (stamp_ns - p0.stamp_ns) / span
    with np.errstate(over='ignore', invalid='ignore'):  # callers check the result is finite
        position = p0.position + u * (p1.position - p0.position)
    return PoseSample(stamp_ns, p0.frame_id, position, slerp(p0.orientation, p1.orientation, u),
                      p0.arm)


def interpolate_joints(j0: JointSample, j1: JointSample, stamp_ns: int) -> JointSample:
    """Joint positions at `stamp_ns` between samples j0 <= stamp <= j1: linear."""
    span = j1.stamp_ns - j0.stamp_ns
    u = 0.0 if span <= 0 else (stamp_ns - j0.stamp_ns) / span
    with np.errstate(over='ignore', invalid='ignore'):  # callers check the result is finite
        return JointSample(stamp_ns, j0.positions + u * (j1.positions - j0.positions))


class Track:
    """The history of one timed input (an arm's pose, or the joint states), oldest first.

    `kind` ('pose' / 'joint_state') prefixes its drop reasons; `name` appears in their details.
    """

    def __init__(self, kind: str, name: str, interpolate, history_ns: int):
        self.kind, self.name = kind, name
        self.interpolate = interpolate
        self.history_ns = history_ns
        self.samples: deque = deque()

    def newest(self):
        return self.samples[-1] if self.samples else None

    def append(self, sample) -> None:
        self.samples.append(sample)
        while self.samples[0].stamp_ns < sample.stamp_ns - self.history_ns:
            self.samples.popleft()

    def at(self, stamp: int, final: bool, skew_ns: int, skew_s: float):
        """('ok', sample at `stamp`, skew ns) | ('wait',) | ('drop', reason, detail)."""
        before = after = None
        for sample in reversed(self.samples):  # images are usually near the newest sample
            if sample.stamp_ns >= stamp:
                after = sample
            else:
                before = sample
                break
        if before is None and after is None:
            if not final:
                return ('wait',)
            return ('drop', f'no_{self.kind}', f'observation at {stamp} ns: no {self.name} '
                    f'received within sync.max_pose_skew {skew_s} s')
        if after is None:  # newer than every sample: wait for the next one, then hold
            if not final:
                return ('wait',)
            skew, sample = stamp - before.stamp_ns, before
        elif before is None or after.stamp_ns == stamp:  # older than every sample, or exact
            skew, sample = after.stamp_ns - stamp, after
        else:
            skew = min(stamp - before.stamp_ns, after.stamp_ns - stamp)
            sample = self.interpolate(before, after, stamp)
        if skew > skew_ns:
            return ('drop', f'{self.kind}_skew', f'observation at {stamp} ns: nearest {self.name} '
                    f'{skew / NS_PER_S:.3f} s away > sync.max_pose_skew {skew_s} s')
        values = (sample.positions,) if self.kind == 'joint_state' else (sample.position,
                                                                         sample.orientation)
        if not all(np.all(np.isfinite(v)) for v in values):
            return ('drop', f'{self.kind}_nonfinite', f'observation at {stamp} ns: the '
                    f'interpolated {self.name} overflowed (values near the float limit)')
        return ('ok', sample, int(skew))


class ObservationBuilder:
    """Pairs images (1..C cameras) with every arm's pose (and the joint states) at their stamp;
    latest-only."""

    def __init__(self, sync: SyncConfig, num_cameras: int = 1, drops: DropCounter | None = None,
                 on_drop: Callable[[str, str], None] | None = None, *, num_arms: int = 1,
                 num_joints: int = 0):
        if num_cameras < 1 or num_arms < 1:
            raise ValueError(f'num_cameras={num_cameras}, num_arms={num_arms}: must be >= 1')
        self.sync = sync
        self.num_cameras = num_cameras
        self.num_arms = num_arms
        self.num_joints = num_joints
        self.drops = drops if drops is not None else DropCounter()
        self._on_drop = on_drop
        self._history_ns = int(sync.pose_history * NS_PER_S)
        self._skew_ns = int(sync.max_pose_skew * NS_PER_S)
        self._tolerance_ns = int(sync.camera_tolerance * NS_PER_S)
        self._max_age_ns = int(sync.max_observation_age * NS_PER_S)
        self._future_ns = int(sync.max_future * NS_PER_S)
        self._last_now_ns: int | None = None
        self.reset()

    # ---------------------------------------------------------------- state

    def reset(self) -> None:
        """Forget every sample, frame, pending and ready observation (counters are kept)."""
        self._arms = [Track('pose', 'pose' if self.num_arms == 1 else f'arm {arm} pose',
                            interpolate_pose, self._history_ns) for arm in range(self.num_arms)]
        self._joints = (Track('joint_state', 'joint state', interpolate_joints, self._history_ns)
                        if self.num_joints else None)
        self._frames: list[ImageFrame | None] = [None] * self.num_cameras
        self._last_image_ns: list[int | None] = [None] * self.num_cameras
        self._pending: tuple[ImageFrame, ...] | None = None
        self._ready: Observation | None = None

    def check_clock(self, now_ns: int) -> bool:
        """Track the node clock; True (and the history reset) if it jumped backwards."""
        last = self._last_now_ns
        if last is not None and now_ns < last - CLOCK_JUMP_MARGIN_NS:
            self._last_now_ns = now_ns
            self.reset()
            return True
        self._last_now_ns = now_ns if last is None else max(last, now_ns)
        return False

    def newest_pose(self, arm: int = 0) -> PoseSample | None:
        return self._arms[arm].newest()

    def newest_poses(self) -> tuple[PoseSample, ...] | None:
        """Every arm's newest pose, or None while an arm has none."""
        poses = tuple(track.newest() for track in self._arms)
        return None if any(p is None for p in poses) else poses

    def newest_joints(self) -> JointSample | None:
        return self._joints.newest() if self._joints is not None else None

    def last_image_stamp_ns(self, camera: int) -> int | None:
        return self._last_image_ns[camera]

    @property
    def num_poses(self) -> int:
        """Pose samples in the first arm's history."""
        return len(self._arms[0].samples)

    def has_ready(self) -> bool:
        return self._ready is not None

    # ---------------------------------------------------------------- inputs

    def add_pose(self, pose: PoseSample, now_ns: int) -> bool:
        """Validate and store an arm's pose; True if accepted. May complete a pending
        observation."""
        with np.errstate(over='ignore', invalid='ignore'):  # garbage is rejected, not warned
            sample, reason, detail = self._validate_pose(pose, now_ns)
        track = self._arms[sample.arm] if sample is not None else None
        return self._add(track, sample, reason, detail)

    def add_joints(self, joints: JointSample, now_ns: int) -> bool:
        """Validate and store joint positions; True if accepted. May complete a pending
        observation."""
        sample, reason, detail = self._validate_joints(joints, now_ns)
        return self._add(self._joints, sample, reason, detail)

    def add_image(self, frame: ImageFrame, now_ns: int) -> bool:
        """Validate and store an image; True if accepted. May complete an observation."""
        reason, detail = self._check_image(frame, now_ns)
        if reason:
            self._drop(reason, detail)
            return False
        camera = frame.camera
        self._last_image_ns[camera] = frame.stamp_ns
        if self._frames[camera] is not None:
            old = self._frames[camera].stamp_ns
            self._drop('camera_unpaired', f'camera {camera} frame at {old} ns replaced before '
                       'the other cameras caught up')
        self._frames[camera] = frame
        group = self._group()
        if group is not None:
            if self._pending is not None:
                self._drop('superseded_pending', f'observation at {self._pending[0].stamp_ns} ns '
                           'replaced by a newer one while waiting for a pose')
                self._pending = None
            self._resolve(group, final=False)
        return True

    # ---------------------------------------------------------------- output

    def poll(self, now_ns: int) -> None:
        """Resolve a pending observation once the clock has passed stamp + max_pose_skew."""
        if self._pending is not None and now_ns - self._pending[0].stamp_ns > self._skew_ns:
            self._resolve(self._pending, final=True)

    def take(self, now_ns: int) -> Observation | None:
        """The newest complete observation (consumed), or None. Stale ones are dropped."""
        self.poll(now_ns)
        obs, self._ready = self._ready, None
        if obs is None:
            return None
        age_ns = now_ns - obs.stamp_ns
        if age_ns > self._max_age_ns:
            self._drop('stale', f'observation {age_ns / NS_PER_S:.3f} s old > '
                       f'sync.max_observation_age {self.sync.max_observation_age} s')
            return None
        return obs

    # ---------------------------------------------------------------- internals

    def _drop(self, reason: str, detail: str) -> None:
        self.drops.add(reason)
        if self._on_drop is not None:
            self._on_drop(reason, detail)

    def _add(self, track: Track | None, sample, reason: str, detail: str) -> bool:
        if sample is None:
            self._drop(reason, detail)
            return False
        track.append(sample)
        if self._pending is not None:
            self._resolve(self._pending, final=False)
        return True

    def _check_stamp(self, track: Track, stamp, now_ns: int) -> tuple[str, str]:
        """('', '') when `stamp` may extend `track`, else (reason, detail)."""
        kind, name = track.kind, track.name
        if not isinstance(stamp, (int, np.integer)) or isinstance(stamp, bool):
            return f'{kind}_malformed', f'{name} stamp {stamp!r}: expected integer ns'
        if stamp <= 0:
            return f'{kind}_zero_stamp', f'{name} stamp {stamp} ns: expected a set header stamp'
        if stamp - now_ns > self._future_ns:
            ahead = (stamp - now_ns) / NS_PER_S
            return f'{kind}_future', (f'{name} stamp {ahead:.3f} s ahead of the clock > '
                                      f'sync.max_future {self.sync.max_future} s')
        newest = track.newest()
        if newest is not None:
            if stamp == newest.stamp_ns:
                return f'{kind}_duplicate', f'{name} stamp {stamp} ns repeated'
            if stamp < newest.stamp_ns:
                return f'{kind}_out_of_order', (f'{name} stamp {stamp} ns older than the newest '
                                                f'{newest.stamp_ns} ns')
        return '', ''

    def _validate_pose(self, pose, now_ns: int):
        """(clean PoseSample, '', '') or (None, reason, detail)."""
        try:
            stamp = pose.stamp_ns
            frame_id = pose.frame_id
            arm = pose.arm
            position = np.array(pose.position, dtype=np.float64)
            quat = np.array(pose.orientation, dtype=np.float64)
        except (AttributeError, TypeError, ValueError):
            return None, 'pose_malformed', 'pose is not a PoseSample with numeric arrays'
        if (not isinstance(arm, (int, np.integer)) or isinstance(arm, bool)
                or not 0 <= arm < self.num_arms):
            return None, 'pose_bad_arm', f'pose arm index {arm!r}: expected 0..{self.num_arms - 1}'
        track = self._arms[arm]
        if position.shape != (3,) or quat.shape != (4,):
            return None, 'pose_malformed', (f'{track.name} position shape {position.shape}, '
                                            f'orientation shape {quat.shape}: expected (3,) and '
                                            '(4,)')
        if not isinstance(stamp, (int, np.integer)) or isinstance(stamp, bool):
            return None, 'pose_malformed', f'{track.name} stamp {stamp!r}: expected integer ns'
        stamp = int(stamp)
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quat))):
            return None, 'pose_nonfinite', f'{track.name} at {stamp} ns has NaN/inf'
        norm = float(np.linalg.norm(quat))
        if norm == 0.0:
            return None, 'pose_zero_quaternion', (f'{track.name} at {stamp} ns has a zero '
                                                  'quaternion')
        if abs(norm - 1.0) > self.sync.quaternion_tolerance:
            return None, 'pose_bad_quaternion', (
                f'{track.name} at {stamp} ns: quaternion norm {norm:.4f}, expected 1 +- '
                f'sync.quaternion_tolerance {self.sync.quaternion_tolerance}')
        if self.sync.pose_frame_id and frame_id != self.sync.pose_frame_id:
            return None, 'pose_wrong_frame', (f'{track.name} frame_id {frame_id!r}, expected '
                                              f'sync.pose_frame_id {self.sync.pose_frame_id!r}')
        reason, detail = self._check_stamp(track, stamp, now_ns)
        if reason:
            return None, reason, detail
        return PoseSample(stamp, str(frame_id), position, quat / norm, int(arm)), '', ''

    def _validate_joints(self, joints, now_ns: int):
        """(clean JointSample, '', '') or (None, reason, detail)."""
        if self._joints is None:
            return None, 'joint_state_unused', 'joint states received but the checkpoint reads ' \
                'no pose.proprio_names'
        try:
            stamp = joints.stamp_ns
            positions = np.array(joints.positions, dtype=np.float64).reshape(-1)
        except (AttributeError, TypeError, ValueError):
            return None, 'joint_state_malformed', 'joint state is not a JointSample of numbers'
        if positions.shape != (self.num_joints,):
            return None, 'joint_state_malformed', (f'joint state with {positions.size} '
                                                   f'positions: expected {self.num_joints}')
        reason, detail = self._check_stamp(self._joints, stamp, now_ns)
        if reason:
            return None, reason, detail
        if not np.all(np.isfinite(positions)):
            return None, 'joint_state_nonfinite', f'joint state at {stamp} ns has NaN/inf'
        return JointSample(int(stamp), positions), '', ''

    def _check_image(self, frame: ImageFrame, now_ns: int) -> tuple[str, str]:
        """('', '') if the frame may be used, else (reason, detail)."""
        camera, stamp = frame.camera, frame.stamp_ns
        if not isinstance(stamp, (int, np.integer)) or isinstance(stamp, bool):
            return 'image_malformed', f'image stamp {stamp!r}: expected integer ns'
        if not isinstance(camera, (int, np.integer)) or not 0 <= camera < self.num_cameras:
            return 'image_bad_camera', (f'image camera index {camera!r}: expected 0..'
                                        f'{self.num_cameras - 1}')
        if stamp <= 0:
            return 'image_zero_stamp', f'camera {camera} image stamp {stamp} ns: expected > 0'
        if stamp - now_ns > self._future_ns:
            ahead = (stamp - now_ns) / NS_PER_S
            return 'image_future', (f'camera {camera} image {ahead:.3f} s ahead of the clock > '
                                    f'sync.max_future {self.sync.max_future} s')
        if now_ns - stamp > self._max_age_ns:
            return 'stale', (f'camera {camera} image {(now_ns - stamp) / NS_PER_S:.3f} s old > '
                             f'sync.max_observation_age {self.sync.max_observation_age} s')
        last = self._last_image_ns[camera]
        if last is not None and stamp <= last:
            reason = 'image_duplicate' if stamp == last else 'image_out_of_order'
            return reason, f'camera {camera} image stamp {stamp} ns, newest was {last} ns'
        return '', ''

    def _group(self) -> tuple[ImageFrame, ...] | None:
        """One frame per camera with stamps within camera_tolerance, or None (frames kept).

        Per-camera stamps only grow, so a frame older than the newest frame of another camera by
        more than the tolerance can never be matched: it is dropped ('camera_unpaired').
        """
        present = [f for f in self._frames if f is not None]
        newest = max(f.stamp_ns for f in present)
        for camera, frame in enumerate(self._frames):
            if frame is not None and frame.stamp_ns < newest - self._tolerance_ns:
                self._drop('camera_unpaired', f'camera {camera} frame {frame.stamp_ns} ns has no '
                           f'partner within sync.camera_tolerance {self.sync.camera_tolerance} s')
                self._frames[camera] = None
        if any(f is None for f in self._frames):
            return None
        group, self._frames = tuple(self._frames), [None] * self.num_cameras
        return group

    def _resolve(self, frames: tuple[ImageFrame, ...], final: bool) -> None:
        """Every track at the group's stamp: interpolate, hold, wait (pending) or drop."""
        self._pending = None
        stamp = frames[0].stamp_ns
        tracks = self._arms + ([self._joints] if self._joints is not None else [])
        results = [track.at(stamp, final, self._skew_ns, self.sync.max_pose_skew)
                   for track in tracks]
        dropped = next((r for r in results if r[0] == 'drop'), None)
        if dropped is not None:
            self._drop(dropped[1], dropped[2])
            return
        if any(r[0] == 'wait' for r in results):
            self._pending = frames
            return
        samples = [r[1] for r in results]
        poses = tuple(PoseSample(stamp, p.frame_id, p.position, p.orientation, p.arm)
                      for p in samples[:self.num_arms])
        proprio = samples[-1].positions if self._joints is not None else np.zeros(0)
        stamps = [f.stamp_ns for f in frames]
        obs = Observation(stamp_ns=stamp, frames=frames, poses=poses, proprio=proprio,
                          pose_skew_ns=max(r[2] for r in results),
                          camera_spread_ns=max(stamps) - min(stamps))
        if self._ready is not None:
            self._drop('superseded', f'observation at {self._ready.stamp_ns} ns replaced by a '
                       'newer one before inference took it')
        self._ready = obs
