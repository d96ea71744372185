"""Graceful shutdown of the CLI processes: SIGINT / SIGTERM end `vit-perception node --backend
dds` (while it is busy with images and poses) and `vit-perception replay` (half-way through a
bag) with exit code 0 and no traceback; replay's output bag is complete and readable afterwards.

The processes are `python -m vit_perception.tools.cli SUBCOMMAND ...` (live_bench.cli_command).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from vit_perception.drivers import dds
from vit_perception.drivers import ros_types as rt
from vit_perception.model.config import tiny_config
from vit_perception.tools import harness
from vit_perception.tools import live_bench as lb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'drivers'))  # DDS test helpers
import dds_testing as dt  # noqa: E402

S, MS = 1_000_000_000, 1_000_000
ENGINE = ['engine.device=cpu', 'engine.dtype=fp32', 'engine.warmup_iters=0']
SIGNALS = [pytest.param(signal.SIGINT, id='SIGINT'), pytest.param(signal.SIGTERM, id='SIGTERM')]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return lb.save_random_checkpoint(tmp_path_factory.mktemp('shutdown') / 'tiny',
                                     policy_config=tiny_config())


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize('sig', SIGNALS)
def test_dds_node_exits_0_on_signal_while_busy(sig, checkpoint, monkeypatch):
    domain = dt.use_loopback(monkeypatch)
    node = harness.NodeProcess(checkpoint, domain, ENGINE + ['diagnostics_period=0.2'])
    stop = threading.Event()
    feeder = None
    try:
        node.start()
        with dds.DdsTransport(domain) as transport:
            recorder = lb.OutputRecorder(transport)
            images = transport.publisher('/camera/image_raw', rt.IMAGE, dds.SENSOR_DATA)
            poses = transport.publisher('/ee_pose', rt.POSE_STAMPED, dds.DEFAULT)
            node.wait_running()
            assert images.wait_for_subscribers(1, 30) and poses.wait_for_subscribers(1, 30)
            pixels = np.zeros((48, 64, 3), np.uint8)

            def feed():  # 30 Hz camera, 200 Hz pose, until the node is gone
                k = 0
                while not stop.wait(0.005):
                    now = time.time_ns()
                    poses.publish(rt.pose_msg(now, 'base', [0.4, 0.0, 0.3], [0, 0, 0, 1]))
                    if k % 7 == 0:
                        images.publish(rt.image_msg(now - 10 * MS, 'cam', pixels, 'rgb8'))
                    k += 1

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            assert harness.wait_for(lambda: len(recorder.snapshot().chunks) >= 5 and
                               len(recorder.snapshot().actions) >= 5, timeout=30), \
                node.stderr()[-3000:]
            started = time.monotonic()
            code = node.stop(sig, timeout=30)  # killed (code -9) if it hangs
            elapsed = time.monotonic() - started
            stop.set()
            feeder.join(5)
    finally:
        stop.set()
        node.kill()
    stderr = node.stderr()
    node.close()
    print(f'\n{sig.name}: node exited with {code} after {elapsed:.2f} s')
    assert code == 0, stderr[-3000:]
    assert 'Traceback' not in stderr and 'Exception' not in stderr, stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize('sig', [
    pytest.param(signal.SIGINT, id='SIGINT'),
    pytest.param(signal.SIGTERM, id='SIGTERM'),
])
def test_dds_node_exits_0_on_signal_while_loading_the_model(sig, checkpoint, monkeypatch):
    domain = dt.use_loopback(monkeypatch)
    # 2000 warm-up passes at 640x480: seconds of loading to send the signal into.
    node = harness.NodeProcess(checkpoint, domain, ENGINE[:-1] + ['engine.warmup_iters=2000'])
    try:
        node.start()
        assert harness.wait_for(lambda: 'vit-perception node: loading' in node.stderr() or
                           not node.alive(), timeout=60)
        time.sleep(0.5)
        assert harness.DDS_READY not in node.stderr()  # still loading
        code = node.stop(sig, timeout=30)
    finally:
        node.kill()
    stderr = node.stderr()
    node.close()
    assert code == 0, stderr[-3000:]
    assert 'Traceback' not in stderr


def write_bag(path: Path, seconds: float) -> Path:
    """A rosbag2 (mcap) with a 32x32 camera at 30 Hz and the pose at 100 Hz."""
    store = rt.typestore()
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    cam = writer.add_connection('/camera/image_raw', rt.IMAGE, typestore=store)
    pose = writer.add_connection('/ee_pose', rt.POSE_STAMPED, typestore=store)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
    t0 = 5 * S
    for k in range(int(seconds * 100)):
        t = t0 + k * 10 * MS
        writer.write(pose, t + MS, store.serialize_cdr(
            rt.pose_msg(t, 'base', [0.4 + k * 1e-4, 0.0, 0.3], [0, 0, 0, 1]), rt.POSE_STAMPED))
        if k % 3 == 0:
            writer.write(cam, t + 2 * MS, store.serialize_cdr(
                rt.image_msg(t, 'cam', frames[k % 8], 'rgb8'), rt.IMAGE))
    writer.close()
    return path


@pytest.fixture(scope='module')
def long_bag(tmp_path_factory):
    return write_bag(tmp_path_factory.mktemp('bag') / 'long', seconds=120.0)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize('sig, storage', [pytest.param(signal.SIGINT, 'mcap', id='SIGINT-mcap'),
                                          pytest.param(signal.SIGTERM, 'sqlite3',
                                                       id='SIGTERM-sqlite3')])
def test_replay_interrupted_keeps_a_complete_readable_bag(sig, storage, checkpoint, long_bag,
                                                          tmp_path):
    out = tmp_path / 'out'
    log = tmp_path / 'replay.log'
    argv = harness.cli_command('replay', str(long_bag), '--model', str(checkpoint), '--out',
                               str(out), '--storage', storage,
                               *[a for s in ENGINE for a in ('--set', s)])
    with open(log, 'wb') as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, env=harness.loopback_env())
    try:
        # The output bag exists once the model is loaded and the replay loop has started.
        assert harness.wait_for(lambda: out.exists() or proc.poll() is not None, timeout=60)
        time.sleep(2.0)  # well into the bag (120 s of bag take longer than this to replay)
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors='replace')
    assert code == 0, text[-3000:]
    assert 'Traceback' not in text
    assert 'replay: interrupted' in text, text[-3000:]
    with Reader(out) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        messages = 0
        for connection, _, raw in reader.messages():
            rt.deserialize(raw, connection.msgtype)  # every message decodes
            messages += 1
        last_ns, total = reader.end_time, reader.message_count
    assert messages == total == sum(counts.values()) > 0
    assert counts['/vit_perception/action_chunk'] > 0 and counts['/vit_perception/action'] > 0
    assert last_ns < 5 * S + 120 * S  # interrupted before the end of the input bag
    print(f'\n{sig.name}: replay exited 0, output {storage} bag with {messages} messages '
          f'{counts}')
