"""PerceptionCore driven with the real Engine (tiny checkpoint): the node's numbers equal the
engine's numbers for the same observation, and the action is chunk step 0 after the limits."""

import numpy as np
import torch

from vit_perception.config import NodeConfig
from vit_perception.core.engine import Engine
from vit_perception.core.node import PerceptionCore
from vit_perception.core.types import NS_PER_S, ImageFrame, Observation, PoseSample
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy


class Recorder:
    def __init__(self):
        self.embeddings, self.chunks, self.actions, self.logs = [], [], [], []

    def publish_embedding(self, result, frame_id):
        self.embeddings.append((result, frame_id))

    def publish_chunk(self, result):
        self.chunks.append(result)

    def publish_action(self, stamp_ns, action, observation_stamp_ns):
        self.actions.append((stamp_ns, action.copy(), observation_stamp_ns))

    def publish_diagnostics(self, report):
        pass

    def log(self, level, text):
        self.logs.append((level, text))


def make_engine(mode='early'):
    torch.manual_seed(0)
    policy = build_policy(tiny_config(fusion__mode=mode)).eval()
    return Engine(policy, device='cpu', dtype='fp32', warmup_iters=0)


def image(stamp_ns):
    pixels = np.random.default_rng(7).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    return ImageFrame(stamp_ns=stamp_ns, frame_id='camera_optical', data=pixels.tobytes(),
                      height=24, width=32, encoding='rgb8', step=96)


def pose(stamp_ns, x):
    return PoseSample(stamp_ns, 'base', np.array([x, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 1.0]))


def test_core_publishes_exactly_what_the_engine_computes():
    clock = {'now': 0}
    engine = make_engine()
    out = Recorder()
    config = NodeConfig.from_dict({'safety': {'action_min': [-1.0] * 7,
                                              'action_max': [1.0] * 7}})
    core = PerceptionCore(config, engine, out, clock=lambda: clock['now'], threaded=False)
    t0 = 10 * NS_PER_S
    clock['now'] = t0 + 20_000_000
    core.on_pose(pose(t0 - 10_000_000, 0.40))
    core.on_pose(pose(t0 + 10_000_000, 0.42))
    core.on_image(image(t0))
    assert core.run_pending() is True
    assert len(out.chunks) == 1 and len(out.embeddings) == 1
    result, frame_id = out.embeddings[0]
    assert frame_id == 'camera_optical'
    assert out.chunks[0].observation_stamp_ns == t0
    # The same observation, pose interpolated half-way (x = 0.41), straight into the engine.
    expected = engine.infer(Observation(stamp_ns=t0, frames=(image(t0),), poses=(pose(t0, 0.41),)))
    np.testing.assert_allclose(out.chunks[0].chunk, expected.chunk, atol=1e-6)
    np.testing.assert_allclose(result.embedding, expected.embedding, atol=1e-6)
    # Tick at the observation time: the action is chunk step 0, clamped to [-1, 1].
    clock['now'] = t0
    action = core.tick()
    np.testing.assert_allclose(action, np.clip(expected.chunk[0], -1.0, 1.0), atol=1e-6)
    assert out.actions[-1][2] == t0
    # Far past max_observation_age: nothing is published.
    clock['now'] = t0 + 2 * NS_PER_S
    assert core.tick() is None
    assert len(out.actions) == 1


def test_late_fusion_tick_refreshes_with_the_newest_pose():
    clock = {'now': 0}
    engine = make_engine('late')
    out = Recorder()
    core = PerceptionCore(NodeConfig(), engine, out, clock=lambda: clock['now'],
                          threaded=False)
    t0 = 5 * NS_PER_S
    clock['now'] = t0
    core.on_pose(pose(t0, 0.40))
    core.on_image(image(t0))
    core.run_pending()
    newer = pose(t0 + 40_000_000, 0.55)
    clock['now'] = t0 + 40_000_000
    core.on_pose(newer)
    action = core.tick()
    refreshed = engine.refresh((newer,), observation_stamp_ns=t0)
    assert refreshed is not None
    # One chunk, step 0 still in effect at t0 + 40 ms (dt 0.1 s): the action is the refreshed
    # step 0, which differs from the chunk computed with the older pose.
    np.testing.assert_allclose(action, refreshed[0], atol=1e-6)
    assert np.abs(action - out.chunks[0].chunk[0]).max() > 1e-6
