"""The simulator as a ROS 2 process: publishes camera images, the end-effector pose and /clock,
executes the actions a policy publishes, reports episodes.

Lock-step (default, deterministic on any CPU): after publishing the observation at sim time t,
the sim waits (up to `action_timeout` wall seconds) for an action whose observation_stamp >= t,
then steps. ROS timers on sim time fire only when /clock passes their next deadline, so a node
ticked once at t before its inference of the observation at t finished. When the node's
action_chunk for that observation arrives, the sim therefore nudges /clock to t + dt/2 - 1 ms:
the node's timer fires (it needs a control period < dt/2, e.g. 50 Hz for dt 0.1 s) and the
action it publishes is the one for t (every chunk is still at the same step index, since ACT
ensembling rounds (now - stamp) / dt). Physics never moves while the sim waits, and /clock is
re-published so a node ticking on /clock messages hears it. No fresh action in time:
the arm holds (zero velocity) and the step counts as missed. After `resend_after` seconds without
an answer the observation at t is published once more (a best-effort image may be lost, or the
node may have judged it 'from the future' if its /clock arrived late); the node drops the copy
as a duplicate when it had the first one, so answers stay the same.

Free-running (lockstep=False): the sim is paced by the wall clock and executes the newest action
at most `max_action_age` old.

With expert=True it drives itself with the scripted expert (no node needed) and also publishes
/expert/action. Sim time starts at 1 s and never goes back; episodes are `episode_gap` apart, so
action chunks of one episode never leak into the next.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vit_perception.errors import ConfigError, SimError
from vit_perception.tools.sim.expert import ReachExpert
from vit_perception.tools.sim.record import (
    ACTION_CHUNK,
    CLOCK,
    IMAGE,
    START_NS,
    BagWriter,
    Emit,
    EpisodeStream,
    EpisodeSummary,
    SimTopics,
    episode_info,
)
from vit_perception.tools.sim.scene import ACTION_NAMES, NS_PER_S, ReachEnv, SimState


@dataclass(frozen=True)
class ReceivedAction:
    """One action from the policy, mapped onto the sim's action names (missing names are 0)."""

    stamp_ns: int  # header stamp: the node's clock when it published
    observation_stamp_ns: int  # the observation it was conditioned on
    action: np.ndarray  # (A,) float64, the inbox's names
    msg: object  # the ActionChunk message as received (recorded as is)


