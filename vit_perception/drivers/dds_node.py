"""The perception node over plain DDS: DdsTransport (ROS 2 wire conventions) <-> PerceptionCore.

Thin wiring, same semantics as the rclpy node: the input routes (drivers/routes.py: images, poses,
joint states) feed the core; the core's
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
from vit_perception.core.types import NS_PER_S
from vit_perception.drivers import dds, ros_types
from vit_perception.drivers.outputs import MessageOutputs
from vit_perception.drivers.routes import RouteInput, input_routes, received_values
from vit_perception.errors import ConfigError

_log = logging.getLogger('vit_perception.dds_node')

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
                          'backend (TF); the DDS backend reads the poses from topics.poses')
    if core_factory is None:
        from vit_perception.core.node import PerceptionCore as core_factory
    if not dds.tune_allocator():
        _log.info('allocator not tuned (not glibc): large messages pay mmap page faults')
    transport = dds.DdsTransport(config.domain_id)
    subscriptions: list[dds.DdsSubscription] = []
    timer = core = None
    try:
        transport.announce_node(NODE_NAME)  # `ros2 node list` shows /vit_perception
        time_source = SimTime() if use_sim_time else WallTime()
        if use_sim_time:
            subscriptions.append(transport.subscribe(
                CLOCK_TOPIC, ros_types.CLOCK, CLOCK_QOS, time_source.on_clock))

        inputs: list[RouteInput] = []

        def driver_values() -> dict[str, str]:
            values = {'dds.domain_id': str(transport.domain_id), **received_values(inputs)}
            if timer is not None:
                p50, p99 = timer.lateness_ms()
                values['control.tick_late_p50_ms'] = f'{p50:.3f}'
                values['control.tick_late_p99_ms'] = f'{p99:.3f}'
                values['control.tick_overruns'] = str(timer.overruns)
            return values

        def make_publisher(topic: str, msgtype: str, reliability: str, depth: int):
            return transport.publisher(topic, msgtype, dds.qos_profile(reliability, depth))

        outputs = MessageOutputs(make_publisher, config, engine, time_source.now,
                                 logger=_log, extra_values=driver_values)
        core = core_factory(config, engine, outputs, clock=time_source.now, threaded=True)
        core.start()
        # A test's core_factory may return a core without joints.
        for route in input_routes(config, getattr(core, 'proprio_names', [])):
            inputs.append(RouteInput(route, core))
            subscriptions.append(transport.subscribe(
                route.topic, route.msgtype, dds.qos_profile(route.reliability, route.depth),
                inputs[-1].on_cdr, on_error=_errors_to(core, route.topic), raw=True))
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


def _errors_to(core, topic: str):
    """A subscription's transport errors: QoS mismatches logged, the rest counted by the core."""
    def on_error(reason: str, detail: str) -> None:
        if reason == dds.INCOMPATIBLE_QOS:  # a graph problem, not a bad message
            _log.warning('%s', detail)
        else:
            core.on_bad_message(topic, reason, detail)
    return on_error
