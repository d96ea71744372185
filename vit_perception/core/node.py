"""PerceptionCore: the transport-free node logic every driver (DDS, rclpy, bag replay) runs.

    on_image / on_pose / on_joints (callbacks) -> ObservationBuilder (latest-only slot) -> wake
        the worker
    worker: Engine.infer -> ActionScheduler.add_chunk, publish embedding + chunk
    tick (control timer): staleness / stall checks -> [late-fusion refresh] -> ActionScheduler
        -> ActionLimiter -> publish action
    publish_diagnostics: latency, rates, drops, ages, clamps, OK/WARN/ERROR with a reason

Callbacks only take a short lock; the model never runs under it, so a callback never waits for
inference. threaded=False (bag replay): no worker, `run_pending()` runs the inference inline and
only the injected clock is read, so a replay is deterministic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vit_perception.config import NodeConfig
from vit_perception.core import priority
from vit_perception.core.observation import ObservationBuilder
from vit_perception.core.safety import ActionLimiter
from vit_perception.core.scheduler import ActionScheduler
from vit_perception.core.stats import DropCounter, LatencyStats, RateMeter, ThrottledLog
from vit_perception.core.types import (
    NS_PER_S,
    ActionChunkResult,
    ImageFrame,
    JointSample,
    PoseSample,
)
from vit_perception.errors import ConfigError, ImageError, PoseError

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels

# Normal in a latest-only pipeline (camera faster than the model): counted, never a warning.
QUIET_DROPS = ('superseded', 'superseded_pending')
# Withheld outputs: any of these since the last report makes /diagnostics an ERROR.
ERROR_DROPS = ('non_finite',)


def non_finite(name: str, values) -> str:
    """'' when every value of `values` is finite as float32 (what the messages carry), else why."""
    array = np.asarray(values, dtype=np.float64)
    with np.errstate(over='ignore'):
        finite = np.isfinite(array.astype(np.float32))
    if finite.all():
        return ''
    return (f'{name} has {int(array.size - finite.sum())} non-finite (NaN/Inf or beyond float32) '
            f'values of {array.size}: withheld')


@dataclass
class DiagnosticsReport:
    level: int  # 0 OK, 1 WARN, 2 ERROR (diagnostic_msgs/DiagnosticStatus levels)
    message: str  # human reason, e.g. 'no action: observation 0.82 s old > 0.5 s'
    values: dict[str, str]  # latency p50/p99 per stage, input/output rates, drops, ages, clamps


class Outputs(Protocol):
    """Implemented by each driver; called from core threads, never under the core's lock
    (except `log`, which must not call back into the core)."""

    def publish_embedding(self, result: ActionChunkResult, frame_id: str) -> None: ...

    def publish_chunk(self, result: ActionChunkResult) -> None: ...

    def publish_action(self, stamp_ns: int, action: np.ndarray,
                       observation_stamp_ns: int) -> None: ...

    def publish_diagnostics(self, report: DiagnosticsReport) -> None: ...

    def log(self, level: str, text: str) -> None: ...


class PerceptionCore:
    """Observations in, embeddings + chunks + control-rate actions out. No transport."""

    def __init__(self, config: NodeConfig, engine, outputs: Outputs,
                 clock: Callable[[], int], threaded: bool = True):
        self.config = config
        self.engine = engine
        self.outputs = outputs
        self.threaded = threaded
        self._clock = clock
        self.action_names = list(engine.action_names)
        self.num_cameras = len(config.topics.cameras)
        policy = getattr(engine, 'config', None)  # PolicyConfig (None: a test double)
        cameras = getattr(policy, 'cameras', None)
        if cameras is not None and len(cameras) != self.num_cameras:
            raise ConfigError(f'topics.cameras has {self.num_cameras} topics but the model '
                              f'expects {len(cameras)} cameras ({", ".join(cameras)})')
        pose = getattr(policy, 'pose', None)  # PoseConfig; None: one arm, no joints
        arms = list(pose.arms) if pose is not None else ['ee']
        self.num_arms = len(arms)
        # Joint names read from sensor_msgs/JointState (the drivers' input routes need them).
        self.proprio_names = list(pose.proprio_names) if pose is not None else []
        self.num_joints = len(self.proprio_names)
        if config.pose_input.source == 'topic' and len(config.topics.poses) != self.num_arms:
            raise ConfigError(f'topics.poses has {len(config.topics.poses)} topics but the model '
                              f'expects {self.num_arms} arms ({", ".join(arms)}): give one '
                              'PoseStamped topic per arm, in that order')
        if config.pose_input.source == 'tf' and self.num_arms > 1:
            raise ConfigError(f'pose_input.source tf reads one arm; the model expects '
                              f'{self.num_arms} ({", ".join(arms)}): use pose_input.source topic')
        self._pose_labels = ['pose'] if self.num_arms == 1 else [
            f'pose{arm}' for arm in range(self.num_arms)]

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.drops = DropCounter()
        self.latency = LatencyStats()
        self._log = ThrottledLog(outputs.log, config.log_throttle)
        self.builder = ObservationBuilder(config.sync, self.num_cameras, self.drops,
                                          self._on_drop, num_arms=self.num_arms,
                                          num_joints=self.num_joints)
        self.scheduler = ActionScheduler(engine.dt, engine.horizon, config.control.ensemble_coeff)
        self.limiter = ActionLimiter(config.safety, self.action_names)
        inputs = [f'image{c}' for c in range(self.num_cameras)] + self._pose_labels + (
            ['joint_states'] if self.num_joints else [])
        self._rates = {name: RateMeter() for name in inputs + ['chunk', 'action']}
        self._late_refresh = engine.fusion == 'late' and config.control.late_fusion_refresh
        self._max_age_ns = int(config.sync.max_observation_age * NS_PER_S)
        self._stall_ns = int(config.safety.max_inference_time * NS_PER_S)
        self._poll_s = min(max(config.sync.max_pose_skew / 2, 0.005), 0.1)

        self._now_ns = 0  # last clock reading (under the lock)
        self._epoch = 0  # bumped by reset(): results of older inferences are discarded
        self._resets = 0
        self._busy_since_ns: int | None = None  # clock when the running inference started
        self._newest_obs_ns: int | None = None  # stamp of the newest observation with a chunk
        self._last_refresh: tuple[int, int] | None = None  # (chunk stamp, pose stamp) refreshed
        self._suppressed: str | None = None  # why the last tick published nothing
        self._last_drop, self._last_drop_ns = '', 0  # newest drop worth naming in a reason
        self._drops_reported: dict[str, int] = {}
        self._stopping = False
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ inputs (callbacks)

    def on_image(self, frame: ImageFrame) -> None:
        """Image callback: cheap, never waits for the model."""
        with self._lock:
            now = self._now()
            meter = self._rates.get(f'image{frame.camera}')
            if meter is not None:
                meter.tick(now)
            self.builder.add_image(frame, now)
            if self.builder.has_ready():
                self._wake.notify()

    def on_pose(self, pose: PoseSample) -> None:
        """Pose callback (arm `pose.arm`): cheap, never waits for the model."""
        with self._lock:
            now = self._now()
            arm = getattr(pose, 'arm', None)
            if isinstance(arm, int) and 0 <= arm < self.num_arms:
                self._rates[self._pose_labels[arm]].tick(now)
            self.builder.add_pose(pose, now)
            if self.builder.has_ready():
                self._wake.notify()

    def on_joints(self, joints: JointSample) -> None:
        """Joint-state callback (the checkpoint's pose.proprio_names): cheap, never waits."""
        with self._lock:
            now = self._now()
            meter = self._rates.get('joint_states')
            if meter is not None:
                meter.tick(now)
            self.builder.add_joints(joints, now)
            if self.builder.has_ready():
                self._wake.notify()

    def on_bad_message(self, source: str, reason: str, detail: str) -> None:
        """A driver could not convert a message: counted by reason, logged (throttled)."""
        with self._lock:
            now = self._now()
            self.drops.add(reason)
            self._last_drop, self._last_drop_ns = reason, now
            self._log(reason, 'warn', f'dropped {source} message ({reason}): {detail}', now)

    # ------------------------------------------------------------------ inference

    def start(self) -> None:
        """Start the inference worker (threaded=True); no-op otherwise or if running."""
        if not self.threaded or (self._worker is not None and self._worker.is_alive()):
            return
        self._stopping = False
        self._worker = threading.Thread(target=self._worker_loop, name='vit_perception_infer',
                                        daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker after the inference in flight (if any) returns."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.join(timeout=self.config.safety.max_inference_time + 5.0)
            if worker.is_alive():
                self.outputs.log('warn', 'inference worker still busy at stop; left to finish')

    def run_pending(self) -> bool:
        """threaded=False: run the pending inference now; True if one ran.

        Engine errors other than ImageError/PoseError propagate to the caller in this mode.
        """
        if self._worker is not None and self._worker.is_alive():
            raise RuntimeError('run_pending() is for threaded=False; the worker thread is running')
        return self._run_one(catch_all=False)

    def _worker_loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping:
                    self.builder.poll(self._now())
                    if self.builder.has_ready():
                        break
                    self._wake.wait(self._poll_s)  # also lets pending observations time out
                if self._stopping:
                    return
            try:
                self._run_one(catch_all=True)
            except Exception as err:  # a publisher failed: keep the worker alive
                self._count_and_log('worker_error', 'error',
                                    f'inference worker: {type(err).__name__}: {err}')

    def _run_one(self, catch_all: bool) -> bool:
        with self._lock:
            started = self._now()
            obs = self.builder.take(started)
            if obs is None:
                return False
            self._busy_since_ns = started
            epoch = self._epoch
        failure = None
        try:
            result = self.engine.infer(obs)
        except ImageError as err:
            failure = ('bad_image', 'warn', f'inference skipped, bad image at {obs.stamp_ns} ns: '
                                            f'{err}')
        except PoseError as err:
            failure = ('bad_pose', 'warn', f'inference skipped, bad pose at {obs.stamp_ns} ns: '
                                           f'{err}')
        except Exception as err:
            if not catch_all:
                raise
            failure = ('inference_error', 'error', f'inference failed at {obs.stamp_ns} ns: '
                                                   f'{type(err).__name__}: {err}')
        finally:
            with self._lock:
                self._busy_since_ns = None
        if failure is not None:
            self._count_and_log(*failure)
            return True
        with self._lock:
            now = self._now()
            if epoch != self._epoch:
                self._drop_locked('reset_discard', 'info', 'inference result from before a '
                                  'reset discarded', now)
                return True
            problem = self._check_result(result)
            if problem:
                self._drop_locked('bad_output', 'error', problem, now)
                return True
            problem = (non_finite('embedding', result.embedding)
                       or non_finite('action chunk', result.chunk))
            if problem:
                self._drop_locked('non_finite', 'error', f'observation {obs.stamp_ns} ns: '
                                  f'{problem}', now)
                return True
            self.scheduler.add_chunk(result.observation_stamp_ns, result.chunk)
            self._newest_obs_ns = max(self._newest_obs_ns or 0, result.observation_stamp_ns)
            self.latency.add_all(result.timings_ms)
            self.latency.add('infer_call', (now - started) / 1e6)
            self.latency.add('observation_to_chunk', (now - obs.stamp_ns) / 1e6)
            self._rates['chunk'].tick(now)
        self.outputs.publish_embedding(result, obs.frames[0].frame_id)
        self.outputs.publish_chunk(result)
        return True

    def _check_result(self, result: ActionChunkResult) -> str:
        chunk = np.asarray(result.chunk)
        expected = (self.scheduler.horizon, len(self.action_names))
        if chunk.shape != expected:
            return f'engine returned a chunk of shape {chunk.shape}: expected {expected}'
        return ''

    # ------------------------------------------------------------------ control

    def tick(self) -> np.ndarray | None:
        """Control timer: publish and return the action for clock() now, or None (suppressed)."""
        with self._lock:
            now = self._now()
            self.builder.poll(now)
            if self.builder.has_ready():
                self._wake.notify()
            reason = self._blocked_reason(now)
            newest = self._refresh_inputs() if reason is None else None
            epoch = self._epoch
            chunk_stamp = self.scheduler.newest_stamp_ns
        refreshed = None
        if newest is not None:  # late fusion: small model step, run outside the lock
            poses, joints, stamps = newest
            try:
                refreshed = self.engine.refresh(
                    poses, None if joints is None else joints.positions,
                    observation_stamp_ns=chunk_stamp)
            except (PoseError, ValueError) as err:
                self._count_and_log('refresh_error', 'warn', f'late-fusion refresh skipped: {err}')
            problem = '' if refreshed is None else non_finite('refreshed chunk', refreshed)
            if problem:
                self._count_and_log('non_finite', 'error', f'late-fusion refresh: {problem}')
                refreshed = None
        with self._lock:
            if newest is not None and epoch == self._epoch:
                self._last_refresh = (chunk_stamp, stamps)  # tried: not again each tick
                if refreshed is not None and self.scheduler.newest_stamp_ns == chunk_stamp:
                    self.scheduler.refresh(min(stamps), refreshed)
            action = scheduled = None
            if reason is None:
                scheduled = self.scheduler.action_at(now)
                if scheduled is None:
                    reason = ('no action: the newest action chunk ends before now (horizon '
                              f'{self.scheduler.horizon} x dt {self.engine.dt} s)')
            problem = '' if scheduled is None else non_finite('action', scheduled.action)
            if problem:
                self._drop_locked('non_finite', 'error', problem, now)
                scheduled, reason = None, 'no action: the model produced a non-finite action'
            if scheduled is not None:
                action = self.limiter.apply(scheduled.action)
                if action is None:
                    reason = 'no action: the model produced a non-finite action'
            self._set_suppressed(reason, now)
            if action is not None:
                self._rates['action'].tick(now)
        if action is None:
            return None
        self.outputs.publish_action(now, action, scheduled.observation_stamp_ns)
        return action

    def _blocked_reason(self, now: int) -> str | None:
        """Why no action may be published now (stall, no input, stale), or None."""
        if self._busy_since_ns is not None and now - self._busy_since_ns > self._stall_ns:
            return (f'no action: inference running {(now - self._busy_since_ns) / NS_PER_S:.2f} s'
                    f' > safety.max_inference_time {self.config.safety.max_inference_time} s')
        newest = self._newest_obs_ns
        last_drop = ''
        if self._last_drop and (newest is None or self._last_drop_ns >= newest):
            last_drop = f' (last drop: {self._last_drop})'  # it may explain the missing input
        if newest is None:
            if all(self.builder.last_image_stamp_ns(c) is None for c in range(self.num_cameras)):
                return 'no action: no image received yet' + last_drop
            if self.builder.newest_poses() is None:
                return 'no action: no pose received yet' + last_drop
            if self.num_joints and self.builder.newest_joints() is None:
                return 'no action: no joint state received yet' + last_drop
            return 'no action: no observation has been through the model yet' + last_drop
        if now - newest > self._max_age_ns:
            return (f'no action: observation {(now - newest) / NS_PER_S:.2f} s old > '
                    f'sync.max_observation_age {self.config.sync.max_observation_age} s'
                    + last_drop)
        return None

    def _refresh_inputs(self):
        """Late fusion: (newest poses, newest joints or None, their stamps), unless one is
        missing or older than the newest chunk, or they were used already; else None."""
        if not self._late_refresh:
            return None
        poses = self.builder.newest_poses()
        joints = self.builder.newest_joints()
        newest = self.scheduler.newest_stamp_ns
        if poses is None or newest is None or (self.num_joints and joints is None):
            return None
        stamps = tuple(p.stamp_ns for p in poses) + ((joints.stamp_ns,) if joints else ())
        if min(stamps) < newest or (newest, stamps) == self._last_refresh:
            return None
        return poses, joints, stamps

    def _set_suppressed(self, reason: str | None, now: int) -> None:
        if reason is not None and self._suppressed is None:
            self._log('suppressed', 'warn', reason, now)
        elif reason is None and self._suppressed is not None:
            self._log('resumed', 'info', 'actions resumed', now)
        self._suppressed = reason

    # ------------------------------------------------------------------ diagnostics

    def publish_diagnostics(self) -> DiagnosticsReport:
        """Build the report, hand it to outputs.publish_diagnostics and return it."""
        with self._lock:
            now = self._now()
            reason = self._blocked_reason(now) or self._suppressed
            drops = self.drops.counts()
            new = {r: n - self._drops_reported.get(r, 0) for r, n in drops.items()
                   if r not in QUIET_DROPS and n > self._drops_reported.get(r, 0)}
            self._drops_reported = drops
            values = self._diagnostic_values(now, drops, reason)
        withheld = {r: n for r, n in new.items() if r in ERROR_DROPS}
        if reason:
            level, message = ERROR, reason
        elif withheld:
            level = ERROR
            message = (f'{sum(withheld.values())} outputs withheld since the last report: '
                       + ', '.join(f'{r} x{n}' for r, n in withheld.items()))
        elif new:
            level = WARN
            listed = ', '.join(f'{r} x{n}' for r, n in new.items())
            message = f'{sum(new.values())} inputs dropped since the last report: {listed}'
        else:
            level, message = OK, 'publishing actions'
        report = DiagnosticsReport(level, message, values)
        self.outputs.publish_diagnostics(report)
        return report

    def _diagnostic_values(self, now: int, drops: dict[str, int], reason) -> dict[str, str]:
        def age(stamp):
            return 'never' if stamp is None else f'{(now - stamp) / NS_PER_S:.3f}'

        values = {'model_id': str(self.engine.model_id), 'fusion': str(self.engine.fusion),
                  'backend': str(self.engine.backend), 'nice': str(priority.current_nice()),
                  'actions_suppressed': reason or ''}
        for stage, (p50, p99) in self.latency.percentiles().items():
            values[f'latency.{stage}.p50_ms'] = f'{p50:.2f}'
            values[f'latency.{stage}.p99_ms'] = f'{p99:.2f}'
        for name, meter in self._rates.items():
            values[f'rate.{name}_hz'] = f'{meter.rate_hz(now):.2f}'
        for c in range(self.num_cameras):
            values[f'age.image{c}_s'] = age(self.builder.last_image_stamp_ns(c))
        for arm, label in enumerate(self._pose_labels):
            pose = self.builder.newest_pose(arm)
            values[f'age.{label}_s'] = age(None if pose is None else pose.stamp_ns)
        if self.num_joints:
            joints = self.builder.newest_joints()
            values['age.joint_states_s'] = age(None if joints is None else joints.stamp_ns)
        values['age.observation_s'] = age(self._newest_obs_ns)
        busy = self._busy_since_ns
        values['inference_running_s'] = '' if busy is None else f'{(now - busy) / NS_PER_S:.3f}'
        for r, n in drops.items():
            values[f'drops.{r}'] = str(n)
        for kind, n in self.limiter.counts().items():
            values[f'clamps.{kind}'] = str(n)
        values['resets'] = str(self._resets)
        return values

    # ------------------------------------------------------------------ reset / helpers

    def reset(self, reason: str) -> None:
        """Clock jumped backwards (or the driver asks): clear history and chunks, log."""
        with self._lock:
            self._reset_locked(reason)

    def _reset_locked(self, reason: str) -> None:
        self.builder.reset()
        self.scheduler.clear()
        self.limiter.reset()
        for meter in self._rates.values():
            meter.clear()
        self._epoch += 1
        self._resets += 1
        self._last_refresh = None
        self._newest_obs_ns = None
        self.outputs.log('warn', f'reset: {reason}; pose history and action chunks cleared')

    def _now(self) -> int:
        """Read the injected clock (under the lock); a backwards jump resets everything."""
        now = int(self._clock())
        previous = self._now_ns
        self._now_ns = now
        if self.builder.check_clock(now):
            self._reset_locked(f'clock jumped back from {previous} ns to {now} ns')
        return now

    def _on_drop(self, reason: str, detail: str) -> None:
        """ObservationBuilder drop hook (called under the lock): remember and log, throttled."""
        if reason in QUIET_DROPS:
            return
        self._last_drop, self._last_drop_ns = reason, self._now_ns
        self._log(reason, 'warn', f'dropped ({reason}): {detail}', self._now_ns)

    def _drop_locked(self, reason: str, level: str, text: str, now: int) -> None:
        self.drops.add(reason)
        self._last_drop, self._last_drop_ns = reason, now
        self._log(reason, level, text, now)

    def _count_and_log(self, reason: str, level: str, text: str) -> None:
        with self._lock:
            self._drop_locked(reason, level, text, self._now())