class ActionInbox:
    """Thread-safe slot for the policy's actions: the subscriber puts, the sim loop waits."""

    def __init__(self, log: Callable[[str], None] | None = None,
                 names: Sequence[str] = ACTION_NAMES):
        self.names = tuple(names)
        self._cond = threading.Condition()
        self._newest: ReceivedAction | None = None  # newest by observation stamp
        self._last: ReceivedAction | None = None  # last to arrive
        self._chunk_ns: int | None = None  # newest observation stamp of an action_chunk
        self._log = log
        self.received = 0
        self.rejected: dict[str, int] = {}

    def put(self, msg) -> None:
        """ActionChunk callback: convert and store, or count and log why it was rejected."""
        from vit_perception.drivers import ros_types

        try:
            data = ros_types.chunk_from_msg(msg)
        except ConfigError as err:
            self._reject('malformed', str(err))
            return
        known = [name for name in self.names if name in data.names]
        if not known:
            self._reject('no_known_names', f'action names {data.names}: expected some of '
                                           f'{list(self.names)}')
            return
        action = np.zeros(len(self.names))
        for j, name in enumerate(self.names):
            if name in data.names:
                action[j] = data.chunk[0, data.names.index(name)]
        if not np.all(np.isfinite(action)):
            self._reject('nonfinite', f'action at {data.stamp_ns} ns has NaN/inf')
            return
        received = ReceivedAction(data.stamp_ns, data.observation_stamp_ns, action, msg)
        with self._cond:
            self.received += 1
            self._last = received
            if (self._newest is None
                    or received.observation_stamp_ns >= self._newest.observation_stamp_ns):
                self._newest = received
            self._cond.notify_all()

    def put_chunk(self, msg) -> None:
        """action_chunk callback: remember that the node has inferred this observation."""
        from vit_perception.drivers import ros_types

        stamp = ros_types.stamp_ns(msg.observation_stamp)
        with self._cond:
            if self._chunk_ns is None or stamp > self._chunk_ns:
                self._chunk_ns = stamp
                self._cond.notify_all()

    def chunk_seen(self, observation_stamp_ns: int) -> bool:
        """An action_chunk for an observation at or after the stamp has arrived."""
        with self._cond:
            return self._chunk_ns is not None and self._chunk_ns >= observation_stamp_ns

    def wait_for(self, observation_stamp_ns: int, timeout: float,
                 until_chunk: bool = False) -> ReceivedAction | None:
        """The newest action conditioned on an observation at or after the stamp, or None.

        until_chunk: also return (None) as soon as an action_chunk for such an observation
        has arrived.
        """
        def ready():
            return fresh() or (until_chunk and self._chunk_ns is not None
                               and self._chunk_ns >= observation_stamp_ns)

        def fresh():
            newest = self._newest
            return newest is not None and newest.observation_stamp_ns >= observation_stamp_ns

        with self._cond:
            self._cond.wait_for(ready, timeout=max(timeout, 0.0))
            return self._newest if fresh() else None

    def last(self) -> ReceivedAction | None:
        with self._cond:
            return self._last

    def _reject(self, reason: str, detail: str) -> None:
        with self._cond:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            first = self.rejected[reason] == 1
        if first and self._log is not None:  # once per reason: a bad node repeats itself
            self._log(f'ignoring actions ({reason}): {detail}')


@dataclass
class SimReport:
    """What a sim run did: one summary per episode."""

    mode: str  # 'expert' or 'policy'
    episodes: list[EpisodeSummary] = field(default_factory=list)
    actions_received: int = 0
    actions_rejected: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return sum(e.success for e in self.episodes) / max(len(self.episodes), 1)

    def to_dict(self) -> dict:
        return {'mode': self.mode, 'episodes': [e.to_dict() for e in self.episodes],
                'success_rate': self.success_rate, 'successes': sum(
                    e.success for e in self.episodes), 'actions_received': self.actions_received,
                'actions_rejected': dict(self.actions_rejected)}


