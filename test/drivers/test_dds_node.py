"""The DDS node: control timer, sim time, and the node wired to PerceptionCore over real DDS."""

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
from vit_perception.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # local helpers (importlib mode)
import dds_testing as dt  # noqa: E402

MS = 1_000_000


class FakeSource:
    """A time source whose sleeps return at once, `lateness` ns after the deadline."""

    def __init__(self, lateness=()):
        self.t = 0
        self.lateness = list(lateness)

    def monotonic_ns(self):
        return self.t

    def sleep_until(self, deadline, stop):
        if stop.is_set():
            return False
        self.t = max(self.t, deadline) + (self.lateness.pop(0) if self.lateness else 0)
        return True


def test_control_timer_keeps_absolute_deadlines_and_skips_overruns():
    period = 20 * MS
    source = FakeSource(lateness=[3 * MS, 0, 7 * MS, 0, 0, 0, 0])
    stop = threading.Event()
    started = []

    def tick():
        started.append(source.t)
        if len(started) == 4:
            source.t += int(2.5 * period)  # this tick runs 2.5 periods
        if len(started) == 6:
            stop.set()

    timer = dds_node.ControlTimer(period, tick, source, stop)
    timer.run()
    # Deadlines stay on the k * period grid whatever the lateness: no drift.
    assert started == [20 * MS + 3 * MS, 40 * MS, 60 * MS + 7 * MS, 80 * MS,
                       # tick 4 ran until 130 ms: the 100 and 120 ms deadlines are skipped
                       140 * MS, 160 * MS]
    assert (timer.ticks, timer.overruns) == (6, 2)
    p50, p99 = timer.lateness_ms()
    assert p50 == 0.0 and p99 == pytest.approx(6.8)


def test_control_timer_survives_failing_ticks():
    source, stop, errors = FakeSource(), threading.Event(), []

    def tick():
        if len(errors) == 2:
            stop.set()
        raise ValueError('publisher failed')

    timer = dds_node.ControlTimer(10 * MS, tick, source, stop, on_error=errors.append)
    timer.run()
    assert timer.ticks == 3 and [str(e) for e in errors] == ['publisher failed'] * 3


def test_sim_time_follows_clock_messages_and_wakes_on_jumps():
    sim, stop = dds_node.SimTime(), threading.Event()
    assert sim.now() == 0  # ROS: time is zero until the first /clock message
    sim.on_clock(rt.clock_msg(5_000 * MS))
    assert sim.now() == sim.monotonic_ns() == 5_000 * MS
    assert sim.sleep_until(4_000 * MS, stop)  # already past: returns at once

    woke = []
    sleeper = threading.Thread(target=lambda: woke.append(sim.sleep_until(6_000 * MS, stop)))
    sleeper.start()
    sim.on_clock(rt.clock_msg(5_500 * MS))
    sleeper.join(0.3)
    assert sleeper.is_alive()  # 5.5 s < 6 s: still waiting
    sim.on_clock(rt.clock_msg(6_000 * MS))
    sleeper.join(10)
    assert woke == [True]

    sleeper = threading.Thread(target=lambda: woke.append(sim.sleep_until(9_000 * MS, stop)))
    sleeper.start()
    sim.on_clock(rt.clock_msg(1_000 * MS))  # jumped back (simulation reset): wake up
    sleeper.join(10)
    assert woke == [True, True] and sim.now() == 1_000 * MS
    stop.set()
    assert sim.sleep_until(9_000 * MS, stop) is False


# --------------------------------------------------------------------------------- the node

def node_config(domain: int, **overrides) -> NodeConfig:
    data = {'domain_id': domain, 'diagnostics_period': 0.2,
            'control': {'control_rate_hz': 50.0},
            'sync': {'max_observation_age': 5.0, 'max_pose_skew': 0.5, 'max_future': 1.0}}
    data.update(overrides)
    return NodeConfig.from_dict(data)


