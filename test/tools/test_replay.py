"""Bag replay: the output bag checked value by value against Engine.infer on observations built
here from the bag's messages; tick actions recomputed from the chunks; determinism; metrics;
bad inputs; Ctrl-C / SIGTERM keep what was computed."""

import argparse
import json
import os
import signal

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from vit_perception.config import load_node_config
from vit_perception.core.engine import Engine
from vit_perception.core.types import ActionChunkResult, ImageFrame, Observation, PoseSample
from vit_perception.drivers import ros_types as rt
from vit_perception.drivers.outputs import MessageOutputs
from vit_perception.errors import BagError
from vit_perception.model.checkpoint import save_checkpoint
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy
from vit_perception.tools import replay, report

S = 1_000_000_000
MS = 1_000_000
T0 = 3 * S
IDENTITY = [0.0, 0.0, 0.0, 1.0]
NAMES = list(tiny_config().actions.names)
PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_policy(tiny_config()), tmp_path_factory.mktemp('ckpt') / 'tiny')


def make_engine(checkpoint):
    return Engine.from_checkpoint(checkpoint, device='cpu', dtype='fp32', warmup_iters=0)


def node_config(checkpoint, *overrides):
    return load_node_config(None, [f'engine.model={checkpoint}', 'engine.device=cpu',
                                   'engine.dtype=fp32', 'engine.warmup_iters=0', *overrides])


def position(k):
    """Pose k (every 10 ms): dyadic values, so the midpoint interpolation is exact."""
    return np.array([0.25 + k / 64, -k / 128, 0.5])


def image_pixels(k):
    return np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def image_stamp(k):
    """Images every 50 ms, halfway between two poses (the pose arrives after the image)."""
    return T0 + 5 * MS + k * 50 * MS


def expert(t):
    return np.sin(np.arange(len(NAMES)) + t / S * 3.0)


def write_bag(path, storage, messages, topics):
    """rosbags Writer directly: messages = [(log_ns, topic, msg or raw CDR bytes)]."""
    store = rt.typestore()
    writer = Writer(path, version=8, storage_plugin=PLUGINS[storage])
    writer.open()
    connections = {t: writer.add_connection(t, m, typestore=store) for t, m in topics.items()}
    for log_ns, topic, msg in sorted(messages, key=lambda m: m[0]):
        data = msg if isinstance(msg, bytes) else store.serialize_cdr(msg, topics[topic])
        writer.write(connections[topic], log_ns, data)
    writer.close()
    return path


TOPICS = {'/camera/image_raw': rt.IMAGE, '/ee_pose': rt.POSE_STAMPED,
          '/expert/action': rt.ACTION_CHUNK}


def episode_messages(images=8):
    """Poses at 100 Hz (received 1 ms late), images at 20 Hz (2 ms late), expert at 20 Hz."""
    messages = []
    for k in range(images * 5 + 2):
        t = T0 + k * 10 * MS
        messages.append((t + MS, '/ee_pose', rt.pose_msg(t, 'base', position(k), IDENTITY)))
    for k in range(images):
        t = image_stamp(k)
        messages.append((t + 2 * MS, '/camera/image_raw',
                         rt.image_msg(t, 'camera', image_pixels(k), 'rgb8')))
        te = T0 + k * 50 * MS
        messages.append((te, '/expert/action', rt.action_chunk_msg(te, NAMES, 0.1, expert(te),
                                                                   te)))
    return messages


def episode_bag(path, storage='mcap', images=8):
    return write_bag(path, storage, episode_messages(images), TOPICS)


def expected_observation(k):
    """What the core should build for image k, computed here: pose halfway between samples."""
    frame = ImageFrame(stamp_ns=image_stamp(k), frame_id='camera',
                       data=image_pixels(k).tobytes(), height=32, width=32, encoding='rgb8',
                       step=96)
    pose = PoseSample(image_stamp(k), 'base', (position(5 * k) + position(5 * k + 1)) / 2,
                      np.array(IDENTITY))
    return Observation(stamp_ns=image_stamp(k), frames=(frame,), poses=(pose,))