class SimLoop:
    """Episodes of the reach task against `publish` (the transport) and `inbox` (the policy).

    Transport-free: run_sim wires it to DDS; tests wire it to an in-process fake node.
    """

    def __init__(self, env: ReachEnv, publish: Emit, inbox: ActionInbox | None, *,
                 lockstep: bool = True, action_timeout: float = 2.0,
                 startup_timeout: float = 120.0, resend_after: float = 0.5,
                 max_action_age: float = 0.25,
                 real_time_factor: float = 0.0, episode_gap: float = 2.0,
                 record_dir: str | Path | None = None, storage: str = 'mcap',
                 topics: SimTopics = SimTopics(), stop: threading.Event | None = None,
                 log: Callable[[str], None] | None = None):
        if action_timeout <= 0 or startup_timeout <= 0 or real_time_factor < 0:
            raise ConfigError(f'sim action_timeout={action_timeout}, startup_timeout='
                              f'{startup_timeout}, real_time_factor={real_time_factor}: expected '
                              'timeouts > 0 and real_time_factor >= 0')
        if episode_gap * NS_PER_S < env.control_dt_ns:
            raise ConfigError(f'sim episode_gap={episode_gap}: expected >= one control step')
        self.env, self.inbox = env, inbox
        self._publish_raw = publish
        self._clock_sent = -1  # newest /clock published: /clock never goes back
        self._nudge_ns = env.control_dt_ns // 2 - 1_000_000
        self.expert = self.make_expert()
        self.lockstep = lockstep
        self.action_timeout = action_timeout
        self.startup_timeout = startup_timeout
        self.resend_after = resend_after
        self.max_action_age_ns = int(max_action_age * NS_PER_S)
        self.real_time_factor = real_time_factor
        self.gap_ns = int(round(episode_gap * NS_PER_S))
        self.record_dir = None if record_dir is None else Path(record_dir)
        self.storage = storage
        self.topics = topics
        self.stop = stop or threading.Event()
        self.log = log or _stderr_log
        self._bag: BagWriter | None = None
        self.stream = self.make_stream(self._emit)
        self._live = self.make_stream(self.publish)  # publish only, never recorded
        self._resent = 0

    @property
    def mode(self) -> str:
        return 'expert' if self.inbox is None else 'policy'

    # A task's loop overrides these three and _episode.
    def make_expert(self):
        return ReachExpert(self.env.task)

    def make_stream(self, emit: Emit):
        return EpisodeStream(self.env, emit, self.topics)

    def idle_action(self) -> np.ndarray:
        """What the robot does while the sim waits for the policy to start: hold still."""
        return np.zeros(len(ACTION_NAMES))

    # ------------------------------------------------------------------------- outputs --

    def publish(self, topic: str, msgtype: str, stamp_ns: int, msg: object) -> None:
        """Publish on the transport; a /clock older than one already sent is skipped."""
        if topic == self.topics.clock:
            if stamp_ns < self._clock_sent:
                return
            self._clock_sent = stamp_ns
        self._publish_raw(topic, msgtype, stamp_ns, msg)

    def _publish_clock(self, stamp_ns: int) -> None:
        self.publish(self.topics.clock, CLOCK, stamp_ns, self.stream.clock_msg(stamp_ns))

    def _emit(self, topic: str, msgtype: str, stamp_ns: int, msg: object) -> None:
        """Publish (and record). Privileged labels (/expert/action) are recorded, never
        published, while a policy is in control: the policy must not see them."""
        if not (topic == self.topics.expert_action and self.inbox is not None):
            self.publish(topic, msgtype, stamp_ns, msg)
        if self._bag is not None:
            self._bag(topic, msgtype, stamp_ns, msg)

    # ------------------------------------------------------------------------- running --

    def run(self, episodes: int, seed: int = 0) -> SimReport:
        """Run `episodes` episodes (episode i: seed + i); stops early when `stop` is set."""
        report = SimReport(mode=self.mode)
        t = START_NS
        if self.inbox is not None:
            t = self._wait_for_policy(seed, t) + self.gap_ns
        for index in range(episodes):
            if self.stop.is_set():
                break
            bag_path = None
            if self.record_dir is not None:
                bag_path = self.record_dir / f'episode_{index:04d}'
                self._bag = BagWriter(bag_path, self.storage)
            try:
                summary = self._episode(index, seed + index, t)
            finally:
                if self._bag is not None:
                    self._bag.close()
                    self._bag = None
            if bag_path is not None:
                summary = replace(summary, path=str(bag_path))
            report.episodes.append(summary)
            t = self.env.stamp_ns + self.gap_ns
        if self.inbox is not None:
            report.actions_received = self.inbox.received
            report.actions_rejected = dict(self.inbox.rejected)
        return report

    def _episode(self, index: int, seed: int, start_ns: int) -> EpisodeSummary:
        env, stream = self.env, self.stream
        state = env.reset(seed, start_ns=start_ns)
        info = episode_info(env, index, 'start', mode=self.mode)
        self.log(f'episode {index} (seed {seed}): start, target '
                 f'{np.round(state.target_position[:2], 3).tolist()}')
        stream.event(state.stamp_ns, info)
        pace = _Pacer(self.real_time_factor, state.stamp_ns)
        stream.observation(state)
        missed = 0
        self._resent = 0
        gripper = 0.0
        while not state.done and not self.stop.is_set():
            label = self.expert.act(state)
            stream.action(self.topics.expert_action, state.stamp_ns, label)
            if self.inbox is None:
                action = label.astype(np.float64)
            else:
                received = self._policy_action(state)
                if received is None:
                    missed += 1
                    action = np.zeros(len(ACTION_NAMES))
                    action[6] = gripper  # hold: no motion, gripper unchanged
                else:
                    action = received.action
                    if self._bag is not None:
                        self._bag(self.topics.action, ACTION_CHUNK, state.stamp_ns, received.msg)
            gripper = float(action[6])
            state = env.step(action)
            pace.wait(state.stamp_ns, self.stop)
            stream.observation(state)
        info = episode_info(env, index, 'end', mode=self.mode, missed_actions=missed,
                            resent_observations=self._resent)
        stream.event(state.stamp_ns, info)
        outcome = 'success' if state.success else ('stopped' if self.stop.is_set()
                                                   else 'timeout')
        self.log(f'episode {index} (seed {seed}): {outcome} after {state.step} steps, error '
                 f'{info["error_m"]:.3f} m' + (f', {missed} missed actions' if missed else ''))
        return EpisodeSummary(index=index, seed=seed, success=state.success, steps=state.step,
                              target=tuple(info['target']), final_error_m=info['error_m'],
                              missed_actions=missed, resent_observations=self._resent)

    def _policy_action(self, state: SimState) -> ReceivedAction | None:
        """The action to execute now, or None (hold)."""
        t = state.stamp_ns
        if not self.lockstep:
            last = self.inbox.last()
            if last is not None and 0 <= t - last.stamp_ns <= self.max_action_age_ns:
                return last
            return None
        start = time.monotonic()
        deadline = start + self.action_timeout
        resend = start + self.resend_after
        nudged = False
        while not self.stop.is_set():
            now = time.monotonic()
            received = self.inbox.wait_for(t, min(0.05, deadline - now), until_chunk=not nudged)
            if received is not None:
                return received
            if not nudged and self.inbox.chunk_seen(t):
                nudged = True  # inferred, not acted on: let a sim-time timer fire once more
                self._publish_clock(t + self._nudge_ns)
                continue
            if now >= deadline:
                return None
            if resend is not None and now >= resend:
                resend = None
                self._resent += 1
                self._live.resend(state)
            else:  # physics stands still while we wait; a node ticking on /clock must hear it
                self._publish_clock(max(self._clock_sent, t))
        return None

    def _wait_for_policy(self, seed: int, t: int) -> int:
        """Publish still observations until any action arrives; returns the sim time then."""
        env, stream = self.env, self.stream
        state = env.reset(seed, start_ns=t)
        self.log(f'waiting up to {self.startup_timeout:g} s for a policy on '
                 f'{self.topics.action} ...')
        deadline = time.monotonic() + self.startup_timeout
        stream.observation(state)
        while not self.stop.is_set():
            if self.inbox.wait_for(START_NS, 0.5) is not None:
                self.log('policy is answering')
                return env.stamp_ns
            if time.monotonic() > deadline:
                raise SimError(f'no action on {self.topics.action} within '
                               f'{self.startup_timeout:g} s: expected a vit_perception node on '
                               'the same ROS domain, using sim time (/clock)')
            state = env.step(self.idle_action())
            stream.observation(state)
        return env.stamp_ns


