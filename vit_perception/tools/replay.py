"""`vit-perception replay BAG`: evaluate a checkpoint offline on a ROS 2 bag.

The bag drives the same PerceptionCore as the live node, with the bag's clock (the log time of
each message, i.e. use_sim_time semantics) and threaded=False:

    for each message, in log-time order:
        control ticks (and diagnostics) due before it: clock = boundary, core.tick()
        clock = log time, the input's core callback (drivers/routes.py: on_image / on_pose /
            on_joints) or core.on_bad_message, core.run_pending()

Inference runs synchronously and takes no bag time, so the output depends only on the bag and the
checkpoint: the same inputs give a byte-identical output bag on the same machine. Nothing in that
path reads the wall clock; wall time is measured around it only for the latency/throughput report.

Bounded work per message: a gap in the bag clock longer than the node could act across
(`sync.max_observation_age + sync.max_future` after the last message) is skipped instead of
ticked through: the ticks in it could publish nothing (every observation is stale by then). Gaps
are counted in the report (`clock_gaps`). SIGINT/SIGTERM are checked between messages and every
`SIGNAL_CHECK_TICKS` ticks. The output bag is made durable every 200 messages (BagOutput): after
a kill -9 it holds every message up to the last checkpoint.

The output bag holds the embeddings, chunks and per-tick actions (and twists, when configured):
the live nodes' messages (drivers/outputs.MessageOutputs), byte for byte where stamps allow;
`--report DIR` adds metrics.json, plots and report.md (tools/report.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ACTION_TOPIC = '/expert/action'
SIGNAL_CHECK_TICKS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bag', help='rosbag2 directory, .mcap or .db3 file')
    parser.add_argument('--model', default=None, help='checkpoint directory (same as --set '
                        'engine.model=DIR; default: the shipped checkpoint)')
    parser.add_argument('--config', default=None,
                        help='YAML parameters file (config/default.yaml layout): topics, sync, '
                        'control rate, safety limits')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY=VALUE', help='override one parameter, e.g. '
                        '--set control.control_rate_hz=100 (repeatable)')
    parser.add_argument('--out', default=None, help='output bag directory (default: '
                        '<bag name>_replay); a name ending in .db3 selects sqlite3 storage')
    parser.add_argument('--storage', choices=['mcap', 'sqlite3'], default='mcap',
                        help='output bag storage (default mcap)')
    parser.add_argument('--report', default=None, metavar='DIR',
                        help='write metrics.json, plots and report.md into DIR')
    parser.add_argument('--action-topic', default=DEFAULT_ACTION_TOPIC,
                        help='recorded action to score against (vit_perception/msg/ActionChunk, '
                        f'geometry_msgs/msg/TwistStamped or PoseStamped; default '
                        f'{DEFAULT_ACTION_TOPIC}); skipped when the bag lacks it')
    parser.add_argument('--diagnostics', action='store_true',
                        help='also write /diagnostics to the output bag (their latency values '
                        'are wall-clock, so the bag is no longer byte-reproducible)')
    parser.add_argument('--profile', action='store_true',
                        help='print where the wall time went: engine vs bag I/O + sync + writing')


def run(args: argparse.Namespace) -> int:
    from vit_perception.config import load_node_config
    from vit_perception.core.engine import Engine
    from vit_perception.errors import ConfigError

    overrides = list(args.overrides)
    if args.model is not None:
        overrides.append(f'engine.model={args.model}')
    config = load_node_config(args.config, overrides)
    if args.report and Path(args.report).exists() and not Path(args.report).is_dir():
        raise ConfigError(f'--report {args.report}: is a file; expected a directory')
    bag_path = Path(args.bag)
    out = Path(args.out) if args.out else Path(f'{bag_path.name.split(".")[0]}_replay')
    from vit_perception.drivers.bag import BagInput  # check the bag before loading the model

    BagInput(bag_path, config).close()
    print(f'replay: loading {config.engine.model or "the shipped checkpoint"} ...',
          file=sys.stderr)
    engine = Engine.from_checkpoint(config.engine.model, device=config.engine.device,
                                    dtype=config.engine.dtype, compile=config.engine.compile,
                                    warmup_iters=config.engine.warmup_iters)
    result = replay(bag_path, config, engine, out, storage=args.storage,
                    action_topic=args.action_topic, report=args.report,
                    diagnostics=args.diagnostics, progress=True,
                    model_name=config.engine.model or 'shipped checkpoint')
    print(summary_text(result), file=sys.stderr)
    if args.profile:
        print(profile_text(result.metrics), file=sys.stderr)
    if result.error is not None:
        raise result.error
    return 0


@dataclass
class ReplayResult:
    out: Path  # output bag directory
    report: Path | None  # report.md, when --report
    metrics: dict
    status: str  # 'complete' | 'interrupted' | 'error: ...'
    error: Exception | None = None  # BagError that ended the run early (outputs written)


class BagClock:
    """The replay clock: the time the driver last set (bag log time / tick boundary)."""

    def __init__(self):
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


class TimedEngine:
    """Engine proxy: wall time of infer/refresh for the throughput report; pose skew per obs."""

    def __init__(self, engine, record, on_infer=None):
        self._engine = engine
        self._record = record
        self._on_infer = on_infer
        self.seconds = {'infer': 0.0, 'refresh': 0.0}
        self.calls = {'infer': 0, 'refresh': 0}

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def infer(self, obs):
        self._record.pose_skews.append(int(obs.pose_skew_ns))
        start = time.perf_counter()
        try:
            return self._engine.infer(obs)
        finally:
            self.seconds['infer'] += time.perf_counter() - start
            self.calls['infer'] += 1

    def refresh(self, poses, proprio=None, observation_stamp_ns=None):
        start = time.perf_counter()
        try:
            return self._engine.refresh(poses, proprio, observation_stamp_ns)
        finally:
            self.seconds['refresh'] += time.perf_counter() - start
            self.calls['refresh'] += 1


class BagPublisher:
    """A publisher (drivers/outputs.PublisherFactory) writing CDR bytes into the output bag at
    the replay clock; `enabled=False` declares nothing and drops what it is given."""

    def __init__(self, bag, topic: str, msgtype: str, qos: tuple[str, int], clock: BagClock,
                 timer: dict, enabled: bool = True):
        self._bag, self._topic, self._clock, self._timer = bag, topic, clock, timer
        self._enabled = enabled
        if enabled:
            bag.add_topic(topic, msgtype, qos)

    def publish_cdr(self, cdr) -> None:
        if self._enabled:
            start = time.perf_counter()
            self._bag.write(self._topic, self._clock.now_ns, cdr)
            self._timer['write_s'] += time.perf_counter() - start


class ReplayOutputs:
    """core Outputs: records what the metrics need, then hands over to the live nodes'
    MessageOutputs (drivers/outputs.py) on BagPublishers, so replay writes the bytes a live
    backend publishes (frame_id, hardware_id, twist; stamps from the bag clock)."""

    def __init__(self, bag, config, engine, clock: BagClock, record, diagnostics: bool,
                 echo=None):
        from vit_perception.drivers.outputs import MessageOutputs

        self._record, self._clock, self._echo = record, clock, echo
        self._timer = {'write_s': 0.0}

        def make_publisher(topic: str, msgtype: str, reliability: str, depth: int):
            enabled = diagnostics or topic != config.topics.diagnostics
            return BagPublisher(bag, topic, msgtype, (reliability, depth), clock, self._timer,
                                enabled)

        self._messages = MessageOutputs(make_publisher, config, engine, clock)

    @property
    def write_s(self) -> float:
        """Wall seconds spent writing the output bag."""
        return self._timer['write_s']

    def publish_embedding(self, result, frame_id: str) -> None:
        self._messages.publish_embedding(result, frame_id)

    def publish_chunk(self, result) -> None:
        import numpy as np

        chunk = np.array(result.chunk, dtype=np.float32)
        self._record.chunks.append((int(result.observation_stamp_ns), self._clock.now_ns, chunk))
        self._record.timings.append(dict(result.timings_ms))
        self._messages.publish_chunk(result)

    def publish_action(self, stamp_ns: int, action, observation_stamp_ns: int) -> None:
        import numpy as np

        self._record.tick_times.append(int(stamp_ns))
        self._record.tick_actions.append(np.array(action, dtype=np.float64))
        self._record.tick_obs_stamps.append(int(observation_stamp_ns))
        self._messages.publish_action(stamp_ns, action, observation_stamp_ns)

    def publish_diagnostics(self, report) -> None:
        level = {0: 'ok', 1: 'warn', 2: 'error'}.get(report.level, str(report.level))
        self._record.diagnostics[level] = self._record.diagnostics.get(level, 0) + 1
        self._messages.publish_diagnostics(report)

    def log(self, level: str, text: str) -> None:
        line = f'[{level}] t={self._clock.now_ns / 1e9:.3f} s: {text}'
        self._record.logs.append(line)
        if self._echo is not None and level in ('warn', 'error'):
            self._echo(f'replay: {line}')


def replay(bag_path, config, engine, out, *, storage: str = 'mcap',
           action_topic: str = DEFAULT_ACTION_TOPIC, report=None, diagnostics: bool = False,
           progress: bool = False, model_name: str = '') -> ReplayResult:
    """Run the core over the bag, write the output bag (+ report); see the module docstring.

    Ctrl-C / SIGTERM (or KeyboardInterrupt from anywhere inside) stop the run; what was computed
    is written and the bag closed (status 'interrupted'). A bag that turns out corrupt part-way
    ends the run the same way with status 'error: ...' and `error` set.
    """
    from vit_perception.core.node import PerceptionCore
    from vit_perception.drivers.bag import BagInput, BagOutput
    from vit_perception.errors import BagError, ConfigError
    from vit_perception.tools import report as reporting

    cameras = list(engine.config.cameras)
    if len(cameras) != len(config.topics.cameras):
        raise ConfigError(f'topics.cameras has {len(config.topics.cameras)} topics but the model '
                          f'expects {len(cameras)} cameras ({", ".join(cameras)})')
    bag = BagInput(bag_path, config, [action_topic] if action_topic else [],
                   require_extra=False, proprio_names=engine.config.pose.proprio_names)
    record = reporting.ReplayRecord(action_names=list(engine.action_names), dt=float(engine.dt),
                                    horizon=int(engine.horizon), bag=str(bag_path),
                                    model=model_name or str(engine.model_id),
                                    fusion=str(engine.fusion))
    action_type = bag.topics.get(action_topic) if action_topic else None
    if action_type is None:
        record.recorded_source = f'topic {action_topic} not in the bag'
    elif action_type not in reporting.ACTION_TYPES:
        record.recorded_source = (f'topic {action_topic} has type {action_type}; expected one '
                                  f'of {", ".join(reporting.ACTION_TYPES)}')
    else:
        record.recorded_source = f'{action_topic} ({action_type})'
    bar = _progress_bar(bag.message_count) if progress else None
    echo = (bar.write if bar is not None else _stderr) if progress else None
    clock = BagClock()
    timed = TimedEngine(engine, record)
    error = None
    wall = {'read': 0.0}
    output = None
    try:
        output = BagOutput(out, storage)
        outputs = ReplayOutputs(output, config, engine, clock, record, diagnostics, echo)
        core = PerceptionCore(config, timed, outputs, clock=clock, threaded=False)
        start = time.perf_counter()
        try:
            with _stop_on_signals() as stop:
                loop = _Loop(config, core, clock, record, outputs, action_topic, action_type,
                             stop)
                events = bag.events()
                while not stop.is_set():
                    t0 = time.perf_counter()
                    event = next(events, None)
                    wall['read'] += time.perf_counter() - t0
                    if event is None:
                        loop.finish()
                        break
                    loop.handle(event)
                    if bar is not None:
                        bar.update(1)
                if stop.is_set():
                    record.status = 'interrupted'
        except KeyboardInterrupt:
            record.status = 'interrupted'
        except BagError as err:
            record.status = f'error: {err}'
            error = err
        finally:
            wall['total'] = time.perf_counter() - start
            record.drops = core.drops.counts()
    finally:
        if bar is not None:
            bar.close()
        if output is not None:
            output.close()
        bag.close()
    wall['engine'] = timed.seconds['infer'] + timed.seconds['refresh']
    wall['engine_infer'] = timed.seconds['infer']
    wall['engine_refresh'] = timed.seconds['refresh']
    wall['write'] = outputs.write_s
    wall['core_and_conversions'] = max(
        wall['total'] - wall['read'] - wall['engine'] - wall['write'], 0.0)
    record.wall_s = wall
    record.engine_calls = dict(timed.calls)
    metrics = reporting.compute_metrics(record)
    metrics['output_bag'] = str(output.path)
    metrics['output_messages'] = output.message_count
    report_md = reporting.write_report(report, record, metrics) if report else None
    return ReplayResult(out=output.path, report=report_md, metrics=metrics,
                        status=record.status, error=error)


class _Loop:
    """Feeds one bag event at a time to the core, firing the timers due before it."""

    def __init__(self, config, core, clock: BagClock, record, outputs, action_topic, action_type,
                 stop: threading.Event | None = None):
        from vit_perception.core.types import NS_PER_S
        from vit_perception.drivers.routes import CORE_INPUTS, deliver
        from vit_perception.tools import report as reporting

        self.core = core
        self.stop = stop or threading.Event()
        # After this long without a message every tick is suppressed (the newest observation is
        # stale), so a longer gap is skipped rather than ticked through.
        self.period_ns = max(int(round(NS_PER_S / config.control.control_rate_hz)), 1)
        self.idle_ns = int((config.sync.max_observation_age + config.sync.max_future)
                           * NS_PER_S) + 2 * self.period_ns
        self.clock = clock
        self.record = record
        self.diag_ns = max(int(round(config.diagnostics_period * NS_PER_S)), 1)
        self.next_tick: int | None = None
        self.next_diag: int | None = None
        self.action_topic = action_topic
        self.action_type = action_type if action_type in reporting.ACTION_TYPES else None
        self._recorded_action = reporting.recorded_action
        self._core_inputs, self._deliver = CORE_INPUTS, deliver
        self._names = record.action_names

    def handle(self, event) -> None:
        t = event.log_time_ns
        record = self.record
        if record.first_ns is None:
            record.first_ns = t
            self.next_tick = -(-t // self.period_ns) * self.period_ns  # first boundary >= t
            self.next_diag = t + self.diag_ns
        elif t < self.clock.now_ns:  # log time went back (split bag): the core resets itself
            self.next_tick = -(-t // self.period_ns) * self.period_ns
            self.next_diag = t + self.diag_ns
        elif t - self.clock.now_ns > self.idle_ns:
            self._skip_gap(t)
        self._timers_before(t)
        self.clock.now_ns = t
        record.last_ns = t
        kind = event.kind
        record.events[kind] = record.events.get(kind, 0) + 1
        if kind == 'image':
            record.image_delays.append((t, t - event.value.stamp_ns))
        if kind in self._core_inputs:
            self._deliver(self.core, kind, event.value)
        elif kind == 'bad':
            reason, detail = event.value
            self.core.on_bad_message(event.topic, reason, detail)
        elif kind == 'extra' and event.topic == self.action_topic and self.action_type:
            try:
                item = self._recorded_action(event.value, self.action_type, self._names, t)
            except (AttributeError, TypeError, ValueError):
                item = None
            if item is None:
                record.events['bad_recorded_action'] = (
                    record.events.get('bad_recorded_action', 0) + 1)
            else:
                record.recorded.append(item)
        self.core.run_pending()

    def finish(self) -> None:
        """Fire the timers up to and including the last message time."""
        if self.record.last_ns is not None:
            self._timers_before(self.record.last_ns + 1)

    def _skip_gap(self, t: int) -> None:
        """Tick up to `idle_ns` past the last message, then jump the timers to t (counted)."""
        start = self.clock.now_ns
        self._timers_before(start + self.idle_ns)
        if self.stop.is_set():
            return
        skipped = max(-(-(t - self.next_tick) // self.period_ns), 0)  # boundaries < t
        self.next_tick += skipped * self.period_ns
        if self.next_diag < t:
            self.next_diag += -(-(t - self.next_diag) // self.diag_ns) * self.diag_ns
        self.record.gaps.append((start, t, int(skipped)))
        self.core.outputs.log('warn', f'bag clock gap of {(t - start) / 1e9:.3f} s skipped '
                              f'({skipped} control ticks without input not run)')

    def _timers_before(self, t: int) -> None:
        """Control ticks and diagnostics at boundaries < t, in time order (ticks first)."""
        fired = 0
        while self.next_tick < t or self.next_diag < t:
            fired += 1
            if fired % SIGNAL_CHECK_TICKS == 0 and self.stop.is_set():
                return
            if self.next_tick <= self.next_diag:
                self.clock.now_ns = self.next_tick
                self.next_tick += self.period_ns
                self.record.ticks += 1
                self.core.tick()
                self.core.run_pending()  # a tick may resolve an observation waiting for a pose
            else:
                self.clock.now_ns = self.next_diag
                self.next_diag += self.diag_ns
                self.core.publish_diagnostics()


@contextmanager
def _stop_on_signals():
    """SIGINT/SIGTERM set an event (the loop stops between messages, never mid-write); a second
    SIGINT raises KeyboardInterrupt. Only in the main thread; elsewhere the event never fires."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit='msg', desc='replay', file=sys.stderr, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def summary_text(result: ReplayResult) -> str:
    m = result.metrics
    counts, thr, actions = m['counts'], m['throughput'], m['actions']
    rtf = thr['real_time_factor']
    lines = [f'replay: {result.status}: {counts["inferences"]} inferences, {counts["actions"]} '
             f'actions over {m["bag_duration_s"]:.2f} s of bag'
             + (f' ({rtf:.1f}x real time)' if rtf else '')
             + f' -> {result.out} ({m.get("output_messages", 0)} messages written)']
    gaps = m.get('clock_gaps') or {}
    if gaps.get('count'):
        lines.append(f'replay: {gaps["count"]} gaps in the bag clock skipped (longest '
                     f'{gaps["longest_s"]:.1f} s, {gaps["skipped_ticks"]} idle control ticks '
                     'not run)')
    if actions.get('available') and actions.get('tick'):
        base = actions.get('baseline') or {}
        lines.append(f'replay: action MAE {actions["tick"]["mae"]:.4f} (constant baseline '
                     f'{base.get("mae") or float("nan"):.4f}) vs {actions["source"]}')
    elif not actions.get('available'):
        lines.append(f'replay: no action metrics: {actions.get("reason")}')
    drops = ', '.join(f'{k} {v}' for k, v in m['drops'].items())
    if drops:
        lines.append(f'replay: drops: {drops}')
    if result.report is not None:
        lines.append(f'replay: report {result.report}')
    return '\n'.join(lines)


def profile_text(metrics: dict) -> str:
    wall = metrics['throughput']['wall_s']
    thr = metrics['throughput']
    total = wall.get('total') or float('nan')
    parts = ', '.join(f'{name} {wall[name]:.3f} s ({wall[name] / total:.1%})'
                      for name in ('engine', 'read', 'core_and_conversions', 'write'))
    ratio = thr['replay_vs_engine_only'] or 0.0
    engine_rate = thr['engine_only_inferences_per_s'] or 0.0
    return (f'replay profile: wall {total:.3f} s = {parts}; replay throughput '
            f'{thr["inferences_per_s"] or 0:.1f} inferences/s = {ratio:.1%} of engine-only '
            f'({engine_rate:.1f}/s)')
