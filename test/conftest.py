"""Test doubles shared by the test folders (fixtures: pytest runs with --import-mode=importlib,
so test modules take these as fixtures rather than importing them)."""

from __future__ import annotations

import numpy as np
import pytest

from vit_perception.config import PolicyConfig, PoseConfig
from vit_perception.core.types import ActionChunkResult


class FakeEngine:
    """Embedding = row; chunk[i] = row + i (3 actions, horizon 4). One arm: row = the pose
    position; with `arms` (and `proprio_names`): row = [first arm x, last arm x, joint sum]."""

    model_id = 'fake-model'
    action_names = ['x', 'y', 'z']
    dt = 0.1
    horizon = 4
    fusion = 'early'

    def __init__(self, arms=(), proprio_names=()):
        if arms:  # what the core and the drivers read of a checkpoint
            self.config = PolicyConfig(pose=PoseConfig(arms=list(arms),
                                                       proprio_names=list(proprio_names)))

    def infer(self, obs):
        if hasattr(self, 'config'):
            row = np.array([obs.poses[0].position[0], obs.poses[-1].position[0],
                            np.sum(obs.proprio)], dtype=np.float32)
        else:
            row = obs.pose.position.astype(np.float32)
        chunk = row[None, :] + np.arange(self.horizon, dtype=np.float32)[:, None]  # (H, 3)
        return ActionChunkResult(obs.stamp_ns, row, chunk, {'model': 1.0})

    def refresh(self, pose, proprio=None, observation_stamp_ns=None):
        return None


class RecordingCore:
    """What a driver hands the core: images, poses, joint states and bad-message reports."""

    def __init__(self):
        self.images, self.poses, self.joints, self.bad = [], [], [], []

    def on_image(self, frame) -> None:
        self.images.append(frame)

    def on_pose(self, pose) -> None:
        self.poses.append(pose)

    def on_joints(self, joints) -> None:
        self.joints.append(joints)

    def on_bad_message(self, source: str, reason: str, detail: str) -> None:
        self.bad.append((source, reason, detail))


class CapturingPublisher:
    """A publisher of any transport: keeps the CDR bytes it was given."""

    def __init__(self, topic: str, msgtype: str, reliability: str, depth: int):
        self.topic, self.msgtype, self.qos = topic, msgtype, (reliability, depth)
        self.sent: list[bytes] = []

    def publish_cdr(self, cdr) -> None:
        self.sent.append(bytes(cdr))


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def two_arm_engine() -> FakeEngine:
    """Arms 'left' and 'right', joints 'j0' and 'j1'."""
    return FakeEngine(arms=['left', 'right'], proprio_names=['j0', 'j1'])


@pytest.fixture
def recording_core() -> RecordingCore:
    return RecordingCore()


class CapturingTransport:
    """A publisher factory (drivers/outputs.PublisherFactory) whose publishers keep the bytes."""

    def __init__(self):
        self.publishers: dict[str, CapturingPublisher] = {}

    def make_publisher(self, topic: str, msgtype: str, reliability: str, depth: int):
        self.publishers[topic] = CapturingPublisher(topic, msgtype, reliability, depth)
        return self.publishers[topic]

    def sent(self, topic: str) -> list[bytes]:
        return self.publishers[topic].sent


@pytest.fixture
def capturing_transport() -> CapturingTransport:
    return CapturingTransport()