class _Pacer:
    """Sleeps so that sim time runs at most real_time_factor x wall time (0 = no pacing)."""

    def __init__(self, real_time_factor: float, start_ns: int):
        self.factor = real_time_factor
        self.start_ns = start_ns
        self.wall0 = time.monotonic()

    def wait(self, stamp_ns: int, stop: threading.Event) -> None:
        if self.factor > 0:
            due = self.wall0 + (stamp_ns - self.start_ns) / NS_PER_S / self.factor
            stop.wait(max(0.0, due - time.monotonic()))


def _stderr_log(text: str) -> None:
    print(f'[vit-perception sim] {text}', file=sys.stderr, flush=True)


def run_sim(domain_id: int = -1, episodes: int = 10, seed: int = 0, expert: bool = False,
            record_dir: str | Path | None = None, *, image_size: int = 96,
            wrist_image_size: int | None = None, max_steps: int = 60, lockstep: bool = True,
            action_timeout: float = 2.0, startup_timeout: float = 120.0,
            resend_after: float = 0.5, real_time_factor: float | None = None,
            episode_gap: float = 2.0, storage: str = 'mcap', topics: SimTopics = SimTopics(),
            stop: threading.Event | None = None,
            log: Callable[[str], None] | None = None) -> SimReport:
    """Run the sim on ROS 2 topics (Cyclone DDS, ROS wire conventions) and return the report.

    expert=False: a policy (the vit_perception node) must answer on topics.action. The node must
    run on sim time (/clock). real_time_factor: None = 1.0 with the expert (watchable, recordable
    with `ros2 bag record`), 0 (as fast as the policy answers) in lock-step, 1.0 free-running.
    record_dir: one bag per episode, as `record_episodes` writes, plus the policy's actions.
    """
    from vit_perception.drivers import dds

    if real_time_factor is None:
        real_time_factor = 1.0 if (expert or not lockstep) else 0.0
    log = log or _stderr_log
    with ReachEnv(seed, image_size=image_size, wrist_image_size=wrist_image_size,
                  max_steps=max_steps) as env, dds.DdsTransport(domain_id) as transport:
        publish, inbox = dds_wiring(transport, topics, expert, log)
        loop = SimLoop(env, publish, inbox, lockstep=lockstep, action_timeout=action_timeout,
                       startup_timeout=startup_timeout, resend_after=resend_after,
                       real_time_factor=real_time_factor,
                       episode_gap=episode_gap, record_dir=record_dir, storage=storage,
                       topics=topics, stop=stop, log=log)
        log(f'domain {transport.domain_id}, {"expert" if expert else "policy"} mode, '
            f'{"lock-step" if lockstep and not expert else "paced"}, {episodes} episodes from '
            f'seed {seed}, images {image_size} px on {topics.image} and {topics.wrist_image}')
        report = loop.run(episodes, seed)
    log(f'{sum(e.success for e in report.episodes)}/{len(report.episodes)} episodes succeeded')
    return report


