"""Test doubles shared by the test folders: the fake engine and transport of test/conftest.py's
fixtures, importable where a helper builds them itself (pytest runs with --import-mode=importlib:
`sys.path.insert(0, <test dir>)` then `import doubles`)."""

from __future__ import annotations

import numpy as np

from vit_perception.core.types import ActionChunkResult
from vit_perception.model.config import PolicyConfig, PoseConfig

# A very small policy config (PolicyConfig layout) for training tests on 32 px bags.
TINY_POLICY = {
    'backbone': {'hidden_size': 16, 'num_layers': 1, 'num_heads': 2, 'mlp_ratio': 2,
                 'patch_size': 8, 'image_size': 32},
    'pose': {'num_tokens': 1},
    'actions': {'horizon': 4, 'dt': 0.1},
    'embedding': {'dim': 8},
    'preprocess': {'size': [32, 32]},
}


class FakeEngine:
    """Deterministic engine: embedding = row; chunk[i] = row + i (3 actions, horizon 4). One
    arm: row = the pose position; with `arms` (and `proprio_names`): row = [first arm x, last
    arm x, sum of the joint values]. Late fusion: refresh gives the newest first-arm position +
    100 + i. Records what it was given; `fail_with` raises on the next infer."""

    model_id = 'fake-model'
    action_names = ['x', 'y', 'z']
    backend = 'torch'

    def __init__(self, fusion='early', horizon=4, dt=0.1, arms=(), proprio_names=()):
        self.fusion, self.horizon, self.dt = fusion, horizon, dt
        if arms:  # what the core and the drivers read of a checkpoint
            self.config = PolicyConfig(pose=PoseConfig(arms=list(arms),
                                                       proprio_names=list(proprio_names)))
        self.inferred = []  # observations, in call order
        self.refreshed = []  # first-arm poses given to refresh
        self.fail_with = None  # exception to raise on the next infer
        self.chunk_override = None

    def infer(self, obs):
        self.inferred.append(obs)
        if self.fail_with is not None:
            err, self.fail_with = self.fail_with, None
            raise err
        if hasattr(self, 'config'):
            row = np.array([obs.poses[0].position[0], obs.poses[-1].position[0],
                            np.sum(obs.proprio)])
        else:
            row = obs.pose.position
        chunk = row[None, :] + np.arange(self.horizon)[:, None]  # (H, 3)
        if self.chunk_override is not None:
            chunk = self.chunk_override
        return ActionChunkResult(obs.stamp_ns, np.asarray(row, dtype=np.float32),
                                 np.asarray(chunk, dtype=np.float32),
                                 {'preprocess': 1.0, 'model': 2.0})

    def refresh(self, poses, proprio=None, observation_stamp_ns=None):
        if self.fusion != 'late':
            return None
        pose = poses[0]
        self.refreshed.append(pose)
        return (pose.position[None, :] + 100.0 + np.arange(self.horizon)[:, None]).astype(
            np.float32)  # (H, 3)


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


class CapturingTransport:
    """A publisher factory (drivers/outputs.PublisherFactory) whose publishers keep the bytes."""

    def __init__(self):
        self.publishers: dict[str, CapturingPublisher] = {}

    def make_publisher(self, topic: str, msgtype: str, reliability: str, depth: int):
        self.publishers[topic] = CapturingPublisher(topic, msgtype, reliability, depth)
        return self.publishers[topic]

    def sent(self, topic: str) -> list[bytes]:
        return self.publishers[topic].sent


def read_bag(path) -> dict:
    """{topic: [(log stamp ns, msgtype, message)]} of a ROS 2 bag, in log order."""
    from rosbags.highlevel import AnyReader

    from vit_perception.drivers import ros_types

    topics = {}
    with AnyReader([path], default_typestore=ros_types.typestore()) as reader:
        for connection, stamp, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            topics.setdefault(connection.topic, []).append((stamp, connection.msgtype, msg))
    return topics
