"""Bag driver: BagInput reads what rosbags wrote (both storages, directory or single file),
BagOutput writes what rosbags reads back; bad bags give one-line BagErrors."""

import re

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from vit_perception.config import NodeConfig, load_node_config
from vit_perception.drivers import ros_types as rt
from vit_perception.drivers.bag import BagInput, BagOutput, qos_profile
from vit_perception.errors import BagError, ConfigError

S = 1_000_000_000
MS = 1_000_000
T0 = 5 * S
STORAGES = {'mcap': ('.mcap', StoragePlugin.MCAP), 'sqlite3': ('.db3', StoragePlugin.SQLITE3)}


def write_bag(path, storage, messages, topics):
    """rosbags Writer directly (independent of BagOutput): messages = [(log_ns, topic, msg)]."""
    store = rt.typestore()
    writer = Writer(path, version=8, storage_plugin=STORAGES[storage][1])
    writer.open()
    connections = {topic: writer.add_connection(topic, msgtype, typestore=store)
                   for topic, msgtype in topics.items()}
    for log_ns, topic, msg in messages:
        data = msg if isinstance(msg, bytes) else store.serialize_cdr(msg, topics[topic])
        writer.write(connections[topic], log_ns, data)
    writer.close()
    return path


def pixels(k, shape=(6, 8, 3)):
    return (np.arange(np.prod(shape), dtype=np.uint32).reshape(shape) * 7 + k).astype(np.uint8)


def episode(n=5):
    """Poses every 10 ms, images every 50 ms (received 3 ms late), expert actions; shuffled in
    the write order so the reader has to sort by log time."""
    messages = []
    for k in range(n * 5):
        t = T0 + k * 10 * MS
        messages.append((t + MS, '/ee_pose', rt.pose_msg(t, 'base', [k / 8, -k / 16, 0.5],
                                                        [0.0, 0.0, 0.0, 1.0])))
    for k in range(n):
        t = T0 + k * 50 * MS
        messages.append((t + 3 * MS, '/camera/image_raw',
                         rt.image_msg(t, 'cam', pixels(k), 'rgb8')))
        messages.append((t + 2 * MS, '/expert/action',
                         rt.action_chunk_msg(t, ['a', 'b'], 0.1, np.array([k, -k]), t)))
    messages.sort(key=lambda m: (m[0] * 7919) % 1000)  # any non-time order
    topics = {'/ee_pose': rt.POSE_STAMPED, '/camera/image_raw': rt.IMAGE,
              '/expert/action': rt.ACTION_CHUNK}
    return messages, topics


@pytest.fixture(params=['mcap', 'sqlite3'])
def storage(request):
    return request.param


@pytest.mark.parametrize('single_file', [False, True])
def test_reads_images_poses_and_extra_in_log_time_order(tmp_path, storage, single_file):
    messages, topics = episode()
    path = write_bag(tmp_path / 'bag', storage, messages, topics)
    if single_file:
        path = path / f'bag{STORAGES[storage][0]}'
    with BagInput(path, NodeConfig(), ['/expert/action']) as bag:
        assert bag.topics == topics
        assert bag.message_count == 25 + 5 + 5
        assert bag.start_ns == T0 + MS
        assert bag.end_ns == T0 + 24 * 10 * MS + MS
        events = list(bag.events())
    times = [e.log_time_ns for e in events]
    assert times == sorted(times) and len(events) == 35
    images = [e for e in events if e.kind == 'image']
    poses = [e for e in events if e.kind == 'pose']
    extra = [e for e in events if e.kind == 'extra']
    assert (len(images), len(poses), len(extra)) == (5, 25, 5)
    for k, event in enumerate(images):
        frame = event.value
        assert event.log_time_ns == T0 + k * 50 * MS + 3 * MS
        assert (frame.stamp_ns, frame.frame_id, frame.camera) == (T0 + k * 50 * MS, 'cam', 0)
        assert (frame.height, frame.width, frame.encoding, frame.step) == (6, 8, 'rgb8', 24)
        np.testing.assert_array_equal(np.asarray(frame.data).reshape(6, 8, 3), pixels(k))
    for k, event in enumerate(poses):
        pose = event.value
        assert pose.stamp_ns == T0 + k * 10 * MS and pose.frame_id == 'base'
        np.testing.assert_array_equal(pose.position, [k / 8, -k / 16, 0.5])
        np.testing.assert_array_equal(pose.orientation, [0, 0, 0, 1])
    for k, event in enumerate(extra):
        np.testing.assert_array_equal(event.value.data, [k, -k])
        assert list(event.value.names) == ['a', 'b']