def dds_wiring(transport, topics, expert: bool, log: Callable[[str], None],
               names: Sequence[str] = ACTION_NAMES) -> tuple[Emit, ActionInbox | None]:
    """publish(topic, msgtype, stamp, msg) on `transport` (a publisher per topic, images
    reliable: that matches best-effort readers too) and, in policy mode, the ActionInbox
    subscribed to the node's action and action_chunk topics."""
    from vit_perception.drivers import dds, ros_types

    qos = {IMAGE: dds.qos_profile('reliable', 5)}
    publishers: dict[str, dds.DdsPublisher] = {}

    def publish(topic: str, msgtype: str, stamp_ns: int, msg: object) -> None:
        pub = publishers.get(topic)
        if pub is None:
            pub = publishers[topic] = transport.publisher(
                topic, msgtype, qos.get(msgtype, dds.DEFAULT))
        pub.publish_cdr(ros_types.serialize(msg, msgtype))

    inbox = None
    if not expert:
        inbox = ActionInbox(log, names)
        listen = dds.qos_profile('best_effort', 10)  # matches reliable publishers too
        transport.subscribe(topics.action, ACTION_CHUNK, listen, inbox.put)
        transport.subscribe(topics.action_chunk, ACTION_CHUNK, listen, inbox.put_chunk)
    return publish, inbox