def read_outputs(path):
    """{topic: [(log_ns, msg)]} of an output bag, read with rosbags alone."""
    out = {}
    with Reader(path) as reader:
        for connection, log_ns, raw in reader.messages():
            out.setdefault(connection.topic, []).append(
                (log_ns, rt.deserialize(bytes(raw), connection.msgtype)))
    return out


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    return replay.run(parser.parse_args([str(a) for a in argv]))


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_outputs_equal_engine_on_observations_built_from_the_bag(tmp_path, checkpoint, storage):
    bag = episode_bag(tmp_path / 'in', storage)
    result = replay.replay(bag, node_config(checkpoint), make_engine(checkpoint),
                           tmp_path / 'out', storage=storage)
    assert result.status == 'complete' and result.error is None
    outputs = read_outputs(tmp_path / 'out')
    embeddings = outputs['/vit_perception/embedding']
    chunks = outputs['/vit_perception/action_chunk']
    assert len(embeddings) == len(chunks) == 8
    reference = make_engine(checkpoint)
    for k, ((log_e, emb), (log_c, chunk)) in enumerate(zip(embeddings, chunks)):
        expected = reference.infer(expected_observation(k))
        # inference runs when the pose after the image arrives: stamp + 5 ms + 1 ms late
        assert log_e == log_c == image_stamp(k) + 6 * MS
        assert rt.stamp_ns(emb.header.stamp) == image_stamp(k)
        assert (emb.header.frame_id, emb.model_id, list(emb.shape)) == ('camera',
                                                                        'vit_perception', [16])
        np.testing.assert_array_equal(rt.embedding_from_msg(emb), expected.embedding)
        data = rt.chunk_from_msg(chunk)
        assert data.stamp_ns == data.observation_stamp_ns == image_stamp(k)
        assert (data.names, data.dt, data.chunk.shape) == (NAMES, 0.1, (4, len(NAMES)))
        np.testing.assert_array_equal(data.chunk, expected.chunk)
    assert result.metrics['counts']['inferences'] == 8
    assert result.metrics['drops'] == {}


def raw_outputs(path):
    """{topic: [(log_ns, CDR bytes)]} of an output bag."""
    out = {}
    with Reader(path) as reader:
        for connection, log_ns, raw in reader.messages():
            out.setdefault(connection.topic, []).append((log_ns, bytes(raw)))
    return out


def test_output_bag_holds_the_bytes_the_live_nodes_publish(tmp_path, checkpoint,
                                                           capturing_transport):
    """Replay publishes through drivers/outputs.MessageOutputs: frame_id (the pose frame),
    hardware_id (the node name), twist and diagnostics are what the DDS and rclpy nodes send."""
    config = node_config(checkpoint, 'sync.pose_frame_id=base', 'topics.twist=/cmd_vel',
                         'diagnostics_period=0.1')
    replay.replay(episode_bag(tmp_path / 'in'), config, make_engine(checkpoint),
                  tmp_path / 'out', diagnostics=True)
    written = raw_outputs(tmp_path / 'out')
    live = MessageOutputs(capturing_transport.make_publisher, config, make_engine(checkpoint),
                          clock=lambda: 0)
    topics = config.topics
    for _, cdr in written[topics.action_chunk]:
        data = rt.chunk_from_msg(rt.deserialize(cdr, rt.ACTION_CHUNK))
        assert data.frame_id == 'base'
        live.publish_chunk(ActionChunkResult(data.observation_stamp_ns, np.zeros(16), data.chunk))
    for log_ns, cdr in written[topics.action]:
        data = rt.chunk_from_msg(rt.deserialize(cdr, rt.ACTION_CHUNK))
        live.publish_action(log_ns, data.chunk[0], data.observation_stamp_ns)
    assert [c for _, c in written[topics.action_chunk]] == capturing_transport.sent(
        topics.action_chunk)
    assert [c for _, c in written[topics.action]] == capturing_transport.sent(topics.action)
    assert len(written['/cmd_vel']) == len(written[topics.action]) > 10
    for (_, ours), theirs in zip(written['/cmd_vel'], capturing_transport.sent('/cmd_vel')):
        # the twist is computed from the float64 action, the action message holds float32
        ours, theirs = (rt.deserialize(c, rt.TWIST_STAMPED) for c in (ours, theirs))
        assert (ours.header.frame_id, rt.stamp_ns(ours.header.stamp)) == (
            theirs.header.frame_id, rt.stamp_ns(theirs.header.stamp))
        np.testing.assert_allclose([ours.twist.linear.x, ours.twist.angular.z],
                                   [theirs.twist.linear.x, theirs.twist.angular.z], rtol=1e-6)
    diagnostics = rt.deserialize(written[topics.diagnostics][0][1], rt.DIAGNOSTIC_ARRAY)
    assert (diagnostics.status[0].name, diagnostics.status[0].hardware_id) == (
        'vit_perception: perception', 'vit_perception')