def test_multi_camera_compressed_topics(tmp_path, storage):
    png = cv2.imencode('.png', pixels(3))[1].tobytes()
    topics = {'/cam0/image_raw': rt.IMAGE, '/cam1/image_raw/compressed': rt.COMPRESSED_IMAGE,
              '/ee_pose': rt.POSE_STAMPED}
    messages = [(T0, '/ee_pose', rt.pose_msg(T0, 'base', [0, 0, 0], [0, 0, 0, 1])),
                (T0 + 1, '/cam0/image_raw', rt.image_msg(T0, 'c0', pixels(1), 'bgr8')),
                (T0 + 2, '/cam1/image_raw/compressed',
                 rt.compressed_image_msg(T0, 'c1', png, 'png'))]
    path = write_bag(tmp_path / 'bag', storage, messages, topics)
    config = load_node_config(None, [
        'topics.cameras=[/cam0/image_raw, /cam1/image_raw/compressed]',
        'topics.camera_transports=[raw, compressed]'])
    with BagInput(path, config) as bag:
        events = list(bag.events())
    assert [e.kind for e in events] == ['pose', 'image', 'image']
    raw, compressed = events[1].value, events[2].value
    assert (raw.camera, raw.encoding, raw.frame_id) == (0, 'bgr8', 'c0')
    assert (compressed.camera, compressed.format, compressed.frame_id) == (1, 'png', 'c1')
    assert bytes(np.asarray(compressed.data)) == png


def test_missing_topic_lists_what_the_bag_has(tmp_path, storage):
    messages, topics = episode(2)
    path = write_bag(tmp_path / 'bag', storage, messages, topics)
    config = load_node_config(None, ['topics.pose=/robot/pose'])
    with pytest.raises(BagError) as err:
        BagInput(path, config)
    text = str(err.value)
    assert '\n' not in text and '/robot/pose' in text
    for topic, msgtype in topics.items():
        assert f'{topic}: {msgtype}' in text
    with pytest.raises(BagError, match='/other not in the bag'):
        BagInput(path, NodeConfig(), ['/other'])
    with BagInput(path, NodeConfig(), ['/other'], require_extra=False) as bag:
        assert {e.kind for e in bag.events()} == {'image', 'pose'}


def test_wrong_type_names_expected_type(tmp_path, storage):
    messages, topics = episode(2)
    path = write_bag(tmp_path / 'bag', storage, messages, topics)
    config = load_node_config(None, ['topics.camera_transports=[compressed]'])
    with pytest.raises(BagError, match=re.escape(
            'topic /camera/image_raw has type sensor_msgs/msg/Image, expected '
            'sensor_msgs/msg/CompressedImage')):
        BagInput(path, config)
    config = load_node_config(None, ['topics.cameras=[/ee_pose]', 'topics.pose=/ee_pose'])
    with pytest.raises(ConfigError, match='used twice'):
        BagInput(path, config)


def test_empty_bag_and_topic_without_messages(tmp_path, storage):
    _, topics = episode(1)
    with pytest.raises(BagError, match='holds no messages'):
        BagInput(write_bag(tmp_path / 'empty', storage, [], topics), NodeConfig())
    only_poses = [(T0, '/ee_pose', rt.pose_msg(T0, 'base', [0, 0, 0], [0, 0, 0, 1]))]
    with pytest.raises(BagError, match='/camera/image_raw .* has no messages'):
        BagInput(write_bag(tmp_path / 'poses', storage, only_poses, topics), NodeConfig())


@pytest.mark.parametrize('fraction', [0.0, 0.5, 0.9])
def test_truncated_file_is_a_one_line_error(tmp_path, fraction):
    messages, topics = episode()
    path = write_bag(tmp_path / 'bag', 'mcap', messages, topics) / 'bag.mcap'
    data = path.read_bytes()
    cut = tmp_path / 'cut.mcap'
    cut.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(BagError) as err:
        BagInput(cut, NodeConfig())
    assert 'truncated or corrupt' in str(err.value) and '\n' not in str(err.value)


