"""Observation building: pose history, pose interpolated to the image stamp, latest-only.

Data flow (all times are integer ns; `now_ns` is the node clock, passed in by the caller):

    add_pose  -> validate -> pose history (the last `sync.pose_history` seconds)
    add_image -> validate -> latest frame per camera -> group (stamps within camera_tolerance)
              -> candidate -> pose interpolated to camera 0's stamp -> the ready slot
    take      -> the ready observation (newest only), or None

A candidate whose stamp is newer than every pose waits (pending) for the next pose until the
clock passes stamp + max_pose_skew; then it holds the newest pose if that is within
max_pose_skew, else it is dropped ('pose_skew'). The ready slot holds one observation: a newer one
replaces an unconsumed older one ('superseded'). Nothing ever queues up.

Every rejected input is counted by reason in a DropCounter and reported to `on_drop`.
Not thread-safe on its own: the caller (PerceptionCore) serializes calls with its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from vit_perception.config import SyncConfig
from vit_perception.core.stats import DropCounter
from vit_perception.core.types import NS_PER_S, ImageFrame, Observation, PoseSample

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
    return PoseSample(stamp_ns, p0.frame_id, position, slerp(p0.orientation, p1.orientation, u))


class ObservationBuilder:
    """Pairs images (1..N cameras) with the end-effector pose at their stamp; latest-only."""

    def __init__(self, sync: SyncConfig, num_cameras: int = 1, drops: DropCounter | None = None,
                 on_drop: Callable[[str, str], None] | None = None):
        if num_cameras < 1:
            raise ValueError(f'num_cameras={num_cameras}: must be >= 1')
        self.sync = sync
        self.num_cameras = num_cameras
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
        """Forget every pose, frame, pending and ready observation (counters are kept)."""
        self._poses: deque[PoseSample] = deque()
        self._frames: list[ImageFrame | None] = [None] * self.num_cameras
        self._last_image_ns: list[int | None] = [None] * self.num_cameras
        self._pending: tuple[ImageFrame, ...] | None = None
        self._ready: Observation | None = None
        self._proprio = np.zeros(0)

    def check_clock(self, now_ns: int) -> bool:
        """Track the node clock; True (and the history reset) if it jumped backwards."""
        last = self._last_now_ns
        if last is not None and now_ns < last - CLOCK_JUMP_MARGIN_NS:
            self._last_now_ns = now_ns
            self.reset()
            return True
        self._last_now_ns = now_ns if last is None else max(last, now_ns)
        return False

    def newest_pose(self) -> PoseSample | None:
        return self._poses[-1] if self._poses else None

    def last_image_stamp_ns(self, camera: int) -> int | None:
        return self._last_image_ns[camera]

    @property
    def proprio(self) -> np.ndarray:
        return self._proprio

    @property
    def num_poses(self) -> int:
        """Pose samples in the history."""
        return len(self._poses)

    def has_ready(self) -> bool:
        return self._ready is not None

    # ---------------------------------------------------------------- inputs

    def add_pose(self, pose: PoseSample, now_ns: int) -> bool:
        """Validate and store a pose; True if accepted. May complete a pending observation."""
        with np.errstate(over='ignore', invalid='ignore'):  # garbage is rejected, not warned
            sample, reason, detail = self._validate_pose(pose, now_ns)
        if sample is None:
            self._drop(reason, detail)
            return False
        self._poses.append(sample)
        while self._poses[0].stamp_ns < sample.stamp_ns - self._history_ns:
            self._poses.popleft()
        if self._pending is not None:
            self._resolve(self._pending, final=False)
        return True

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

    def set_proprio(self, values, stamp_ns: int) -> bool:
        """Latest extra proprioceptive scalars, attached to the next observations."""
        try:
            array = np.array(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            self._drop('proprio_malformed', f'proprio at {stamp_ns} ns is not a numeric vector')
            return False
        if not np.all(np.isfinite(array)):
            self._drop('proprio_nonfinite', f'proprio at {stamp_ns} ns has NaN/inf')
            return False
        self._proprio = array
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

    def _validate_pose(self, pose, now_ns: int):
        """(clean PoseSample, '', '') or (None, reason, detail)."""
        try:
            stamp = pose.stamp_ns
            frame_id = pose.frame_id
            position = np.array(pose.position, dtype=np.float64)
            quat = np.array(pose.orientation, dtype=np.float64)
        except (AttributeError, TypeError, ValueError):
            return None, 'pose_malformed', 'pose is not a PoseSample with numeric arrays'
        if position.shape != (3,) or quat.shape != (4,):
            return None, 'pose_malformed', (f'pose position shape {position.shape}, orientation '
                                            f'shape {quat.shape}: expected (3,) and (4,)')
        if not isinstance(stamp, (int, np.integer)) or isinstance(stamp, bool):
            return None, 'pose_malformed', f'pose stamp {stamp!r}: expected integer ns'
        stamp = int(stamp)
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quat))):
            return None, 'pose_nonfinite', f'pose at {stamp} ns has NaN/inf'
        norm = float(np.linalg.norm(quat))
        if norm == 0.0:
            return None, 'pose_zero_quaternion', f'pose at {stamp} ns has a zero quaternion'
        if abs(norm - 1.0) > self.sync.quaternion_tolerance:
            return None, 'pose_bad_quaternion', (
                f'pose at {stamp} ns: quaternion norm {norm:.4f}, expected 1 +- '
                f'sync.quaternion_tolerance {self.sync.quaternion_tolerance}')
        if self.sync.pose_frame_id and frame_id != self.sync.pose_frame_id:
            return None, 'pose_wrong_frame', (f'pose frame_id {frame_id!r}, expected '
                                              f'sync.pose_frame_id {self.sync.pose_frame_id!r}')
        if stamp <= 0:
            return None, 'pose_zero_stamp', f'pose stamp {stamp} ns: expected a set header stamp'
        if stamp - now_ns > self._future_ns:
            ahead = (stamp - now_ns) / NS_PER_S
            return None, 'pose_future', (f'pose stamp {ahead:.3f} s ahead of the clock > '
                                         f'sync.max_future {self.sync.max_future} s')
        if self._poses:
            newest = self._poses[-1].stamp_ns
            if stamp == newest:
                return None, 'pose_duplicate', f'pose stamp {stamp} ns repeated'
            if stamp < newest:
                return None, 'pose_out_of_order', (f'pose stamp {stamp} ns older than the newest '
                                                   f'pose {newest} ns')
        return PoseSample(stamp, str(frame_id), position, quat / norm), '', ''

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
        """Pose for the group's stamp: interpolate, hold, wait (pending) or drop."""
        self._pending = None
        stamp = frames[0].stamp_ns
        before = after = None
        for pose in reversed(self._poses):  # images are usually near the newest pose
            if pose.stamp_ns >= stamp:
                after = pose
            else:
                before = pose
                break
        if before is None and after is None:
            if final:
                self._drop('no_pose', f'observation at {stamp} ns: no pose received within '
                           f'sync.max_pose_skew {self.sync.max_pose_skew} s')
            else:
                self._pending = frames
            return
        if after is None:  # newer than every pose: wait for the next one, then hold
            if not final:
                self._pending = frames
                return
            skew, pose = stamp - before.stamp_ns, before
        elif before is None or after.stamp_ns == stamp:  # older than every pose, or exact
            skew, pose = after.stamp_ns - stamp, after
        else:
            skew = min(stamp - before.stamp_ns, after.stamp_ns - stamp)
            pose = interpolate_pose(before, after, stamp)
        if skew > self._skew_ns:
            self._drop('pose_skew', f'observation at {stamp} ns: nearest pose '
                       f'{skew / NS_PER_S:.3f} s away > sync.max_pose_skew '
                       f'{self.sync.max_pose_skew} s')
            return
        if not (np.all(np.isfinite(pose.position)) and np.all(np.isfinite(pose.orientation))):
            self._drop('pose_nonfinite', f'observation at {stamp} ns: the interpolated pose '
                       'overflowed (positions near the float limit)')
            return
        pose = PoseSample(stamp, pose.frame_id, pose.position, pose.orientation)
        stamps = [f.stamp_ns for f in frames]
        obs = Observation(stamp_ns=stamp, frames=frames, pose=pose, proprio=self._proprio,
                          pose_skew_ns=int(skew), camera_spread_ns=max(stamps) - min(stamps))
        if self._ready is not None:
            self._drop('superseded', f'observation at {self._ready.stamp_ns} ns replaced by a '
                       'newer one before inference took it')
        self._ready = obs
