"""The perception node over plain DDS: DdsTransport (ROS 2 wire conventions) <-> PerceptionCore.

Thin wiring, same semantics as the rclpy node: image/pose subscriptions feed the core; the core's
results go out as vit_perception/Embedding, /ActionChunk (per observation), /ActionChunk with
horizon 1 (the action, every control tick) and diagnostic_msgs/DiagnosticArray. A dedicated
thread runs the control timer on absolute deadlines (no drift); diagnostics run on the calling
thread. `run_dds_node` returns after `stop_event` is set, with everything closed.

Clock: wall time (time.time_ns) by default; with use_sim_time the node follows
rosgraph_msgs/Clock on /clock (0 until the first message), and the control timer ticks on sim
time, as ROS timers do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from vit_perception.config import NODE_NAME, NodeConfig
from vit_perception.core.types import NS_PER_S, ActionChunkResult
from vit_perception.drivers import dds, ros_types
from vit_perception.errors import ConfigError

_log = logging.getLogger('vit_perception.dds_node')
_LEVELS = {'info': logging.INFO, 'warn': logging.WARNING, 'error': logging.ERROR}

CLOCK_TOPIC = '/clock'
CLOCK_QOS = dds.qos_profile('best_effort', 1)  # rclcpp/rclpy ClockQoS


# ------------------------------------------------------------------------------------------
# Time sources for the control timer
# ------------------------------------------------------------------------------------------

class WallTime:
    """Node clock = time.time_ns(); the timer schedules on time.perf_counter_ns()."""

    def now(self) -> int:
        return time.time_ns()

    def monotonic_ns(self) -> int:
        return time.perf_counter_ns()

    def sleep_until(self, deadline_ns: int, stop: threading.Event) -> bool:
        """Sleep until perf_counter_ns() >= deadline_ns; False if `stop` was set meanwhile."""
        while True:
            remaining = deadline_ns - time.perf_counter_ns()
            if remaining <= 0:
                return not stop.is_set()
            if remaining > 2_000_000:  # coarse, interruptible wait up to 1 ms before
                if stop.wait((remaining - 1_000_000) / NS_PER_S):
                    return False
            else:
                time.sleep(remaining / NS_PER_S)  # fine: nanosleep, ~0.1 ms late at worst


class SimTime:
    """Node clock = the latest rosgraph_msgs/Clock (0 before the first); timer on sim time."""

    def __init__(self):
        self._now = 0
        self._jumps = 0
        self._cond = threading.Condition()

    def on_clock(self, msg) -> None:
        stamp = ros_types.clock_from_msg(msg)
        with self._cond:
            if stamp < self._now:
                self._jumps += 1
            self._now = stamp
            self._cond.notify_all()

    def now(self) -> int:
        return self._now

    def monotonic_ns(self) -> int:
        return self._now

    def sleep_until(self, deadline_ns: int, stop: threading.Event) -> bool:
        """Wait until sim time >= deadline_ns or it jumps back; False if `stop` was set."""
        with self._cond:
            jumps = self._jumps
            while self._now < deadline_ns and self._jumps == jumps:
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
        return not stop.is_set()


class ControlTimer:
    """Calls `tick()` every `period_ns` on absolute deadlines of `source` (no drift).

    A tick that overruns skips the missed deadlines (counted) instead of bursting; a backwards
    jump of the source (sim time reset) restarts the schedule from the new time.
    """

    def __init__(self, period_ns: int, tick: Callable[[], object], source,
                 stop: threading.Event, on_error: Callable[[Exception], None] | None = None):
        self.period_ns = int(period_ns)
        self.ticks = 0
        self.overruns = 0  # deadlines skipped because a tick ran past them
        self._lateness_ns: deque[int] = deque(maxlen=1000)
        self._tick = tick
        self._source = source
        self._stop = stop
        self._on_error = on_error or (lambda err: _log.error('control tick failed: %s', err))
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name='vit_perception_control',
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        period, source = self.period_ns, self._source
        deadline = source.monotonic_ns() + period
        while source.sleep_until(deadline, self._stop):
            now = source.monotonic_ns()
            if now < deadline:  # woken early: the source jumped back, restart the schedule
                deadline = now + period
                continue
            self._lateness_ns.append(now - deadline)
            try:
                self._tick()
            except Exception as err:  # keep ticking; the error is reported
                self._on_error(err)
            self.ticks += 1
            deadline += period
            now = source.monotonic_ns()
            if now >= deadline:  # overran: keep the phase, skip what was missed
                missed = (now - deadline) // period + 1
                self.overruns += missed
                deadline += missed * period

    def lateness_ms(self) -> tuple[float, float]:
        """(p50, p99) of how late ticks started after their deadline, in ms."""
        samples = list(self._lateness_ns)
        if not samples:
            return 0.0, 0.0
        p50, p99 = np.percentile(np.asarray(samples, dtype=np.float64), [50, 99])
        return p50 / 1e6, p99 / 1e6


# ------------------------------------------------------------------------------------------
# Outputs: core results -> DDS messages
# ------------------------------------------------------------------------------------------

class DdsOutputs:
    """PerceptionCore Outputs publishing ROS 2 messages through a DdsTransport."""

    def __init__(self, transport: dds.DdsTransport, config: NodeConfig, model_id: str,
                 action_names: list[str], dt: float, clock: Callable[[], int],
                 extra_values: Callable[[], dict[str, str]] | None = None):
        topics, qos = config.topics, config.qos
        out_qos = dds.qos_profile(qos.output_reliability, qos.output_depth)
        self.model_id = model_id
        self.action_names = list(action_names)
        self.dt = float(dt)
        self.frame_id = config.sync.pose_frame_id
        self._clock = clock
        self._extra_values = extra_values
        self._embedding = transport.publisher(topics.embedding, ros_types.EMBEDDING, out_qos)
        self._chunk = transport.publisher(topics.action_chunk, ros_types.ACTION_CHUNK, out_qos)
        self._action = transport.publisher(topics.action, ros_types.ACTION_CHUNK, out_qos)
        self._diagnostics = transport.publisher(topics.diagnostics, ros_types.DIAGNOSTIC_ARRAY,
                                                dds.DEFAULT)

    def publish_embedding(self, result: ActionChunkResult, frame_id: str) -> None:
        self._embedding.publish(ros_types.embedding_msg(result, self.model_id, frame_id))

    def publish_chunk(self, result: ActionChunkResult) -> None:
        stamp = result.observation_stamp_ns
        self._chunk.publish(ros_types.action_chunk_msg(
            stamp, self.action_names, self.dt, result.chunk, stamp, self.frame_id))

    def publish_action(self, stamp_ns: int, action: np.ndarray,
                       observation_stamp_ns: int) -> None:
        self._action.publish(ros_types.action_chunk_msg(
            stamp_ns, self.action_names, self.dt, np.reshape(action, (1, -1)),
            observation_stamp_ns, self.frame_id))

    def publish_diagnostics(self, report) -> None:
        if self._extra_values is not None:
            report.values.update(self._extra_values())
        self._diagnostics.publish(ros_types.diagnostics_msg(
            report, self._clock(), f'{NODE_NAME}: perception', hardware_id=NODE_NAME))

    def log(self, level: str, text: str) -> None:
        _log.log(_LEVELS.get(level, logging.INFO), text)


# ------------------------------------------------------------------------------------------
# The node
# ------------------------------------------------------------------------------------------

def run_dds_node(config: NodeConfig, engine, stop_event: threading.Event, *,
                 use_sim_time: bool = False, core_factory=None) -> int:
    """Run the perception node on DDS until `stop_event` is set; returns 0.

    `engine` provides model_id, action_names, dt (see core/engine.py); `core_factory`
    (default PerceptionCore) is there for tests. Raises ConfigError on a bad domain id or
    topic name before anything runs.
    """
    if config.pose_input.source != 'topic':
        raise ConfigError(f'pose_input.source={config.pose_input.source!r} needs the rclpy '
                          'backend (TF); the DDS backend reads the pose from topics.pose')
    if config.topics.twist:
        raise ConfigError('topics.twist (TwistStamped output) needs the rclpy backend; the DDS '
                          'backend publishes actions on topics.action only')
    if core_factory is None:
        from vit_perception.core.node import PerceptionCore as core_factory
    if not dds.tune_allocator():
        _log.info('allocator not tuned (not glibc): large messages pay mmap page faults')
    transport = dds.DdsTransport(config.domain_id)
    subscriptions: list[dds.DdsSubscription] = []
    timer = core = None
    try:
        time_source = SimTime() if use_sim_time else WallTime()
        if use_sim_time:
            subscriptions.append(transport.subscribe(
                CLOCK_TOPIC, ros_types.CLOCK, CLOCK_QOS, time_source.on_clock))

        def driver_values() -> dict[str, str]:
            values = {'dds.domain_id': str(transport.domain_id)}
            for sub in subscriptions:
                values[f'dds.received.{sub.topic}'] = str(sub.received)
                if sub.errors:
                    values[f'dds.errors.{sub.topic}'] = str(sub.errors)
            if timer is not None:
                p50, p99 = timer.lateness_ms()
                values['control.tick_late_p50_ms'] = f'{p50:.3f}'
                values['control.tick_late_p99_ms'] = f'{p99:.3f}'
                values['control.tick_overruns'] = str(timer.overruns)
            return values

        outputs = DdsOutputs(transport, config, engine.model_id, engine.action_names,
                             engine.dt, time_source.now, driver_values)
        core = core_factory(config, engine, outputs, clock=time_source.now, threaded=True)
        core.start()
        subscriptions.extend(_subscribe_inputs(transport, config, core))
        period_ns = round(NS_PER_S / config.control.control_rate_hz)
        timer = ControlTimer(period_ns, core.tick, time_source, stop_event,
                             on_error=lambda err: outputs.log(
                                 'error', f'control tick failed: {type(err).__name__}: {err}'))
        timer.start()
        _log.info('DDS node running on domain %d: inputs %s, outputs %s, %s, %s, %s',
                  transport.domain_id, ', '.join(s.topic for s in subscriptions),
                  config.topics.embedding, config.topics.action_chunk, config.topics.action,
                  config.topics.diagnostics)
        while not stop_event.wait(config.diagnostics_period):
            try:
                core.publish_diagnostics()
            except Exception as err:
                outputs.log('error', f'diagnostics failed: {type(err).__name__}: {err}')
    finally:
        stop_event.set()
        transport.close_subscriptions()  # no more input
        if timer is not None:
            timer.join()
        if core is not None:
            core.stop()  # lets an inference in flight publish its result
        transport.close()
    return 0


def _subscribe_inputs(transport: dds.DdsTransport, config: NodeConfig,
                      core) -> list[dds.DdsSubscription]:
    """Camera and pose subscriptions; conversion failures go to core.on_bad_message."""
    topics, qos = config.topics, config.qos
    image_qos = dds.qos_profile(qos.image_reliability, qos.image_depth)
    pose_qos = dds.qos_profile(qos.pose_reliability, qos.pose_depth)
    subs = []

    def errors_to_core(topic: str):
        def on_error(reason: str, detail: str) -> None:
            if reason == dds.INCOMPATIBLE_QOS:  # a graph problem, not a bad message
                _log.warning('%s', detail)
            else:
                core.on_bad_message(topic, reason, detail)
        return on_error

    for camera, (topic, kind) in enumerate(zip(topics.cameras, topics.camera_transports)):
        if kind == 'compressed':
            msgtype, convert = ros_types.COMPRESSED_IMAGE, ros_types.compressed_from_msg
        else:
            msgtype, convert = ros_types.IMAGE, ros_types.image_from_msg
        subs.append(transport.subscribe(
            topic, msgtype, image_qos, _converting(convert, core.on_image, camera, topic, core,
                                                   'bad_image'),
            on_error=errors_to_core(topic)))
    subs.append(transport.subscribe(
        topics.pose, ros_types.POSE_STAMPED, pose_qos,
        _converting(ros_types.pose_from_msg, core.on_pose, None, topics.pose, core, 'bad_pose'),
        on_error=errors_to_core(topics.pose)))
    return subs


def _converting(convert, deliver, camera: int | None, topic: str, core, reason: str):
    """Callback: message -> core type -> deliver; a conversion error -> on_bad_message."""
    def callback(msg) -> None:
        try:
            value = convert(msg) if camera is None else convert(msg, camera)
        except Exception as err:
            core.on_bad_message(topic, reason, f'{type(err).__name__}: {err}')
            return
        deliver(value)
    return callback
