"""DdsTransport over a real Cyclone DDS (loopback, a unique domain per test).

Run as a script, this file is the publisher process of test_messages_from_another_process:
    python test/drivers/test_dds.py publish DOMAIN
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsPublication
from cyclonedds.core import DDSException, Policy, Qos
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from vit_perception.core.node import DiagnosticsReport
from vit_perception.core.types import ActionChunkResult
from vit_perception.drivers import dds, ros_graph, rtps_ports
from vit_perception.drivers import ros_types as rt
from vit_perception.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # local helpers (importlib mode)
import dds_testing as dt  # noqa: E402


@pytest.fixture
def domain(monkeypatch) -> int:
    return dt.use_loopback(monkeypatch)


@pytest.fixture
def errors() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def transport(domain, errors):
    with dds.DdsTransport(domain, on_error=lambda reason, detail: errors.append(
            (reason, detail))) as t:
        yield t


# ------------------------------------------------------------------------------- names, QoS

def test_ros_names_map_to_dds_names():
    assert dds.dds_topic_name('/camera/image_raw') == 'rt/camera/image_raw'
    assert dds.dds_topic_name('ee_pose') == 'rt/ee_pose'
    assert dds.dds_type_name('sensor_msgs/msg/Image') == 'sensor_msgs::msg::dds_::Image_'
    assert dds.dds_type_name('vit_perception/msg/ActionChunk') == (
        'vit_perception::msg::dds_::ActionChunk_')
    for bad in ('', '/', '/a//b', '/a b'):
        with pytest.raises(ConfigError, match='topic name'):
            dds.dds_topic_name(bad)
    with pytest.raises(ConfigError, match='pkg/msg/Type'):
        dds.dds_type_name('sensor_msgs/Image')


def test_domain_id_resolution(monkeypatch):
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    assert dds.resolve_domain_id(-1) == 0
    monkeypatch.setenv('ROS_DOMAIN_ID', '42')
    assert dds.resolve_domain_id(-1) == 42
    assert dds.resolve_domain_id(7) == 7
    monkeypatch.setenv('ROS_DOMAIN_ID', 'x')
    with pytest.raises(ConfigError, match='ROS_DOMAIN_ID'):
        dds.resolve_domain_id(-1)
    with pytest.raises(ConfigError, match='0..232'):
        dds.resolve_domain_id(233)


def test_ros_discovery_environment_becomes_cyclone_config_like_rmw_cyclonedds():
    subnet = dds.ros_discovery_config({})
    assert '<ParticipantIndex>auto</ParticipantIndex>' in subnet and '<Peers>' not in subnet
    assert 'AllowMulticast' not in subnet  # multicast stays on
    local = dds.ros_discovery_config({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
                                      'ROS_STATIC_PEERS': '192.168.1.7; robot<2>'})
    assert '<AllowMulticast>false</AllowMulticast>' in local
    assert '<NetworkInterface address="127.0.0.1"/>' in local
    assert ('<Peers><Peer address="localhost"/><Peer address="192.168.1.7"/>'
            '<Peer address="robot&lt;2&gt;"/></Peers>') in local
    assert dds.ros_discovery_config({'ROS_LOCALHOST_ONLY': '1'}) == dds.ros_discovery_config(
        {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'})  # Humble's variable
    assert dds.ros_discovery_config({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                                     'ROS_LOCALHOST_ONLY': '1'}) == subnet  # the range wins
    off = dds.ros_discovery_config({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'OFF',
                                    'ROS_STATIC_PEERS': 'a'})
    assert '<Tag>ros_discovery_off_' in off and 'Peer' not in off
    assert dds.ros_discovery_config({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SYSTEM_DEFAULT'}) == ''
    with pytest.raises(ConfigError, match='expected one of SUBNET, LOCALHOST, OFF'):
        dds.ros_discovery_config({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LAN'})


def read_discovery_info(domain: int, size: int) -> list:
    """A ros_discovery_info reader on `domain` for Gids of `size` bytes; returns a take()."""
    participant = DomainParticipant(domain)
    topic = Topic(participant, ros_graph.DISCOVERY_TOPIC, dds.cdr_type(
        ros_graph.PARTICIPANT_ENTITIES_INFO, ros_graph.typestore(size)))
    reader = DataReader(participant, topic, qos=Qos(
        Policy.Reliability.Reliable(0), Policy.Durability.TransientLocal,
        Policy.History.KeepLast(1), Policy.DataRepresentation(use_cdrv0_representation=True)))
    return lambda: [ros_graph.decode(s.cdr, size) for s in reader.take(N=10)]


@pytest.mark.parametrize('distro, size', [('jazzy', 16), ('humble', 24)])
def test_announced_node_lists_its_endpoint_gids(domain, distro, size):
    with dds.DdsTransport(domain, ros_distro=distro) as transport:
        pub = transport.publisher('/t/out', rt.POSE_STAMPED)
        transport.announce_node('vit_perception', '/arm')
        sub = transport.subscribe('/t/in', rt.POSE_STAMPED, dds.DEFAULT, lambda msg: None)
        take, infos = read_discovery_info(domain, size), []
        assert dt.wait_until(lambda: infos.extend(take()) or any(
            len(i.node_entities_info_seq[0].reader_gid_seq) == 1 for i in infos), timeout=20)
        node = infos[-1].node_entities_info_seq[0]
        assert (node.node_namespace, node.node_name) == ('/arm', 'vit_perception')
        padding = bytes(size - 16)  # Humble's rmws zero-pad the 16-byte GUID
        assert [bytes(g.data) for g in node.writer_gid_seq] == [pub.guid + padding]
        assert [bytes(g.data) for g in node.reader_gid_seq] == [sub.guid + padding]
        assert bytes(infos[-1].gid.data) == transport._participant.guid.bytes + padding


def test_domain_config_asks_for_large_receive_buffers_and_lets_the_uri_override():
    config = dds.domain_config('', {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'})
    buffers, discovery = config.split(',')
    assert buffers == dds.receive_buffer_config(4 << 20)
    assert 'SocketReceiveBufferSize max="4194304B"' in buffers
    assert '<Peer address="localhost"/>' in discovery
    assert '<NetworkInterface address="127.0.0.1"/>' in discovery  # no URI to choose one
    with_uri = dds.domain_config(dt.LOOPBACK_URI, {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'})
    assert with_uri.endswith(',' + dt.LOOPBACK_URI)  # last: it overrides
    assert '<NetworkInterface address="127.0.0.1"/>' not in with_uri.split(',')[1]
    assert dds.domain_config('', {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SYSTEM_DEFAULT'}) == buffers


def test_receive_buffer_setting_is_a_cyclone_config_it_accepts():
    domain = dt.unique_domain()
    config = ','.join([dt.LOOPBACK_URI, dds.receive_buffer_config(2 << 20)])
    assert 'SocketReceiveBufferSize max="2097152B"' in config
    with pytest.raises(DDSException):  # Cyclone rejects what it does not know
        Domain(dt.unique_domain(), config.replace('SocketReceiveBufferSize', 'SocketBuffer'))
    holder = Domain(domain, config)
    participant = DomainParticipant(domain)
    assert participant.guid.bytes and holder is not None


def test_small_kernel_receive_buffer_cap_is_reported(tmp_path, monkeypatch, caplog):
    cap = tmp_path / 'rmem_max'
    monkeypatch.setattr(dds, 'RMEM_MAX_PATH', str(cap))
    cap.write_text('212992\n')
    assert dds.kernel_receive_buffer_max() == 212992
    with caplog.at_level('WARNING', logger=dds.__name__):
        dds._warn_small_receive_buffers()
    assert len(caplog.records) == 1
    assert 'net.core.rmem_max is 212992 bytes' in caplog.text and 'sysctl -w' in caplog.text
    caplog.clear()
    cap.write_text('4194304\n')
    dds._warn_small_receive_buffers()
    assert not caplog.records
    cap.unlink()
    assert dds.kernel_receive_buffer_max() is None


def test_qos_profiles():
    assert (dds.SENSOR_DATA.reliability, dds.SENSOR_DATA.depth) == ('best_effort', 5)
    assert (dds.DEFAULT.reliability, dds.DEFAULT.depth) == ('reliable', 10)
    assert dds.SENSOR_DATA.durability == dds.DEFAULT.durability == 'volatile'
    with pytest.raises(ConfigError, match='reliability'):
        dds.qos_profile('sometimes', 5)
    with pytest.raises(ConfigError, match='depth'):
        dds.qos_profile('reliable', 0)


# ------------------------------------------------------------------------------- wire view

def test_endpoints_look_like_ros2_endpoints_to_a_peer(transport, domain):
    transport.publisher('/camera/image_raw', rt.IMAGE, dds.SENSOR_DATA)
    peer = DomainParticipant(domain)
    reader = BuiltinDataReader(peer, BuiltinTopicDcpsPublication)
    found = []
    assert dt.wait_until(lambda: found.extend(
        s for s in reader.take(N=20) if getattr(s, 'topic_name', '') == 'rt/camera/image_raw')
        or bool(found))
    endpoint = found[0]
    assert endpoint.type_name == 'sensor_msgs::msg::dds_::Image_'
    assert endpoint.qos[Policy.Userdata].data == f'typehash={rt.type_hash(rt.IMAGE)};'.encode()
    assert endpoint.qos[Policy.Reliability] == Policy.Reliability.BestEffort
    assert endpoint.qos[Policy.History] == Policy.History.KeepLast(5)
    assert endpoint.qos[Policy.Durability] == Policy.Durability.Volatile
    assert endpoint.qos[Policy.DataRepresentation] == Policy.DataRepresentation(
        use_cdrv0_representation=True)


def test_an_xcdr2_only_reader_does_not_match(transport, domain, errors):
    pub = transport.publisher('/xcdr', rt.POSE_STAMPED, dds.DEFAULT)
    peer = DomainParticipant(domain)
    topic = Topic(peer, 'rt/xcdr', dds.cdr_type(rt.POSE_STAMPED))
    xcdr2 = DataReader(peer, topic, qos=Qos(
        Policy.Reliability.Reliable(0), Policy.DataRepresentation(use_xcdrv2_representation=True)))
    xcdr1 = DataReader(peer, topic, qos=Qos(
        Policy.Reliability.Reliable(0), Policy.DataRepresentation(use_cdrv0_representation=True)))
    assert dt.wait_until(lambda: len(xcdr1.get_matched_publications()) == 1)
    assert dt.wait_until(lambda: errors)  # our writer saw the XCDR2-only reader and refused it
    assert errors == [(dds.INCOMPATIBLE_QOS, '/xcdr: a subscriber cannot match this reliable '
                       'publisher (data_representation)')]
    assert pub.matched() == 1 and xcdr2.get_matched_publications() == []


# ------------------------------------------------------------------------------- data path

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_messages_from_another_process_arrive_intact(transport, domain):
    expected = dt.expected_messages()
    got: dict[str, dict] = {dt.IMAGE_TOPIC: {}, dt.COMPRESSED_TOPIC: {}, dt.POSE_TOPIC: {}}
    raw_images: dict = {}
    qos = {dt.IMAGE_TOPIC: dds.SENSOR_DATA, dt.COMPRESSED_TOPIC: dds.SENSOR_DATA,
           dt.POSE_TOPIC: dds.DEFAULT}
    types = {topic: msgtype for topic, msgtype, _ in expected}
    for topic in got:
        transport.subscribe(topic, types[topic], qos[topic],
                            lambda msg, topic=topic: got[topic].setdefault(dt.key(msg), msg))
    transport.subscribe(dt.IMAGE_TOPIC, rt.IMAGE, dds.SENSOR_DATA,
                        lambda cdr: raw_images.setdefault(
                            dt.key(rt.deserialize(cdr, rt.IMAGE)), bytes(cdr)), raw=True)
    done = transport.publisher(dt.DONE_TOPIC, 'std_msgs/msg/String', dds.DEFAULT)

    proc = subprocess.Popen([sys.executable, __file__, 'publish', str(domain)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        complete = dt.wait_until(lambda: all(
            dt.key(msg) in got[topic] for topic, _, msg in expected) and len(raw_images) == len(
            dt.IMAGE_CASES), timeout=60)
        done.publish(rt.msg_class('std_msgs/msg/String')(data='done'))
        output = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
    assert complete, f'missing messages; publisher said: {output}'
    assert proc.returncode == 0, output

    for topic, msgtype, sent in expected:
        received = got[topic][dt.key(sent)]
        assert type(received).__name__ == type(sent).__name__
        # Re-serializing what arrived gives exactly what was sent: every field, every byte.
        assert bytes(rt.serialize(received, msgtype)) == bytes(rt.serialize(sent, msgtype))
        if msgtype == rt.IMAGE:
            frame = rt.image_from_msg(received)
            assert frame.data is received.data and np.array_equal(frame.data, sent.data)
            wire = raw_images[dt.key(sent)]
            cdr = bytes(rt.serialize(sent))
            # On the wire: our CDR, padded to a multiple of 4 with zeros (as DDS writers do).
            assert wire[:len(cdr)] == cdr and wire[len(cdr):] == bytes(-len(cdr) % 4)


def test_every_node_message_type_crosses_participants_unchanged(transport, domain):
    result = ActionChunkResult(5 * 10**9, np.linspace(0, 1, 16, dtype=np.float32),
                               np.ones((8, 7), np.float32))
    report = DiagnosticsReport(2, 'no action: no image received yet', {'a': '1', 'b': ''})
    sent = [
        (rt.EMBEDDING, rt.embedding_msg(result, 'model', 'cam')),
        (rt.ACTION_CHUNK, rt.action_chunk_msg(6 * 10**9, list('abcdefg'), 0.1, result.chunk,
                                              5 * 10**9, 'base')),
        (rt.DIAGNOSTIC_ARRAY, rt.diagnostics_msg(report, 7 * 10**9, 'node: perception', 'hw')),
        (rt.CLOCK, rt.clock_msg(8 * 10**9)),
        (rt.POSE_STAMPED, rt.pose_msg(9, 'base', [1, 2, 3], [0, 0, 0, 1])),
        (rt.COMPRESSED_IMAGE, rt.compressed_image_msg(10, 'cam', b'\x89PNG...', 'png')),
    ]
    got = {}
    for msgtype, _ in sent:
        topic = '/types/' + msgtype.replace('/', '_')
        transport.subscribe(topic, msgtype, dds.DEFAULT,
                            lambda msg, t=msgtype: got.setdefault(t, msg))
    with dds.DdsTransport(domain) as other:
        for msgtype, msg in sent:
            pub = other.publisher('/types/' + msgtype.replace('/', '_'), msgtype, dds.DEFAULT)
            assert pub.wait_for_subscribers(1)
            pub.publish(msg)
        assert dt.wait_until(lambda: len(got) == len(sent))
    for msgtype, msg in sent:
        assert bytes(rt.serialize(got[msgtype], msgtype)) == bytes(rt.serialize(msg, msgtype))


def publish_until_done(domain: int) -> int:
    """The publisher process: send the expected messages in rounds until told 'done'."""
    done = []
    with dds.DdsTransport(domain) as transport:
        transport.subscribe(dt.DONE_TOPIC, 'std_msgs/msg/String', dds.DEFAULT, done.append)
        pubs = {}
        for topic, msgtype, _ in dt.expected_messages():
            if topic not in pubs:
                qos = dds.DEFAULT if topic == dt.POSE_TOPIC else dds.SENSOR_DATA
                pubs[topic] = transport.publisher(topic, msgtype, qos)
        if not all(p.wait_for_subscribers(1, timeout=20) for p in pubs.values()):
            print('no subscriber', flush=True)
            return 1
        deadline = time.monotonic() + 60
        rounds = 0
        while not done and time.monotonic() < deadline:
            for topic, _, msg in dt.expected_messages():
                pubs[topic].publish(msg)
                time.sleep(0.005)  # pacing: best-effort images on a busy 2-core machine
            rounds += 1
            time.sleep(0.05)
        print(f'rounds {rounds}, done {bool(done)}', flush=True)
        return 0 if done else 1


def test_invalid_samples_are_filtered_and_counted(transport, domain):
    got = []
    sub = transport.subscribe('/leaving', rt.POSE_STAMPED, dds.DEFAULT, got.append)
    with dds.DdsTransport(domain) as other:
        pub = other.publisher('/leaving', rt.POSE_STAMPED, dds.DEFAULT)
        assert pub.wait_for_subscribers(1)
        for i in range(3):
            pub.publish(rt.pose_msg(i, 'base', [i, 0, 0], [0, 0, 0, 1]))
        assert dt.wait_until(lambda: len(got) == 3)
        pub.close()  # the reader sees the writer leave: a sample without data
        assert dt.wait_until(lambda: sub.invalid >= 1)
    assert [rt.pose_from_msg(m).position[0] for m in got] == [0.0, 1.0, 2.0]
    assert sub.received == 3 and sub.errors == 0


def test_undecodable_samples_and_failing_callbacks_never_stop_the_reader(transport, errors):
    got = []

    def callback(msg):
        if msg.header.frame_id == 'boom':
            raise RuntimeError('callback failed')
        got.append(msg)

    sub = transport.subscribe('/bad', rt.IMAGE, dds.DEFAULT, callback)
    pub = transport.publisher('/bad', rt.IMAGE, dds.DEFAULT)
    assert pub.wait_for_subscribers(1)
    cdr = bytearray(rt.serialize(rt.image_msg(1, 'cam', np.zeros((2, 2, 3), np.uint8), 'rgb8')))
    at = cdr.find(b'rgb8')
    cdr[at:at + 4] = b'\xff\xfe\xfd\xfc'  # valid CDR, invalid UTF-8 in `encoding`
    pub.publish_cdr(cdr)
    pub.publish(rt.image_msg(2, 'boom', np.zeros((2, 2, 3), np.uint8), 'rgb8'))
    pub.publish(rt.image_msg(3, 'cam', np.zeros((2, 2, 3), np.uint8), 'rgb8'))
    assert dt.wait_until(lambda: len(got) == 1)
    assert rt.stamp_ns(got[0].header.stamp) == 3
    assert [reason for reason, _ in errors] == [dds.DECODE_ERROR, dds.CALLBACK_ERROR]
    assert 'utf-8' in errors[0][1] and '/bad' in errors[0][1] and 'callback failed' in errors[1][1]
    assert (sub.received, sub.errors) == (2, 2)


def test_best_effort_writer_never_matches_a_reliable_reader(transport, domain, errors):
    reliable, best_effort = [], []
    rel_sub = transport.subscribe('/qos', rt.POSE_STAMPED, dds.DEFAULT, reliable.append)
    be_sub = transport.subscribe('/qos', rt.POSE_STAMPED, dds.SENSOR_DATA, best_effort.append)
    with dds.DdsTransport(domain) as other:
        pub = other.publisher('/qos', rt.POSE_STAMPED, dds.SENSOR_DATA)
        assert be_sub.wait_for_publishers(1)
        assert dt.wait_until(lambda: any(r == dds.INCOMPATIBLE_QOS for r, _ in errors))
        for i in range(3):
            pub.publish(rt.pose_msg(i, 'base', [0, 0, 0], [0, 0, 0, 1]))
        assert dt.wait_until(lambda: len(best_effort) == 3)
        assert pub.matched() == 1 and rel_sub.matched() == 0 and reliable == []
    detail = next(d for r, d in errors if r == dds.INCOMPATIBLE_QOS)
    assert '/qos' in detail and 'reliability' in detail


def test_reliable_writer_serves_both_kinds_of_reader(transport, domain):
    reliable, best_effort = [], []
    transport.subscribe('/qos2', rt.POSE_STAMPED, dds.DEFAULT, reliable.append)
    transport.subscribe('/qos2', rt.POSE_STAMPED, dds.SENSOR_DATA, best_effort.append)
    with dds.DdsTransport(domain) as other:
        pub = other.publisher('/qos2', rt.POSE_STAMPED, dds.DEFAULT)
        assert pub.wait_for_subscribers(2)
        for i in range(3):
            pub.publish(rt.pose_msg(i, 'base', [0, 0, 0], [0, 0, 0, 1]))
        assert dt.wait_until(lambda: len(reliable) == 3 and len(best_effort) == 3)


def test_one_type_per_topic_and_closed_transport(domain):
    transport = dds.DdsTransport(domain)
    transport.publisher('/typed', rt.POSE_STAMPED)
    with pytest.raises(ConfigError, match='already used with type geometry_msgs/msg/PoseStamped'):
        transport.subscribe('/typed', rt.IMAGE, dds.SENSOR_DATA, print)
    transport.close()
    transport.close()  # idempotent
    with pytest.raises(ConfigError, match='closed'):
        transport.publisher('/typed', rt.POSE_STAMPED)


if __name__ == '__main__':
    if sys.argv[1:2] == ['publish']:
        sys.exit(publish_until_done(int(sys.argv[2])))
    sys.exit(f'usage: {sys.argv[0]} publish DOMAIN')


def test_domain_ports_follow_the_rtps_mapping_and_private_domains_avoid_ephemeral_ports():
    from vit_perception.tools import harness

    assert rtps_ports.domain_ports(0) == range(7400, 7412)
    assert rtps_ports.domain_ports(149)[0] == 44650  # the port a CI run could not bind
    linux_default = range(32768, 61000)
    assert rtps_ports.ephemeral_clash(harness.PRIVATE_DOMAINS[-1], linux_default) == ''
    clash = rtps_ports.ephemeral_clash(102, linux_default)
    assert 'domain 102 uses UDP ports 32900-32911' in clash and '0..101' in clash
    assert rtps_ports.ephemeral_clash(232, None) == ''  # range unknown: no claim
    assert all(rtps_ports.ephemeral_clash(d, linux_default) == ''
               for d in harness.PRIVATE_DOMAINS)
    assert {harness.pick_domain(salt=i) for i in range(500)} <= set(harness.PRIVATE_DOMAINS)


def test_pick_domain_skips_domains_this_host_is_using(tmp_path):
    """Two runs on one domain drive each other's robot (a demo's sim executes any action on its
    domain): a domain with a bound port in its block is in use, whoever holds it."""
    import socket

    from vit_perception.tools import harness

    table = tmp_path / 'udp'  # /proc/net/udp: a socket on 7410 (domain 0), one on 8155 (domain 3)
    table.write_text('  sl  local_address rem_address   st tx_queue rx_queue\n'
                     '  0: 00000000:1CF2 00000000:0000 07 00000000:00000000\n'
                     '  1: 0100007F:1FDB 00000000:0000 07 00000000:00000000\n'
                     '  2: 0100007F:0035 00000000:0000 07 00000000:00000000\n')
    assert rtps_ports.bound_udp_ports([table, tmp_path / 'missing']) == {7410, 8155, 53}
    assert rtps_ports.domains_in_use({7410, 8155, 53, 7399, 7400 + 250 * 3 + 249}) == {0, 3}
    busy = set(range(1, 50))
    assert harness.pick_domain(salt=0, in_use=busy) not in busy
    assert {harness.pick_domain(salt=i, in_use=set(range(1, 101))) for i in range(300)} == {101}
    everything = set(harness.PRIVATE_DOMAINS)
    assert harness.pick_domain(salt=5, in_use=everything) in everything  # none free: still one
    # the real tables: a socket bound on some private domain's multicast port marks it in use
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    free = harness.pick_domain(salt=11)
    try:
        sock.bind(('0.0.0.0', rtps_ports.domain_ports(free)[0]))
        assert free in rtps_ports.domains_in_use(rtps_ports.bound_udp_ports())
        assert harness.pick_domain(salt=11) != free
    finally:
        sock.close()


def test_a_domain_whose_port_is_taken_is_one_config_error(monkeypatch):
    """What failed CI: another socket held the domain's discovery port ('address in use')."""
    import socket

    domain = dt.use_loopback(monkeypatch)
    holders = []
    for port in rtps_ports.domain_ports(domain)[:2]:  # discovery and user-data multicast ports
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEADDR: exclusive
        sock.bind(('0.0.0.0', port))
        holders.append(sock)
    try:
        with pytest.raises(ConfigError, match=f'cannot start DDS domain {domain} '):
            dds.DdsTransport(domain)
    finally:
        for sock in holders:
            sock.close()
    assert domain not in dds._domains  # nothing half-made is kept: a later attempt can work
    with dds.DdsTransport(domain) as transport:
        assert transport.domain_id == domain