class Recorder:
    """Subscribes to the node's outputs on its own participant."""

    def __init__(self, transport: dds.DdsTransport, config: NodeConfig):
        self.msgs: dict[str, list] = {}
        topics = config.topics
        for topic, msgtype in [(topics.embedding, rt.EMBEDDING),
                               (topics.action_chunk, rt.ACTION_CHUNK),
                               (topics.action, rt.ACTION_CHUNK),
                               (topics.diagnostics, rt.DIAGNOSTIC_ARRAY)]:
            self.msgs[topic] = []
            transport.subscribe(topic, msgtype, dds.DEFAULT, self.msgs[topic].append)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_node_turns_images_and_poses_into_ros_outputs(monkeypatch, fake_engine):
    domain = dt.use_loopback(monkeypatch)
    config = node_config(domain)
    stop = threading.Event()
    node = threading.Thread(target=dds_node.run_dds_node, args=(config, fake_engine, stop))
    with dds.DdsTransport(domain) as transport:
        out = Recorder(transport, config)
        images = transport.publisher(config.topics.cameras[0], rt.IMAGE, dds.SENSOR_DATA)
        poses = transport.publisher(config.topics.poses[0], rt.POSE_STAMPED, dds.DEFAULT)
        node.start()
        try:
            assert images.wait_for_subscribers(1, timeout=30)
            assert poses.wait_for_subscribers(1, timeout=30)
            bad = bytearray(rt.serialize(rt.image_msg(0, 'cam', np.zeros((2, 2, 3), np.uint8),
                                                      'rgb8')))
            at = bad.find(b'rgb8')
            bad[at:at + 4] = b'\xff\xfe\xfd\xfc'  # undecodable: counted by the core
            images.publish_cdr(bad)
            position = [0.25, -0.5, 1.0]
            image_stamps = []

            def received_all():
                now = time.time_ns()
                poses.publish(rt.pose_msg(now, 'base', position, [0, 0, 0, 1]))
                if len(image_stamps) < 3:
                    image_stamps.append(now - 10 * MS)
                    images.publish(rt.image_msg(image_stamps[-1], 'cam0',
                                                np.zeros((8, 8, 3), np.uint8), 'rgb8'))
                return (out.msgs[config.topics.embedding] and len(out.msgs[config.topics.action])
                        >= 3 and any(_diag_value(d, 'drops.decode_error') == '1'
                                     for d in out.msgs[config.topics.diagnostics]))

            assert dt.wait_until(received_all, timeout=60, interval=0.02)
        finally:
            stop.set()
            node.join(30)
    assert not node.is_alive()

    embedding = out.msgs[config.topics.embedding][0]
    assert rt.stamp_ns(embedding.header.stamp) in image_stamps
    assert embedding.header.frame_id == 'cam0' and embedding.model_id == 'fake-model'
    assert rt.embedding_from_msg(embedding).tolist() == position

    chunk = rt.chunk_from_msg(out.msgs[config.topics.action_chunk][0])
    assert chunk.stamp_ns == chunk.observation_stamp_ns == rt.stamp_ns(embedding.header.stamp)
    assert (chunk.names, chunk.dt) == (['x', 'y', 'z'], 0.1)
    assert np.allclose(chunk.chunk, np.array(position) + np.arange(4)[:, None])

    for msg in out.msgs[config.topics.action]:
        action = rt.chunk_from_msg(msg)
        # dt = the model's step, as from the rclpy node and in replay bags
        assert action.chunk.shape == (1, 3) and action.dt == pytest.approx(0.1)
        assert action.observation_stamp_ns in image_stamps
        assert action.stamp_ns >= action.observation_stamp_ns
        assert np.all(np.isfinite(action.chunk))

    diag = out.msgs[config.topics.diagnostics][-1]
    assert diag.status[0].name == 'vit_perception: perception'
    assert _diag_value(diag, 'dds.domain_id') == str(domain)
    assert diag.status[0].hardware_id == 'vit_perception'
    assert int(_diag_value(diag, f'rx.{config.topics.poses[0]}')) >= 1
    assert int(_diag_value(diag, f'rx.{config.topics.cameras[0]}')) >= len(image_stamps)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_node_follows_sim_time(monkeypatch, fake_engine):
    domain = dt.use_loopback(monkeypatch)
    config = node_config(domain)
    stop = threading.Event()
    seen = {}

    class ClockProbe:
        """Stands in for PerceptionCore: records the clock at every tick."""

        def __init__(self, config, engine, outputs, clock, threaded):
            self.clock, self.ticks = clock, []
            seen['core'] = self

        def start(self):
            pass

        def stop(self):
            pass

        def on_image(self, frame):
            pass

        def on_pose(self, pose):
            pass

        def on_bad_message(self, source, reason, detail):
            pass

        def tick(self):
            self.ticks.append(self.clock())

        def publish_diagnostics(self):
            pass

    node = threading.Thread(target=dds_node.run_dds_node, args=(config, fake_engine, stop),
                            kwargs={'use_sim_time': True, 'core_factory': ClockProbe})
    node.start()
    try:
        with dds.DdsTransport(domain) as transport:
            clock = transport.publisher('/clock', rt.CLOCK, dds.DEFAULT)
            assert clock.wait_for_subscribers(1, timeout=30)
            sim = 100_000 * MS
            for _ in range(50):  # 50 x 10 ms of sim time
                sim += 10 * MS
                clock.publish(rt.clock_msg(sim))
                time.sleep(0.005)
            assert dt.wait_until(lambda: len(seen['core'].ticks) >= 10)
            ticks = list(seen['core'].ticks)
    finally:
        stop.set()
        node.join(30)
    assert not node.is_alive()
    # Every tick read sim time (100 s ...), never the wall clock; 50 Hz over 0.5 s of sim time
    # is at most 26 ticks (the first /clock, then one per 20 ms of sim time).
    assert all(100_000 * MS < t <= 100_500 * MS for t in ticks)
    assert 10 <= len(seen['core'].ticks) <= 26 and ticks == sorted(ticks)


def _diag_value(msg, key: str) -> str | None:
    return next((kv.value for kv in msg.status[0].values if kv.key == key), None)


def test_tf_pose_input_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match='needs the rclpy backend'):
        dds_node.run_dds_node(NodeConfig.from_dict({'pose_input': {'source': 'tf'}}),
                              engine=None, stop_event=threading.Event())