def test_tick_actions_are_the_newest_chunk_step_at_each_control_boundary(tmp_path, checkpoint):
    bag = episode_bag(tmp_path / 'in')
    config = node_config(checkpoint, 'control.ensemble_coeff=-1', 'control.control_rate_hz=50')
    replay.replay(bag, config, make_engine(checkpoint), tmp_path / 'out')
    outputs = read_outputs(tmp_path / 'out')
    chunks = [(log, rt.chunk_from_msg(m)) for log, m in outputs['/vit_perception/action_chunk']]
    actions = [(log, rt.chunk_from_msg(m)) for log, m in outputs['/vit_perception/action']]
    last_log = max(log for log, *_ in episode_messages())
    period = 20 * MS
    first = -(-chunks[0][0] // period) * period
    assert [log for log, _ in actions] == list(range(first, last_log + 1, period))
    for log, action in actions:
        assert action.stamp_ns == log and action.chunk.shape == (1, len(NAMES))
        assert action.names == NAMES
        newest = [c for computed, c in chunks if computed <= log][-1]
        assert action.observation_stamp_ns == newest.stamp_ns
        step = (log - newest.stamp_ns + 50 * MS) // (100 * MS)  # round((t - s) / dt)
        np.testing.assert_array_equal(action.chunk[0], newest.chunk[step])


def test_late_fusion_checkpoint_replays_with_pose_refresh_at_the_ticks(tmp_path):
    torch.manual_seed(0)
    late = save_checkpoint(build_policy(tiny_config(fusion__mode='late')), tmp_path / 'late')
    bag = episode_bag(tmp_path / 'in')
    config = node_config(late, 'control.control_rate_hz=50')
    result = replay.replay(bag, config, make_engine(late), tmp_path / 'out')
    assert result.status == 'complete' and result.error is None
    assert result.metrics['drops'] == {}
    assert result.metrics['throughput']['engine_calls']['refresh'] > 0
    outputs = read_outputs(tmp_path / 'out')
    chunks = {rt.chunk_from_msg(m).stamp_ns for _, m in outputs['/vit_perception/action_chunk']}
    actions = [rt.chunk_from_msg(m) for _, m in outputs['/vit_perception/action']]
    assert len(chunks) == 8 and len(actions) > 8
    assert {a.observation_stamp_ns for a in actions} <= chunks
    assert all(np.isfinite(a.chunk).all() for a in actions)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_same_bag_and_checkpoint_give_byte_identical_output(tmp_path, checkpoint, storage):
    bag = episode_bag(tmp_path / 'in', storage)
    suffix = '.mcap' if storage == 'mcap' else '.db3'
    files = []
    for run in ('a', 'b'):
        (tmp_path / run).mkdir()
        replay.replay(bag, node_config(checkpoint), make_engine(checkpoint),
                      tmp_path / run / 'out', storage=storage)
        files.append([(tmp_path / run / 'out' / name).read_bytes()
                      for name in ('metadata.yaml', f'out{suffix}')])
    assert files[0] == files[1]
    assert len(read_outputs(tmp_path / 'a' / 'out')['/vit_perception/action']) > 0


def test_cli_report_metrics_match_the_output_bag(tmp_path, checkpoint, capsys):
    bag = episode_bag(tmp_path / 'in', images=12)
    assert run_cli(bag, '--model', checkpoint, '--set', 'engine.device=cpu', '--set',
                   'engine.warmup_iters=0', '--out', tmp_path / 'out.mcap', '--report',
                   tmp_path / 'report', '--profile') == 0
    err = capsys.readouterr().err
    assert 'replay: complete: 12 inferences' in err and 'replay profile: wall' in err
    metrics = json.loads((tmp_path / 'report' / 'metrics.json').read_text())
    outputs = read_outputs(tmp_path / 'out')
    actions = [(log, rt.chunk_from_msg(m).chunk[0]) for log, m in
               outputs['/vit_perception/action']]
    assert metrics['status'] == 'complete'
    assert metrics['counts']['inferences'] == 12
    assert metrics['counts']['actions'] == len(actions)
    assert metrics['counts']['messages'] == {'image': 12, 'pose': 62, 'extra': 12}
    # tick MAE recomputed here: recorded action in effect = newest expert stamp <= tick time
    recorded = [(T0 + k * 50 * MS, expert(T0 + k * 50 * MS)) for k in range(12)]
    errors = []
    for log, action in actions:
        ref = [a for t, a in recorded if t <= log][-1]
        errors.append(action.astype(np.float64) - ref)
    errors = np.array(errors)  # (T, A)
    tick = metrics['actions']['tick']
    for i, name in enumerate(NAMES):
        assert tick['per_dim'][name]['mae'] == pytest.approx(np.abs(errors[:, i]).mean(),
                                                             rel=1e-6)
        assert tick['per_dim'][name]['rmse'] == pytest.approx(
            np.sqrt((errors[:, i] ** 2).mean()), rel=1e-6)
    assert len(metrics['actions']['horizon_mae']) == 4
    throughput = metrics['throughput']
    assert 0 < throughput['wall_s']['engine'] <= throughput['wall_s']['total']
    assert throughput['engine_calls']['infer'] == 12
    for name in report.PLOTS:
        assert (tmp_path / 'report' / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        assert f']({name})' in (tmp_path / 'report' / 'report.md').read_text()


def test_bad_inputs_are_counted_and_the_run_continues(tmp_path, checkpoint):
    messages = episode_messages(6)
    broken = rt.msg_class(rt.IMAGE)(header=rt.header_msg(image_stamp(2), 'camera'), height=32,
                                    width=32, encoding='rgb8', is_bigendian=0, step=96,
                                    data=np.zeros(10, np.uint8))  # 10 bytes for 32x32 rgb8
    cdr = bytes(rt.serialize(rt.image_msg(image_stamp(4), 'camera', image_pixels(4), 'rgb8')))
    replaced = {image_stamp(2): broken, image_stamp(4): cdr[:40]}
    bad = []
    for log, topic, msg in messages:
        stamp = log - 2 * MS
        if topic == '/camera/image_raw' and stamp in replaced:
            msg = replaced[stamp]
        bad.append((log, topic, msg))
    # a repeated image stamp and a pose older than the newest one
    bad.append((image_stamp(3) + 3 * MS, '/camera/image_raw',
                rt.image_msg(image_stamp(3), 'camera', image_pixels(3), 'rgb8')))
    bad.append((T0 + 101 * MS, '/ee_pose', rt.pose_msg(T0 + 5 * MS, 'base', [0, 0, 0],
                                                       IDENTITY)))
    bag = write_bag(tmp_path / 'in', 'mcap', bad, TOPICS)
    result = replay.replay(bag, node_config(checkpoint), make_engine(checkpoint),
                           tmp_path / 'out')
    assert result.status == 'complete'
    assert result.metrics['drops'] == {'bad_image': 1, 'bag_deserialize': 1,
                                       'image_duplicate': 1, 'pose_out_of_order': 1}
    stamps = [rt.stamp_ns(m.header.stamp)
              for _, m in read_outputs(tmp_path / 'out')['/vit_perception/embedding']]
    assert stamps == [image_stamp(k) for k in (0, 1, 3, 5)]


def test_keyboard_interrupt_keeps_a_readable_bag_with_what_was_computed(tmp_path, checkpoint):
    bag = episode_bag(tmp_path / 'in')
    engine = make_engine(checkpoint)
    infer = engine.infer
    calls = []

    def interrupted_infer(obs):
        calls.append(obs.stamp_ns)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return infer(obs)

    engine.infer = interrupted_infer
    result = replay.replay(bag, node_config(checkpoint), engine, tmp_path / 'out',
                           report=tmp_path / 'report')
    assert result.status == 'interrupted'
    outputs = read_outputs(tmp_path / 'out')
    stamps = [rt.stamp_ns(m.header.stamp) for _, m in outputs['/vit_perception/embedding']]
    assert stamps == [image_stamp(k) for k in range(3)]
    reference = make_engine(checkpoint)
    for k, (_, chunk) in enumerate(outputs['/vit_perception/action_chunk']):
        np.testing.assert_array_equal(rt.chunk_from_msg(chunk).chunk,
                                      reference.infer(expected_observation(k)).chunk)
    metrics = json.loads((tmp_path / 'report' / 'metrics.json').read_text())
    assert metrics['status'] == 'interrupted' and metrics['counts']['inferences'] == 3


def test_sigterm_stops_after_the_current_message_and_closes_the_bag(tmp_path, checkpoint):
    bag = episode_bag(tmp_path / 'in', 'sqlite3')
    engine = make_engine(checkpoint)
    infer = engine.infer
    calls = []

    def infer_then_terminate(obs):
        calls.append(obs.stamp_ns)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the stop flag
        return infer(obs)

    engine.infer = infer_then_terminate
    previous = signal.getsignal(signal.SIGTERM)
    result = replay.replay(bag, node_config(checkpoint), engine, tmp_path / 'out',
                           storage='sqlite3')
    assert signal.getsignal(signal.SIGTERM) is previous
    assert result.status == 'interrupted' and len(calls) == 3
    outputs = read_outputs(tmp_path / 'out')
    assert len(outputs['/vit_perception/embedding']) == 3


def test_bag_corrupt_part_way_writes_outputs_then_raises(tmp_path, checkpoint):
    from rosbags.rosbag2.storage_mcap import McapReader

    messages = []
    for k in range(60):
        t = T0 + k * 10 * MS
        messages.append((t + MS, '/ee_pose', rt.pose_msg(t, 'base', position(k), IDENTITY)))
        big = np.random.default_rng(k).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        messages.append((t + 2 * MS, '/camera/image_raw', rt.image_msg(t, 'camera', big,
                                                                       'rgb8')))
    bag = write_bag(tmp_path / 'in', 'mcap', messages, TOPICS)
    storage_file = bag / 'in.mcap'
    reader = McapReader(storage_file)
    reader.open()
    second = reader.chunks[1].chunk_start_offset
    reader.close()
    data = bytearray(storage_file.read_bytes())
    data[second + 17:second + 57] = b'\xff' * 40
    storage_file.write_bytes(bytes(data))
    with pytest.raises(BagError, match='truncated or corrupt'):
        run_cli(bag, '--model', checkpoint, '--set', 'engine.device=cpu', '--out',
                tmp_path / 'out', '--report', tmp_path / 'report')
    metrics = json.loads((tmp_path / 'report' / 'metrics.json').read_text())
    assert metrics['status'].startswith('error: ')
    embeddings = read_outputs(tmp_path / 'out')['/vit_perception/embedding']
    assert 0 < len(embeddings) == metrics['counts']['inferences'] < 60


def test_missing_topic_and_bad_output_path_are_one_line_errors(tmp_path, checkpoint):
    bag = episode_bag(tmp_path / 'in', images=2)
    with pytest.raises(BagError) as err:
        run_cli(bag, '--model', checkpoint, '--set', 'topics.pose=/tf_pose')
    assert '\n' not in str(err.value)
    assert '/ee_pose: geometry_msgs/msg/PoseStamped' in str(err.value)
    (tmp_path / 'taken').mkdir()
    with pytest.raises(BagError, match='exists already'):
        replay.replay(bag, node_config(checkpoint), make_engine(checkpoint), tmp_path / 'taken')


def test_bag_without_recorded_action_still_replays(tmp_path, checkpoint):
    messages = [m for m in episode_messages(3) if m[1] != '/expert/action']
    bag = write_bag(tmp_path / 'in', 'mcap', messages, TOPICS)
    result = replay.replay(bag, node_config(checkpoint), make_engine(checkpoint),
                           tmp_path / 'out', action_topic='/teleop', report=tmp_path / 'r')
    assert result.metrics['actions'] == {'available': False,
                                         'reason': 'topic /teleop not in the bag'}
    assert result.metrics['counts']['inferences'] == 3
    assert 'No recorded action' in (tmp_path / 'r' / 'report.md').read_text()


# ---------------------------------------------------------------------------------------------
# Metrics (report.py) on hand-made records
# ---------------------------------------------------------------------------------------------

def test_action_errors_tick_horizon_and_baseline_by_hand():
    record = report.ReplayRecord(action_names=['a', 'b'], dt=0.1, horizon=3)
    # recorded: a = 1 for t < 1 s, a = 3 from 1 s; b never recorded (NaN); every 100 ms
    record.recorded = [(k * 100 * MS, np.array([1.0 if k < 10 else 3.0, np.nan]))
                       for k in range(20)]
    record.tick_times = [500 * MS, 1500 * MS, 5000 * MS]  # the last one is past the recording
    record.tick_actions = [np.array([2.0, 7.0])] * 3
    record.tick_obs_stamps = [0, 0, 0]
    record.chunks = [(900 * MS, 900 * MS, np.array([[1.0, 0], [1.0, 0], [1.0, 0]]))]
    errors = report.action_errors(record)
    assert errors['scored_dims'] == ['a']
    assert errors['tick']['per_dim']['a'] == {'mae': 1.0, 'rmse': 1.0, 'n': 2}
    assert errors['tick']['per_dim']['b'] is None
    # chunk steps at 0.9 s (recorded 1), 1.0 s and 1.1 s (recorded 3)
    assert errors['horizon_mae'] == [0.0, 2.0, 2.0]
    assert errors['baseline_action'] == {'a': 2.0, 'b': None}
    assert errors['baseline']['per_dim']['a'] == {'mae': 1.0, 'rmse': 1.0, 'n': 2}


def test_recorded_action_maps_twist_pose_and_chunk_names():
    names = ['dx', 'dy', 'dz', 'drx', 'dry', 'drz', 'gripper']
    vector = rt.msg_class('geometry_msgs/msg/Vector3')
    twist = rt.msg_class('geometry_msgs/msg/TwistStamped')(
        header=rt.header_msg(7 * S), twist=rt.msg_class('geometry_msgs/msg/Twist')(
            linear=vector(x=1.0, y=2.0, z=3.0), angular=vector(x=4.0, y=5.0, z=6.0)))
    stamp, values = report.recorded_action(twist, 'geometry_msgs/msg/TwistStamped', names, 9)
    assert stamp == 7 * S
    np.testing.assert_array_equal(values[:6], [1, 2, 3, 4, 5, 6])
    assert np.isnan(values[6])
    pose = rt.pose_msg(0, 'base', [0.1, 0.2, 0.3], [0, 0, 1, 0])
    stamp, values = report.recorded_action(pose, rt.POSE_STAMPED, ['z', 'qz', 'dx'], 11)
    assert stamp == 11  # header stamp 0: the log time
    np.testing.assert_array_equal(values[:2], [0.3, 1.0])
    chunk = rt.action_chunk_msg(S, ['gripper', 'dx'], 0.1, np.array([[0.5, -1.0]]), S)
    _, values = report.recorded_action(chunk, rt.ACTION_CHUNK, names, 0)
    assert values[0] == -1.0 and values[6] == 0.5 and np.isnan(values[1:6]).all()


# --------------------------------------------------------------------- hostile bags and kills ---

def test_a_gap_of_days_in_the_bag_clock_is_skipped_and_reported(tmp_path, checkpoint):
    gap = 10**6 * S  # 11.6 days: ticking through it at 50 Hz would take 5e7 ticks
    first = episode_messages(4)
    later = [(t + gap, topic, msg) for t, topic, msg in episode_messages(4)]  # new objects
    for _, topic, msg in later:  # stamps move with the log times
        if topic == '/ee_pose' or topic == '/camera/image_raw':
            msg.header.stamp.sec += gap // S
    bag = write_bag(tmp_path / 'in', 'mcap', first + later, TOPICS)
    config = node_config(checkpoint, 'control.control_rate_hz=50')
    result = replay.replay(bag, config, make_engine(checkpoint), tmp_path / 'out')
    assert result.status == 'complete'
    gaps, counts = result.metrics['clock_gaps'], result.metrics['counts']
    period = S // 50
    last_before = max(t for t, *_ in first)
    first_tick = -(-min(t for t, *_ in first) // period) * period
    boundaries = (max(t for t, *_ in later) - first_tick) // period + 1
    assert gaps['count'] == 1 and counts['ticks'] + gaps['skipped_ticks'] == boundaries
    assert counts['ticks'] < 200 and gaps['longest_s'] == pytest.approx(
        (min(t for t, *_ in later) - last_before) / S, abs=1.0)
    outputs = read_outputs(tmp_path / 'out')
    assert len(outputs['/vit_perception/action_chunk']) == 8
    for _, action in outputs['/vit_perception/action']:  # never acted across the gap
        data = rt.chunk_from_msg(action)
        assert 0 <= data.stamp_ns - data.observation_stamp_ns <= 0.5 * S


def test_no_gap_is_reported_for_an_ordinary_bag(tmp_path, checkpoint):
    result = replay.replay(episode_bag(tmp_path / 'in'), node_config(checkpoint),
                           make_engine(checkpoint), tmp_path / 'out')
    assert result.metrics['clock_gaps'] == {'count': 0, 'skipped_ticks': 0, 'longest_s': 0.0}
    assert result.metrics['output_messages'] == len(
        [m for msgs in read_outputs(tmp_path / 'out').values() for m in msgs])


class _CountingCore:
    """Stands in for PerceptionCore in _Loop: counts ticks, sets `stop` at tick `stop_at`."""

    def __init__(self, stop, stop_at):
        self.stop, self.stop_at, self.ticks = stop, stop_at, 0
        self.outputs = self

    def tick(self):
        self.ticks += 1
        if self.ticks == self.stop_at:
            self.stop.set()

    def log(self, level, text):
        pass

    def run_pending(self):
        pass

    def publish_diagnostics(self):
        pass

    def on_pose(self, pose):
        pass


def test_a_signal_while_ticking_through_a_long_stretch_stops_within_64_ticks(checkpoint):
    import threading

    from vit_perception.drivers.bag import BagEvent

    config = node_config(checkpoint, 'control.control_rate_hz=1000', 'sync.max_future=60',
                         'sync.max_observation_age=60')  # 120 s = 120000 ticks without a skip
    stop = threading.Event()
    core = _CountingCore(stop, stop_at=10)
    record = report.ReplayRecord(action_names=NAMES, dt=0.1, horizon=4)
    loop = replay._Loop(config, core, replay.BagClock(), record, None, '', None, stop)
    loop.handle(BagEvent('pose', T0, '/ee_pose', None))
    loop.handle(BagEvent('pose', T0 + 100 * S, '/ee_pose', None))
    assert stop.is_set() and 10 <= core.ticks < 10 + replay.SIGNAL_CHECK_TICKS
    assert record.gaps == []


KILLED_REPLAY = """
import sys, time
from vit_perception.core.engine import Engine
from vit_perception.tools import cli
infer = Engine.infer
def slow_infer(self, obs):
    time.sleep(0.01)  # a slower model, so the kill lands part-way
    return infer(self, obs)
Engine.infer = slow_infer
sys.exit(cli.main(['replay', sys.argv[1], '--model', sys.argv[2], '--out', sys.argv[3],
                   '--storage', sys.argv[4], '--set', 'engine.warmup_iters=0',
                   '--set', 'engine.dtype=fp32', '--set', 'engine.device=cpu']))
"""


@pytest.mark.slow
@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_kill_9_keeps_every_message_up_to_the_last_checkpoint(tmp_path, checkpoint, storage):
    import subprocess
    import sys
    import time
    from pathlib import Path

    from vit_perception.drivers.bag import _open_reader

    bag = episode_bag(tmp_path / 'in', 'mcap', images=400)
    out = tmp_path / 'out'
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    child = subprocess.Popen([sys.executable, '-c', KILLED_REPLAY, str(bag), str(checkpoint),
                              str(out), storage], env=env, stderr=subprocess.PIPE)
    storage_file = out / f'out.{"mcap" if storage == "mcap" else "db3"}'
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if storage_file.exists() and storage_file.stat().st_size > 64 << 10:
            break
        time.sleep(0.01)
    child.kill()  # SIGKILL: no handler, no close
    child.wait()
    child.stderr.close()
    assert not (out / 'metadata.yaml').exists(), 'the replay finished before the kill'
    reader = _open_reader(out)
    try:
        count = sum(1 for _ in reader.messages())
        topics = {c.topic for c in reader.connections}
    finally:
        reader.close()
    assert count > 0 and count % 200 == 0  # checkpoints every 200 messages
    assert '/vit_perception/action_chunk' in topics


def test_a_model_that_overflows_publishes_nothing_non_finite(tmp_path):
    torch.manual_seed(0)
    policy = build_policy(tiny_config())
    with torch.no_grad():
        policy.action_head[-1].weight.fill_(3e38)  # finite weights, infinite outputs
    overflowing = save_checkpoint(policy, tmp_path / 'overflow')
    bag = episode_bag(tmp_path / 'in', images=4)
    result = replay.replay(bag, node_config(overflowing), make_engine(overflowing),
                           tmp_path / 'out')
    assert result.status == 'complete'
    assert result.metrics['drops'] == {'non_finite': 4}
    assert result.metrics['counts']['inferences'] == 0 and result.metrics['counts']['actions'] == 0
    outputs = read_outputs(tmp_path / 'out')
    assert sum(len(v) for v in outputs.values()) == 0