def test_unreadable_inputs(tmp_path):
    db3 = write_bag(tmp_path / 'bag', 'sqlite3', *episode()) / 'bag.db3'
    cut = tmp_path / 'cut.db3'
    cut.write_bytes(db3.read_bytes()[:len(db3.read_bytes()) // 2])
    with pytest.raises(BagError, match='truncated or corrupt'):
        BagInput(cut, NodeConfig())
    garbage = tmp_path / 'garbage.mcap'
    garbage.write_bytes(b'not a bag at all' * 20)
    with pytest.raises(BagError, match='truncated or corrupt'):
        BagInput(garbage, NodeConfig())
    with pytest.raises(BagError, match='bag not found'):
        BagInput(tmp_path / 'missing', NodeConfig())
    ros1 = tmp_path / 'old.bag'
    ros1.write_bytes(b'#ROSBAG V2.0\n')
    with pytest.raises(BagError, match="unsupported bag file '.bag'"):
        BagInput(ros1, NodeConfig())


def test_corrupt_chunk_part_way_delivers_events_before_the_error(tmp_path):
    from rosbags.rosbag2.storage_mcap import McapReader

    topics = {'/camera/image_raw': rt.IMAGE, '/ee_pose': rt.POSE_STAMPED}
    messages = [(T0 + k * MS, '/camera/image_raw',
                 rt.image_msg(T0 + k * MS, 'c', np.full((128, 128, 3), k, np.uint8), 'rgb8'))
                for k in range(40)]  # ~2 MB: more than one 1 MiB chunk
    messages.append((T0, '/ee_pose', rt.pose_msg(T0, 'b', [0, 0, 0], [0, 0, 0, 1])))
    path = write_bag(tmp_path / 'bag', 'mcap', sorted(messages, key=lambda m: m[0]), topics)
    storage_file = path / 'bag.mcap'
    reader = McapReader(storage_file)
    reader.open()
    second = reader.chunks[1].chunk_start_offset
    reader.close()
    data = bytearray(storage_file.read_bytes())
    data[second + 17:second + 57] = b'\xff' * 40  # the second chunk's header and CRC
    storage_file.write_bytes(bytes(data))
    delivered = []
    with BagInput(path, NodeConfig()) as bag, pytest.raises(BagError) as err:
        for event in bag.events():
            delivered.append(event)
    assert 0 < len(delivered) < 41
    assert f'unreadable after {len(delivered)} messages' in str(err.value)


def test_undecodable_messages_become_bad_events(tmp_path, storage):
    topics = {'/camera/image_raw': rt.IMAGE, '/ee_pose': rt.POSE_STAMPED}
    good = rt.typestore().serialize_cdr(rt.image_msg(T0, 'c', pixels(0), 'rgb8'), rt.IMAGE)
    messages = [(T0, '/ee_pose', rt.pose_msg(T0, 'b', [0, 0, 0], [0, 0, 0, 1])),
                (T0 + 1, '/camera/image_raw', bytes(good[:30])),  # cut inside the header
                (T0 + 2, '/camera/image_raw', bytes(good))]
    path = write_bag(tmp_path / 'bag', storage, messages, topics)
    with BagInput(path, NodeConfig()) as bag:
        events = list(bag.events())
    assert [e.kind for e in events] == ['pose', 'bad', 'image']
    reason, detail = events[1].value
    assert reason == 'bag_deserialize' and 'sensor_msgs/msg/Image' in detail
    assert events[1].topic == '/camera/image_raw' and events[1].log_time_ns == T0 + 1
    # An empty CompressedImage.format fails the conversion, not the deserialization.
    topics = {'/c': rt.COMPRESSED_IMAGE, '/ee_pose': rt.POSE_STAMPED}
    messages = [(T0, '/ee_pose', rt.pose_msg(T0, 'b', [0, 0, 0], [0, 0, 0, 1])),
                (T0 + 1, '/c', rt.compressed_image_msg(T0, 'c', b'\x89PNG', ''))]
    path = write_bag(tmp_path / 'bag2', storage, messages, topics)
    config = load_node_config(None, ['topics.cameras=[/c]', 'topics.camera_transports='
                                     '[compressed]'])
    with BagInput(path, config) as bag:
        events = list(bag.events())
    assert events[1].kind == 'bad' and events[1].value[0] == 'bad_image'


def test_type_unknown_to_the_typestore_uses_the_bags_definition(tmp_path, storage):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg('std_msgs/Header header\nfloat64[] cmd\nstring mode',
                                      'teleop_pkg/msg/Command'))
    command = store.types['teleop_pkg/msg/Command']
    writer = Writer(tmp_path / 'bag', version=8, storage_plugin=STORAGES[storage][1])
    writer.open()
    pose = writer.add_connection('/ee_pose', rt.POSE_STAMPED, typestore=store)
    image = writer.add_connection('/camera/image_raw', rt.IMAGE, typestore=store)
    cmd = writer.add_connection('/teleop', 'teleop_pkg/msg/Command', typestore=store)
    writer.write(pose, T0, store.serialize_cdr(
        rt.pose_msg(T0, 'b', [0, 0, 0], [0, 0, 0, 1]), rt.POSE_STAMPED))
    writer.write(image, T0 + 1, store.serialize_cdr(
        rt.image_msg(T0, 'c', pixels(0), 'rgb8'), rt.IMAGE))
    writer.write(cmd, T0 + 2, store.serialize_cdr(
        command(header=rt.header_msg(T0), cmd=np.array([1.5, -2.0]), mode='vel'),
        'teleop_pkg/msg/Command'))
    writer.close()
    with BagInput(tmp_path / 'bag', NodeConfig(), ['/teleop']) as bag:
        events = list(bag.events())
    assert events[2].kind == 'extra' and events[2].value.mode == 'vel'
    np.testing.assert_array_equal(events[2].value.cmd, [1.5, -2.0])


def test_directory_without_metadata_reads_its_single_storage_file(tmp_path, storage):
    path = write_bag(tmp_path / 'bag', storage, *episode(2))
    (path / 'metadata.yaml').unlink()
    with BagInput(path, NodeConfig()) as bag:
        assert sum(1 for e in bag.events() if e.kind == 'image') == 2
    (path / f'other{STORAGES[storage][0]}').write_bytes(b'')
    with pytest.raises(BagError, match='2 .mcap/.db3 files'):
        BagInput(path, NodeConfig())


# ---------------------------------------------------------------------------------------------
# BagOutput
# ---------------------------------------------------------------------------------------------

def test_output_bag_reads_back_with_rosbags(tmp_path, storage):
    chunk = np.arange(8, dtype=np.float32).reshape(4, 2)
    with BagOutput(tmp_path / 'out', storage) as out:
        out.add_topic('/chunk', rt.ACTION_CHUNK, ('reliable', 10))
        out.add_topic('/image', rt.IMAGE, qos_profile('best_effort', 5))
        for k in range(3):
            out.write('/chunk', T0 + k, rt.action_chunk_msg(T0 + k, ['x', 'y'], 0.1, chunk + k,
                                                            T0))
        out.write('/image', T0 + 5, rt.image_msg(T0, 'c', pixels(2), 'rgb8'))
        assert out.message_count == 4
    assert out.closed and out.path == tmp_path / 'out'
    assert out.storage_file.name == f'out{STORAGES[storage][0]}'
    with Reader(tmp_path / 'out') as reader:
        topics = reader.topics
        assert {t: i.msgtype for t, i in topics.items()} == {'/chunk': rt.ACTION_CHUNK,
                                                            '/image': rt.IMAGE}
        assert topics['/chunk'].msgcount == 3
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
        assert (qos['/chunk'].reliability.name, qos['/chunk'].depth) == ('RELIABLE', 10)
        assert (qos['/image'].reliability.name, qos['/image'].depth) == ('BEST_EFFORT', 5)
        read = [(c.topic, t, rt.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    assert [(topic, t) for topic, t, _ in read] == [('/chunk', T0), ('/chunk', T0 + 1),
                                                    ('/chunk', T0 + 2), ('/image', T0 + 5)]
    for k in range(3):
        data = rt.chunk_from_msg(read[k][2])
        np.testing.assert_array_equal(data.chunk, chunk + k)
        assert data.observation_stamp_ns == T0 and data.names == ['x', 'y']
    np.testing.assert_array_equal(np.asarray(read[3][2].data).reshape(6, 8, 3), pixels(2))
    metadata = (tmp_path / 'out' / 'metadata.yaml').read_text()
    assert 'message_count: 4' in metadata and 'version: 8' in metadata


def test_output_suffix_selects_storage_and_existing_paths_are_refused(tmp_path):
    out = BagOutput(tmp_path / 'run.db3')
    assert out.storage == 'sqlite3' and out.path == tmp_path / 'run'
    out.close()
    out.close()  # idempotent
    assert (tmp_path / 'run' / 'run.db3').is_file()
    with pytest.raises(BagError, match='exists already'):
        BagOutput(tmp_path / 'run')
    with pytest.raises(BagError, match='expected mcap or sqlite3'):
        BagOutput(tmp_path / 'x', storage='zip')


def test_output_closed_by_an_exception_stays_readable(tmp_path, storage):
    with pytest.raises(KeyboardInterrupt), BagOutput(tmp_path / 'out', storage) as out:
        out.add_topic('/pose', rt.POSE_STAMPED)
        out.write('/pose', T0, rt.pose_msg(T0, 'b', [1, 2, 3], [0, 0, 0, 1]))
        raise KeyboardInterrupt
    with Reader(tmp_path / 'out') as reader:
        (connection, stamp, raw), = list(reader.messages())
    pose = rt.pose_from_msg(rt.deserialize(raw, connection.msgtype))
    assert stamp == T0 and list(pose.position) == [1, 2, 3]
