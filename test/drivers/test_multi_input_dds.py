"""The DDS node with two arms and joint states over real DDS: every input is a route-table row,
interpolated to the image stamp; a malformed JointState is dropped, counted and never used."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vit_perception.config import NodeConfig
from vit_perception.drivers import dds, dds_node
from vit_perception.drivers import ros_types as rt

sys.path.insert(0, str(Path(__file__).resolve().parent))  # local helpers (importlib mode)
import dds_testing as dt  # noqa: E402

MS = 1_000_000
POSES = ['/left/ee_pose', '/right/ee_pose']


def diag_value(msg, key: str) -> str | None:
    return next((kv.value for kv in msg.status[0].values if kv.key == key), None)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_arms_and_joint_states_reach_the_model_at_the_image_stamp(monkeypatch,
                                                                      two_arm_engine):
    domain = dt.use_loopback(monkeypatch)
    config = NodeConfig.from_dict({
        'domain_id': domain, 'diagnostics_period': 0.2, 'topics': {'poses': POSES},
        'sync': {'max_observation_age': 5.0, 'max_pose_skew': 0.5, 'max_future': 1.0}})
    stop = threading.Event()
    node = threading.Thread(target=dds_node.run_dds_node, args=(config, two_arm_engine, stop))
    chunks, diagnostics = [], []
    with dds.DdsTransport(domain) as transport:
        transport.subscribe(config.topics.action_chunk, rt.ACTION_CHUNK, dds.DEFAULT,
                            chunks.append)
        transport.subscribe(config.topics.diagnostics, rt.DIAGNOSTIC_ARRAY, dds.DEFAULT,
                            diagnostics.append)
        image = transport.publisher(config.topics.cameras[0], rt.IMAGE, dds.SENSOR_DATA)
        arms = [transport.publisher(topic, rt.POSE_STAMPED, dds.DEFAULT) for topic in POSES]
        joints = transport.publisher(config.topics.joint_states, rt.JOINT_STATE, dds.DEFAULT)
        node.start()
        try:
            for publisher in (image, joints, *arms):
                assert publisher.wait_for_subscribers(1, timeout=30)
            # Lacks j1: dropped as bad_joint_state, never delivered.
            joints.publish(rt.joint_state_msg(time.time_ns() - 200 * MS, ['j0'], [100.0]))
            t0 = time.time_ns() - 100 * MS
            # Samples 20 ms before and after the image: the model sees their midpoints.
            for stamp, scale in ((t0 - 20 * MS, 1.0), (t0 + 20 * MS, 3.0)):
                arms[0].publish(rt.pose_msg(stamp, 'world', [0.1 * scale, 0, 0], [0, 0, 0, 1]))
                arms[1].publish(rt.pose_msg(stamp, 'world', [-0.2 * scale, 0, 0], [0, 0, 0, 1]))
                joints.publish(rt.joint_state_msg(stamp, ['j1', 'other', 'j0'],
                                                  [0.5 * scale, 9.0, 0.25 * scale]))
            image.publish(rt.image_msg(t0, 'cam', np.zeros((8, 8, 3), np.uint8), 'rgb8'))

            def done():
                return chunks and any(diag_value(d, 'drops.bad_joint_state') == '1'
                                      for d in diagnostics)

            assert dt.wait_until(done, timeout=60, interval=0.02)
        finally:
            stop.set()
            node.join(30)
    assert not node.is_alive()
    (chunk,) = [rt.chunk_from_msg(c) for c in chunks]
    assert chunk.observation_stamp_ns == t0
    # row = [left x, right x, j0 + j1] at t0, each halfway between its two samples
    np.testing.assert_allclose(chunk.chunk[0], [0.2, -0.4, 0.5 + 1.0], rtol=1e-6)
    last = diagnostics[-1]
    assert [diag_value(last, f'rx.{topic}') for topic in POSES] == ['2', '2']
    assert diag_value(last, f'rx.{config.topics.joint_states}') == '3'
    assert diag_value(last, 'age.joint_states_s') is not None
