"""The DDS driver against real ROS 2 Jazzy (rclpy, Fast DDS): runs under
scripts/check_ros_jazzy.sh, skipped where rclpy is not importable."""

from __future__ import annotations

import pytest

from vit_perception.drivers import ros_graph

pytestmark = pytest.mark.requires_rclpy


def test_ros_discovery_info_is_byte_identical_to_rclpy_serialization():
    """Jazzy's rmw_dds_common message (16-byte Gid), serialized by rclpy's typesupport."""
    pytest.importorskip('rclpy')
    from rclpy.serialization import serialize_message
    from rmw_dds_common.msg import Gid, NodeEntitiesInfo, ParticipantEntitiesInfo

    participant, readers = bytes(range(1, 17)), [bytes([0xA0 + i] * 16) for i in range(2)]
    writers = [bytes([0xB0 + i] * 16) for i in range(3)]
    msg = ParticipantEntitiesInfo(
        gid=Gid(data=list(participant)),
        node_entities_info_seq=[NodeEntitiesInfo(
            node_namespace='/arm', node_name='vit_perception',
            reader_gid_seq=[Gid(data=list(g)) for g in readers],
            writer_gid_seq=[Gid(data=list(g)) for g in writers])])
    assert len(Gid().data) == ros_graph.gid_size('jazzy') == 16
    ours = ros_graph.participant_entities_info_cdr(participant, '/arm', 'vit_perception',
                                                   readers, writers, ros_graph.gid_size('jazzy'))
    theirs = bytes(serialize_message(msg))
    # Offsets: header 0-3, gid 4-19, node count 20-23, '/arm' length 24-27 and text 28-32,
    # padding 33-35, 'vit_perception' length 36-39 and text 40-54, padding 55, then the GID
    # sequences (4-aligned). Fast CDR leaves alignment padding uninitialized (we write zeros).
    padding = {33, 34, 35, 55}
    assert len(ours) == len(theirs) == 56 + 4 + 2 * 16 + 4 + 3 * 16
    assert {i for i in range(len(ours)) if ours[i] != theirs[i]} <= padding
    assert all(ours[i] == 0 for i in padding)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_rclpy_peer_gets_the_dds_nodes_outputs_from_large_best_effort_images(tmp_path,
                                                                            monkeypatch):
    """The documented setting end to end: an rclpy (Fast DDS) camera publishes 640x480 rgb8
    best effort with vit_perception/data/fastdds_large_images.xml as its Fast DDS profile; the
    DDS node (Cyclone, its own process, default settings) takes them off the wire and the peer
    receives the chunks and actions derived from them. Counts only: without the receive-buffer
    settings 35-65 % of such frames were lost here (README, `bench --live --image-loss`)."""
    pytest.importorskip('rclpy')
    from vit_perception.model.checkpoint import save_checkpoint
    from vit_perception.model.config import tiny_config
    from vit_perception.model.policy import build_policy
    from vit_perception.tools import harness, image_loss
    from vit_perception.tools import live_bench as lb

    monkeypatch.delenv(harness.ROS_ENV_VARIABLE, raising=False)
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', str(image_loss.PROFILE_PATH))
    checkpoint = save_checkpoint(build_policy(tiny_config()), tmp_path / 'tiny')
    report = lb.measure_with_peer(
        'dds', ros_env=harness.RosEnvironment.find(), duration=6.0, model=str(checkpoint),
        image_qos='best_effort', overrides=['engine.device=cpu', 'engine.warmup_iters=0'])
    sent = report['sent']['images']
    assert sent > 0
    assert report['node_received']['/camera/image_raw'] >= 0.95 * sent
    assert 0 < report['images_to_chunks'] <= sent
    assert report['actions'] > 0
    assert report['node_exit_code'] == 0 and report['node_tracebacks'] == 0
