"""The transfer-cube sim as a ROS 2 process: the reach sim's lock-step loop (tools/sim/
sim_process.py: /clock, waiting for the node's action conditioned on the newest image, the
/clock nudge, resends) with the ALOHA scene, its messages and its expert.

Each control step (0.1 s) publishes the 5 state samples of the step (50 Hz: /clock, both gripper
poses, /joint_states), then the top image; in policy mode the sim then waits for the node's
action (14 joint targets) and executes it. No action in time: the arms hold their targets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vit_perception.tools.aloha.expert import TransferCubeExpert
from vit_perception.tools.aloha.record import (
    AlohaEpisode,
    AlohaStream,
    AlohaTopics,
    episode_info,
    summarize,
)
from vit_perception.tools.aloha.scene import JOINT_NAMES, AlohaEnv
from vit_perception.tools.sim.record import ACTION_CHUNK
from vit_perception.tools.sim.sim_process import (
    SimLoop,
    SimReport,
    _Pacer,
    _stderr_log,
    dds_wiring,
)


class AlohaSimLoop(SimLoop):
    """Transfer-cube episodes against `publish` (the transport) and `inbox` (the policy)."""

    def __init__(self, env: AlohaEnv, publish, inbox, *, topics: AlohaTopics = AlohaTopics(),
                 **options):
        super().__init__(env, publish, inbox, topics=topics, **options)

    def make_expert(self) -> TransferCubeExpert:
        return TransferCubeExpert(self.env.task, self.env.control_dt)

    def make_stream(self, emit) -> AlohaStream:
        return AlohaStream(self.env, emit, self.topics)

    def idle_action(self) -> np.ndarray:
        return self.env.targets.copy()

    def _episode(self, index: int, seed: int, start_ns: int) -> AlohaEpisode:
        env, stream = self.env, self.stream
        state = env.reset(seed, start_ns=start_ns)
        cube = state.cube_position
        self.expert.plan(cube)
        stream.event(state.stamp_ns, episode_info(env, state, index, 'start', cube,
                                                  mode=self.mode))
        self.log(f'episode {index} (seed {seed}): start, cube '
                 f'{np.round(cube[:2], 3).tolist()}')
        pace = _Pacer(self.real_time_factor, state.stamp_ns)
        stream.observation(state)
        missed = 0
        self._resent = 0
        while not state.done and not self.stop.is_set():
            label = self.expert.target(state.step)
            stream.action(self.topics.expert_action, state.stamp_ns, label)
            if self.inbox is None:
                targets = label
            else:
                received = self._policy_action(state)
                if received is None:
                    missed += 1
                    targets = env.targets  # hold
                else:
                    targets = received.action
                    if self._bag is not None:
                        self._bag(self.topics.action, ACTION_CHUNK, state.stamp_ns, received.msg)
            state = env.step(targets)
            pace.wait(state.stamp_ns, self.stop)
            stream.observation(state)
        stream.event(state.stamp_ns, episode_info(
            env, state, index, 'end', cube, mode=self.mode, missed_actions=missed,
            resent_observations=self._resent))
        outcome = ('transfer' if state.success else 'lift' if state.max_reward >= 2
                   else 'touch' if state.max_reward >= 1 else 'no touch')
        self.log(f'episode {index} (seed {seed}): {outcome} (max reward {state.max_reward}) '
                 f'after {state.step} steps' + (f', {missed} missed actions' if missed else ''))
        return summarize(index, state, cube, seed=seed, missed_actions=missed,
                         resent_observations=self._resent)


def run_aloha_sim(domain_id: int = -1, episodes: int = 10, seed: int = 0, expert: bool = False,
                  record_dir: str | Path | None = None, *,
                  image_size: tuple[int, int] = (96, 128), lockstep: bool = True,
                  action_timeout: float = 2.0, startup_timeout: float = 120.0,
                  resend_after: float = 0.5, real_time_factor: float | None = None,
                  episode_gap: float = 2.0, storage: str = 'mcap',
                  topics: AlohaTopics = AlohaTopics(), stop: threading.Event | None = None,
                  log: Callable[[str], None] | None = None) -> SimReport:
    """Run transfer-cube on ROS 2 topics (Cyclone DDS) and return the report (see run_sim)."""
    from vit_perception.drivers import dds

    if real_time_factor is None:
        real_time_factor = 1.0 if (expert or not lockstep) else 0.0
    log = log or _stderr_log
    with AlohaEnv(image_size) as env, dds.DdsTransport(domain_id) as transport:
        publish, inbox = dds_wiring(transport, topics, expert, log, JOINT_NAMES)
        loop = AlohaSimLoop(env, publish, inbox, lockstep=lockstep,
                            action_timeout=action_timeout, startup_timeout=startup_timeout,
                            resend_after=resend_after, real_time_factor=real_time_factor,
                            episode_gap=episode_gap, record_dir=record_dir, storage=storage,
                            topics=topics, stop=stop, log=log)
        log(f'aloha-transfer-cube, domain {transport.domain_id}, '
            f'{"expert" if expert else "policy"} mode, '
            f'{"lock-step" if lockstep and not expert else "paced"}, {episodes} episodes from '
            f'seed {seed}, top camera {image_size[0]}x{image_size[1]} on {topics.image}')
        report = loop.run(episodes, seed)
    log(f'{sum(e.success for e in report.episodes)}/{len(report.episodes)} transfers')
    return report
