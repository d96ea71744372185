"""`bench --image-loss` counts frames right: the counting on crafted reports and on real runs
(Cyclone -> Cyclone here; the Fast DDS directions where rclpy is importable, as in
scripts/check_ros_jazzy.sh). Counts only, no timings."""

from __future__ import annotations

import importlib.util
from xml.etree import ElementTree

import numpy as np
import pytest

from vit_perception.tools import image_loss, image_peer


def frame(index: int, size: int = 64) -> bytearray:
    cdr = bytearray(size)
    image_peer.set_frame_index(cdr, index)
    return cdr


def test_subscriber_counts_distinct_complete_frames():
    counts = image_peer.Counts(frame_bytes=64)
    for index in [0, 1, 1, 3, 7]:  # 1 twice: a duplicate
        counts.add(frame(index))
    counts.add(frame(2, size=40))  # truncated: not a frame
    counts.add(b'')
    report = counts.report()
    assert report == {'event': 'done', 'indices': [0, 1, 3, 7], 'complete': 5, 'wrong_size': 2}
    result = image_loss.count_frames({'sent': 5, 'matched': True, 'frame_bytes': 64}, report)
    assert result == {'matched': True, 'sent': 5, 'received': 3, 'duplicates': 1,
                      'not_sent': 1, 'wrong_size': 2}


def test_frame_index_round_trips_through_the_image_header_stamp():
    from vit_perception.drivers import ros_types as rt

    cdr = bytearray(rt.serialize(rt.image_msg(0, 'camera', np.zeros((2, 3, 3), np.uint8),
                                              'rgb8')))
    image_peer.set_frame_index(cdr, 1234)
    stamp = rt.deserialize(bytes(cdr), rt.IMAGE).header.stamp
    assert (stamp.sec, stamp.nanosec) == (image_peer.STAMP_SEC, 1234)
    assert image_peer.frame_index(cdr) == 1234


def test_table_has_a_cell_per_direction_and_setting():
    runs = [{'publisher': p, 'subscriber': s, 'setting': name, 'sent': 10, 'received': 10 - i,
             'matched': i != 1 or name == 'default'}
            for name in ('default', 'reliable') for i, (p, s) in enumerate(image_loss.DIRECTIONS)]
    table = image_loss.format_table({'frames': 10, 'image': '64x48', 'rmem_max': 4194304,
                                     'cpus': 2, 'load_avg': [1.0, 1.0, 1.0], 'runs': runs})
    lines = table.splitlines()
    assert lines[1] == '| publisher -> subscriber | default | reliable |'
    assert lines[3] == '| Fast DDS (rclpy) -> Fast DDS (rclpy) | 10 of 10 | 10 of 10 |'
    assert lines[4] == '| Fast DDS (rclpy) -> Cyclone (DDS driver) | 9 of 10 | no match |'
    assert lines[6] == '| Cyclone (DDS driver) -> Cyclone (DDS driver) | 7 of 10 | 7 of 10 |'


def test_settings_change_only_what_they_name(tmp_path):
    by_name = {s.name: s for s in image_loss.settings(1 << 22)}
    assert list(by_name) == ['default', 'stock_kernel', 'rcvbuf', 'shm_segment', 'profile',
                             'large_data', 'fragment', 'reliable']
    assert by_name['reliable'].qos == 'reliable'
    assert all(s.qos == 'best_effort' for n, s in by_name.items() if n != 'reliable')
    env = image_loss.peer_env('cyclone', by_name['rcvbuf'], None, 17, tmp_path)
    assert env['ROS_DOMAIN_ID'] == '17'
    assert 'SocketReceiveBufferSize max="4194304B"' in env['CYCLONEDDS_URI']
    assert '<receiveBufferSize>4194304</receiveBufferSize>' in by_name['rcvbuf'].fastdds_xml
    assert '<segment_size>16777216</segment_size>' in by_name['shm_segment'].fastdds_xml
    assert 'UDPv4' not in by_name['shm_segment'].fastdds_xml
    default = image_loss.peer_env('cyclone', by_name['default'], None, 17, tmp_path)
    assert default['CYCLONEDDS_URI'] == image_loss.LOOPBACK_URI


def test_shipped_fast_dds_profile_is_the_measured_one():
    shipped = image_loss.PROFILE_PATH.read_text()
    assert shipped == image_loss.fastdds_profile(4 << 20, 16 << 20)
    ns = {'p': 'http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles'}
    root = ElementTree.fromstring(shipped)
    assert root.find('.//p:receiveBufferSize', ns).text == str(4 << 20)
    assert root.find('.//p:segment_size', ns).text == str(16 << 20)
    assert [e.text for e in root.findall('.//p:userTransports/p:transport_id', ns)] == [
        'udp_large_buffers', 'shm_large_segment']


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cyclone_to_cyclone_reliable_run_counts_every_frame():
    reliable = next(s for s in image_loss.settings(1 << 22) if s.name == 'reliable')
    result = image_loss.measure_direction('cyclone', 'cyclone', reliable, None, frames=12,
                                          rate=60.0, size='64x48', depth=12)  # none replaced
    assert result['matched'] and result['sent'] == 12
    assert (result['received'], result['duplicates'], result['not_sent'],
            result['wrong_size']) == (12, 0, 0, 0)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(importlib.util.find_spec('rclpy') is None,
                    reason='rclpy not importable (runs under scripts/check_ros_jazzy.sh)')
@pytest.mark.parametrize('pub, sub', [('fastdds', 'cyclone'), ('cyclone', 'fastdds'),
                                      ('fastdds', 'fastdds')])
def test_fast_dds_directions_reliable_count_every_frame(pub, sub):
    from vit_perception.tools.harness import RosEnvironment

    reliable = next(s for s in image_loss.settings(1 << 22) if s.name == 'reliable')
    result = image_loss.measure_direction(pub, sub, reliable, RosEnvironment.find(), frames=12,
                                          rate=60.0, size='64x48', depth=12)
    assert (result['sent'], result['received'], result['wrong_size']) == (12, 12, 0)


@pytest.mark.parametrize('argv, words', [
    (['--image-loss-settings', 'default,bogus'], 'expected names from default,stock_kernel'),
    (['--backend', 'dds'], 'goes with --live alone'),
    (['--duration', '0'], 'must be > 0')])
def test_bench_image_loss_flags_fail_in_one_line(argv, words):
    import argparse

    from vit_perception.errors import ConfigError
    from vit_perception.tools import bench, live_bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(['--live', '--image-loss', *argv])
    with pytest.raises(ConfigError, match=words):
        live_bench.run(args)
