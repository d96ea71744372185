"""The rclpy driver: parameter table, conversions and message filling (anywhere), node (rclpy).

The first part runs without ROS: ros_node imports without rclpy, and its plain functions are
checked with stand-in message objects shaped like rclpy's (array.array buffers, nested stamps).
The last part needs a sourced ROS 2 workspace with this package built (rclpy and the generated
vit_perception.msg) and skips cleanly elsewhere.
"""

from __future__ import annotations

import array
import dataclasses
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from vit_perception.config import NodeConfig
from vit_perception.drivers import ros_node
from vit_perception.drivers.outputs import TWIST_NAMES
from vit_perception.errors import ConfigError, VitPerceptionError
from vit_perception.schema import flatten

NODE_KEYS = set(flatten(dataclasses.asdict(NodeConfig())))


# ------------------------------------------------------------------------------------------
# Stand-ins for rclpy messages (attribute layout only)
# ------------------------------------------------------------------------------------------

def header(stamp_ns: int = 0, frame_id: str = ''):
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)


def vec(x=0.0, y=0.0, z=0.0, w=None):
    return SimpleNamespace(x=x, y=y, z=z) if w is None else SimpleNamespace(x=x, y=y, z=z, w=w)


# ------------------------------------------------------------------------------------------
# Import and entry point without rclpy
# ------------------------------------------------------------------------------------------

def test_main_without_rclpy_exits_1_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(ros_node, 'rclpy', None)
    monkeypatch.setattr(ros_node, 'RCLPY_ERROR', "No module named 'rclpy'")
    assert ros_node.main(['perception_node']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert 'rclpy is not importable' in err and '--backend dds' in err


# ------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------

def test_every_node_config_field_has_a_description():
    assert set(ros_node.DESCRIPTIONS) == NODE_KEYS
    assert all(text.strip() for text in ros_node.DESCRIPTIONS.values())


def test_parameter_specs_cover_every_node_config_field_with_typed_defaults():
    specs = {spec.name: spec for spec in ros_node.parameter_specs()}
    assert set(specs) == NODE_KEYS
    assert {'pose_input.source', 'pose_input.tf_base_frame', 'pose_input.tf_ee_frame',
            'topics.twist'} <= set(specs)
    assert len(specs) == len(ros_node.parameter_specs())  # no duplicates
    defaults = flatten(dataclasses.asdict(NodeConfig()))
    for name, value in defaults.items():
        assert specs[name].default == value, name
    assert specs['control.control_rate_hz'].type_name == 'double'
    assert specs['control.control_rate_hz'].default == 50.0
    assert specs['engine.warmup_iters'].type_name == 'integer'
    assert specs['engine.compile'].type_name == 'bool'
    assert specs['topics.cameras'].type_name == 'string array'
    assert specs['safety.action_min'].type_name == 'double array'
    assert specs['pose_input.source'].default == 'topic'
    assert specs['pose_input.source'].type_name == 'string'
    assert specs['topics.twist'].default == ''
    kinds = {bool: 'bool', int: 'integer', float: 'double', str: 'string'}
    for name, value in defaults.items():
        if not isinstance(value, list):
            assert specs[name].type_name == kinds[type(value)], name


def test_parameter_specs_take_defaults_from_a_given_config():
    config = NodeConfig.from_dict({'control': {'control_rate_hz': 20.0},
                                   'engine': {'model': '/ckpt'},
                                   'pose_input': {'source': 'tf', 'tf_ee_frame': 'flange'},
                                   'topics': {'twist': '/servo/twist'}})
    specs = {s.name: s for s in ros_node.parameter_specs(config)}
    assert specs['control.control_rate_hz'].default == 20.0
    assert specs['engine.model'].default == '/ckpt'
    assert specs['pose_input.source'].default == 'tf'
    assert specs['pose_input.tf_ee_frame'].default == 'flange'
    assert specs['pose_input.tf_base_frame'].default == 'base_link'
    assert specs['topics.twist'].default == '/servo/twist'


def test_config_from_default_parameters_is_the_default_config():
    values = {spec.name: spec.default for spec in ros_node.parameter_specs()}
    assert ros_node.config_from_parameters(values) == NodeConfig()


def test_config_from_parameters_accepts_what_rclpy_hands_back():
    config = ros_node.config_from_parameters({
        'control.control_rate_hz': 100,  # an integer for a double parameter
        'safety.action_min': array.array('d', [-1.0, -2.0]),
        'safety.action_max': array.array('d', [1.0, 2.0]),
        'topics.cameras': ('/a/image', '/b/image'),
        'topics.camera_transports': ['raw', 'compressed'],
        'pose_input.source': 'tf', 'pose_input.tf_base_frame': 'world',
        'topics.twist': '/ee/cmd_vel'})
    assert config.control.control_rate_hz == 100.0
    assert isinstance(config.control.control_rate_hz, float)
    assert config.safety.action_min == [-1.0, -2.0]
    assert config.topics.cameras == ['/a/image', '/b/image']
    assert config.topics.camera_transports == ['raw', 'compressed']
    assert config.sync == NodeConfig().sync  # untouched groups keep their defaults
    assert (config.pose_input.source, config.pose_input.tf_base_frame,
            config.pose_input.tf_ee_frame) == ('tf', 'world', 'tool0')
    assert config.topics.twist == '/ee/cmd_vel'


@pytest.mark.parametrize('values, words', [
    ({'control.control_rate_hz': 'fast'}, 'control.control_rate_hz'),
    ({'control.control_rate_hz': -5.0}, 'control.control_rate_hz'),
    ({'sync.max_pose_skw': 0.1}, 'max_pose_skew'),
    ({'pose_input.source': 'odometry'}, 'pose_input.source'),
    ({'pose_input.source': 'tf', 'pose_input.tf_ee_frame': ''}, 'tf_ee_frame'),
    ({'topics.twist': 3}, 'topics.twist'),
    ({'twist_topic': '/ee/cmd_vel'}, 'twist_topic'),  # the old ROS-only name is unknown now
])
def test_config_from_parameters_rejects_bad_values_in_one_line(values, words):
    with pytest.raises(ConfigError) as info:
        ros_node.config_from_parameters(values)
    assert words in str(info.value)
    assert '\n' not in str(info.value)


# ------------------------------------------------------------------------------------------
# Conversions: messages -> core types
# ------------------------------------------------------------------------------------------

def test_transform_sample():
    transform = SimpleNamespace(header=header(9, 'base_link'), transform=SimpleNamespace(
        translation=vec(1.0, 2.0, 3.0), rotation=vec(0.0, 0.0, 0.0, 1.0)))
    sample = ros_node.transform_sample(transform)
    assert (sample.stamp_ns, sample.frame_id) == (9, 'base_link')
    np.testing.assert_array_equal(sample.position, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(sample.orientation, [0.0, 0.0, 0.0, 1.0])


class RCLInvalidROSArgsError(Exception):
    """Named like rclpy's, which main() turns into one line."""


class UnknownROSArgsError(Exception):
    pass


def test_malformed_ros_args_become_one_line_without_source_locations():
    err = RCLInvalidROSArgsError(
        "Failed to parse ROS arguments: Couldn't parse parameter override rule: '-p foo'. "
        'Error: Expected lexeme type (22) not found, search ended at index 3, at '
        '/project/src/rcl/lexer_lookahead.c:239, at /project/src/rcl/arguments.c:352')
    line = ros_node.ros_args_error(err)
    assert line.startswith("bad --ros-args: Couldn't parse parameter override rule: '-p foo'.")
    assert '/project/src' not in line and '\n' not in line and '-p name:=value' in line
    assert ros_node.ros_args_error(UnknownROSArgsError("['--bogus']")).startswith(
        "unknown ROS argument(s) ['--bogus']")


# ------------------------------------------------------------------------------------------
# With rclpy and the built package (skipped elsewhere)
# ------------------------------------------------------------------------------------------

def rclpy_test(function):
    """Marks of a test that runs real rclpy nodes (a process-level test)."""
    for mark in (pytest.mark.requires_rclpy, pytest.mark.slow, pytest.mark.timeout(180)):
        function = mark(function)
    return function


def ros():
    """Skip unless rclpy and the generated messages are importable."""
    pytest.importorskip('rclpy')
    pytest.importorskip('vit_perception.msg', reason='build the package with colcon first')


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from vit_perception.model.checkpoint import save_checkpoint
    from vit_perception.model.config import tiny_config
    from vit_perception.model.policy import build_policy

    return str(save_checkpoint(build_policy(tiny_config()), tmp_path / 'tiny'))


@pytest.fixture
def rclpy_context():
    ros()
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.try_shutdown()


class Spinner:
    """Spin nodes on a MultiThreadedExecutor in a background thread."""

    def __init__(self, *nodes):
        from rclpy.executors import MultiThreadedExecutor

        self.executor = MultiThreadedExecutor(num_threads=4)
        for node in nodes:
            self.executor.add_node(node)
        self.error: BaseException | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except BaseException as err:  # a callback raised: the executor stops serving
            if not self.stopping:  # (shutdown() racing the spin loop is rclpy's business)
                self.error = err
                import traceback

                traceback.print_exc()

    def stop(self):
        self.stopping = True
        self.executor.shutdown()
        self.thread.join(timeout=10)
        if self.error is not None:
            raise AssertionError(f'the executor died: {self.error!r}') from self.error


class Probe:
    """A test node: feeds images + poses stamped with its clock, records the outputs."""

    def __init__(self, rclpy):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image
        from vit_perception.msg import ActionChunk, Embedding

        self.node = rclpy.create_node('vit_perception_probe')
        self.received = {'embedding': [], 'action_chunk': [], 'action': [], 'diagnostics': []}
        for name, msg_type in (('embedding', Embedding), ('action_chunk', ActionChunk),
                               ('action', ActionChunk)):
            self.node.create_subscription(msg_type, f'/vit_perception/{name}',
                                          self.received[name].append, 10)
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      self.received['diagnostics'].append, 10)
        self.image_pub = self.node.create_publisher(Image, '/camera/image_raw', 5)
        self.pose_pub = self.node.create_publisher(PoseStamped, '/ee_pose', 10)
        self.Image, self.PoseStamped = Image, PoseStamped
        self.node.create_timer(0.02, self.publish_pose)
        self.node.create_timer(0.1, self.publish_image)
        self.image_stamps = []

    def publish_pose(self):
        msg = self.PoseStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = 'base'
        msg.pose.position.x, msg.pose.orientation.w = 0.4, 1.0
        self.pose_pub.publish(msg)

    def publish_image(self):
        msg = self.Image()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = 'cam'
        msg.height, msg.width, msg.encoding, msg.step = 32, 32, 'rgb8', 96
        msg.data = array.array('B', np.full(32 * 32 * 3, 128, np.uint8).tobytes())
        self.image_stamps.append(ros_node.stamp_to_ns(msg.header.stamp))
        self.image_pub.publish(msg)

    def wait_for(self, *names, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.received[name] for name in names):
                return True
            time.sleep(0.05)
        return False


def tiny_parameters(checkpoint: str) -> list:
    """Overrides for a fast CPU node on `checkpoint`."""
    from rclpy.parameter import Parameter

    return [Parameter('engine.model', value=checkpoint),
            Parameter('engine.device', value='cpu'), Parameter('engine.dtype', value='fp32'),
            Parameter('engine.warmup_iters', value=0),
            Parameter('control.control_rate_hz', value=20)]  # an integer for a double


@rclpy_test
@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::UserWarning')
def test_node_publishes_embedding_chunk_action_and_diagnostics(rclpy_context, tiny_checkpoint):
    node = ros_node.PerceptionNode(parameter_overrides=tiny_parameters(tiny_checkpoint))
    probe = Probe(rclpy_context)
    spinner = Spinner(node, probe.node)
    try:
        assert probe.wait_for('embedding', 'action_chunk', 'action', 'diagnostics')
    finally:
        spinner.stop()
        node.destroy_node()
        probe.node.destroy_node()
    embedding = probe.received['embedding'][0]
    assert list(embedding.shape) == [16] and len(embedding.data) == 16  # tiny_config dim
    assert embedding.header.frame_id == 'cam'
    assert ros_node.stamp_to_ns(embedding.header.stamp) in probe.image_stamps
    chunk = probe.received['action_chunk'][0]
    assert chunk.horizon == 4 and len(chunk.data) == 4 * len(chunk.names)
    assert ros_node.stamp_to_ns(chunk.header.stamp) == ros_node.stamp_to_ns(
        chunk.observation_stamp)
    action = probe.received['action'][0]
    assert action.horizon == 1 and len(action.data) == len(action.names) == len(chunk.names)
    assert np.isfinite(np.asarray(action.data)).all()
    status = probe.received['diagnostics'][-1].status[0]
    assert status.name == 'vit_perception: perception' and status.hardware_id == 'vit_perception'
    assert status.level in (b'\x00', b'\x01', b'\x02')  # OK / WARN / ERROR, a byte
    assert {kv.key: kv.value for kv in status.values}['model_id'] == 'vit_perception'


@rclpy_test
@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::UserWarning')
def test_node_reads_two_arm_poses_and_joint_states_by_name(rclpy_context, tmp_path):
    """Each arm's PoseStamped and the JointState are rows of the route table on rclpy too; a
    JointState lacking a configured joint is dropped and counted."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState

    from vit_perception.model.checkpoint import save_checkpoint
    from vit_perception.model.config import tiny_config
    from vit_perception.model.policy import build_policy

    checkpoint = str(save_checkpoint(build_policy(tiny_config(
        pose__arms=['left', 'right'], pose__proprio_names=['j0', 'j1'])), tmp_path / 'two'))
    topics = ['/left/ee_pose', '/right/ee_pose']
    node = ros_node.PerceptionNode(parameter_overrides=tiny_parameters(checkpoint) + [
        Parameter('topics.poses', value=topics), Parameter('diagnostics_period', value=0.2)])
    probe = Probe(rclpy_context)  # the image (and a pose on /ee_pose, unused here)
    arm_pubs = [probe.node.create_publisher(PoseStamped, topic, 10) for topic in topics]
    joints_pub = probe.node.create_publisher(JointState, '/joint_states', 10)

    def publish_arms_and_joints():
        stamp = probe.node.get_clock().now().to_msg()
        for pub in arm_pubs:
            msg = PoseStamped()
            msg.header.stamp = stamp
            msg.pose.position.x, msg.pose.orientation.w = 0.3, 1.0
            pub.publish(msg)
        msg = JointState(name=['j1', 'j0'], position=[0.1, 0.2])
        msg.header.stamp = stamp
        joints_pub.publish(msg)
        joints_pub.publish(JointState(name=['j0'], position=[0.2]))  # lacks j1: dropped

    probe.node.create_timer(0.02, publish_arms_and_joints)
    spinner = Spinner(node, probe.node)

    def counted():
        values = [{kv.key: kv.value for kv in d.status[0].values}
                  for d in probe.received['diagnostics']]
        return any(int(v.get('drops.bad_joint_state', 0)) > 0 for v in values)

    try:
        assert probe.wait_for('action_chunk', 'action')
        deadline = time.monotonic() + 30
        while not counted() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        spinner.stop()
        node.destroy_node()
        probe.node.destroy_node()
    assert counted()
    values = {kv.key: kv.value for kv in probe.received['diagnostics'][-1].status[0].values}
    assert int(values['rx./left/ee_pose']) > 0 and int(values['rx./right/ee_pose']) > 0
    assert int(values['rx./joint_states']) > 0 and 'age.joint_states_s' in values
    chunk = probe.received['action_chunk'][0]
    assert ros_node.stamp_to_ns(chunk.observation_stamp) in probe.image_stamps


@rclpy_test
@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::UserWarning')
def test_node_publishes_each_action_as_a_twist_on_topics_twist(rclpy_context, tiny_checkpoint):
    from geometry_msgs.msg import TwistStamped
    from rclpy.parameter import Parameter

    node = ros_node.PerceptionNode(parameter_overrides=tiny_parameters(tiny_checkpoint) + [
        Parameter('topics.twist', value='/ee/cmd_vel')])
    probe = Probe(rclpy_context)
    probe.received['twist'] = []
    probe.node.create_subscription(TwistStamped, '/ee/cmd_vel', probe.received['twist'].append,
                                   10)
    spinner = Spinner(node, probe.node)

    def matched():  # (action, twist) published by the same tick (same stamp)
        twists = {ros_node.stamp_to_ns(t.header.stamp): t for t in probe.received['twist']}
        return next(((a, twists[ros_node.stamp_to_ns(a.header.stamp)])
                     for a in list(probe.received['action'])
                     if ros_node.stamp_to_ns(a.header.stamp) in twists), None)

    try:
        deadline = time.monotonic() + 60.0
        while matched() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        spinner.stop()
        node.destroy_node()
        probe.node.destroy_node()
    action, twist = matched()
    names, data = list(action.names), np.asarray(action.data, dtype=np.float64)
    expected = [data[names.index(n)] / action.dt for n in TWIST_NAMES]
    got = [twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z,
           twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert twist.header.frame_id == action.header.frame_id


@rclpy_test
def test_node_refuses_topics_twist_for_a_model_without_twist_dimensions(rclpy_context,
                                                                       tmp_path):
    from rclpy.parameter import Parameter

    from vit_perception.model.checkpoint import save_checkpoint
    from vit_perception.model.config import tiny_config
    from vit_perception.model.policy import build_policy

    gripper_only = str(save_checkpoint(build_policy(tiny_config(actions__names=['gripper'])),
                                       tmp_path / 'gripper'))
    with pytest.raises(ConfigError) as info:
        ros_node.PerceptionNode(parameter_overrides=tiny_parameters(gripper_only) + [
            Parameter('topics.twist', value='/ee/cmd_vel')])
    assert 'topics.twist' in str(info.value) and '\n' not in str(info.value)


@rclpy_test
@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::UserWarning')
def test_node_takes_the_pose_from_tf_with_pose_input_source_tf(rclpy_context,
                                                                tiny_checkpoint):
    pytest.importorskip('tf2_ros')
    from geometry_msgs.msg import TransformStamped
    from rclpy.parameter import Parameter
    from tf2_ros import TransformBroadcaster

    node = ros_node.PerceptionNode(parameter_overrides=tiny_parameters(tiny_checkpoint) + [
        Parameter('pose_input.source', value='tf'),
        Parameter('pose_input.tf_base_frame', value='world'),
        Parameter('pose_input.tf_ee_frame', value='flange')])
    probe = Probe(rclpy_context)  # its /ee_pose poses are ignored: the node has no such input
    broadcaster = TransformBroadcaster(probe.node)

    def send():
        msg = TransformStamped()
        msg.header.stamp = probe.node.get_clock().now().to_msg()
        msg.header.frame_id, msg.child_frame_id = 'world', 'flange'
        msg.transform.translation.x, msg.transform.rotation.w = 0.4, 1.0
        broadcaster.sendTransform(msg)

    probe.node.create_timer(0.02, send)
    spinner = Spinner(node, probe.node)
    try:
        assert probe.wait_for('action_chunk', 'action')
    finally:
        spinner.stop()
        node.destroy_node()
        probe.node.destroy_node()
    assert probe.received['action'][0].header.frame_id == 'world'  # tf_base_frame
    assert probe.received['action_chunk'][0].header.frame_id == 'world'


@rclpy_test
def test_node_with_a_missing_checkpoint_fails_in_one_line(rclpy_context, tmp_path):
    from rclpy.parameter import Parameter

    missing = str(tmp_path / 'no_such_checkpoint')
    with pytest.raises(VitPerceptionError) as info:
        ros_node.PerceptionNode(parameter_overrides=[Parameter('engine.model', value=missing)])
    assert 'no_such_checkpoint' in str(info.value) and '\n' not in str(info.value)


@rclpy_test
@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::UserWarning')
def test_lifecycle_node_transitions(rclpy_context, tiny_checkpoint, tmp_path):
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.parameter import Parameter

    node = ros_node.PerceptionLifecycleNode(
        parameter_overrides=tiny_parameters(str(tmp_path / 'missing')))
    probe = Probe(rclpy_context)
    change = probe.node.create_client(ChangeState, '/vit_perception/change_state')
    get = probe.node.create_client(GetState, '/vit_perception/get_state')
    spinner = Spinner(node, probe.node)

    def call(client, request):
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(request)
        deadline = time.monotonic() + 120.0
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        return future.result()

    def transition(transition_id):
        return call(change, ChangeState.Request(transition=Transition(id=transition_id))).success

    def state():
        return call(get, GetState.Request()).current_state.id

    try:
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert not transition(Transition.TRANSITION_CONFIGURE)  # missing checkpoint: FAILURE
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        node.set_parameters([Parameter('engine.model', value=tiny_checkpoint)])
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert state() == State.PRIMARY_STATE_INACTIVE
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert probe.wait_for('embedding', 'action')
        assert transition(Transition.TRANSITION_DEACTIVATE)
        time.sleep(0.5)  # outputs in flight arrive
        for name in probe.received:
            probe.received[name].clear()
        time.sleep(1.0)
        assert probe.received['action'] == [] and probe.received['embedding'] == []  # paused
        assert transition(Transition.TRANSITION_ACTIVATE)  # the same entities resume
        assert probe.wait_for('embedding', 'action')
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_CLEANUP)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
    finally:
        spinner.stop()
        node.destroy_node()
        probe.node.destroy_node()


@rclpy_test
@pytest.mark.timeout(400)
@pytest.mark.parametrize('backend', ['ros', 'dds'])
def test_live_bench_feeds_each_backend_from_an_rclpy_peer_process(backend, tiny_checkpoint,
                                                                 monkeypatch):
    """`bench --live --backend ros|dds` end to end: an rclpy (Fast DDS) peer in its own process
    publishes images + poses into the node (rclpy, or Cyclone DDS: cross-vendor discovery on
    127.0.0.1) and records what comes back, counted the same way for both."""
    ros()
    from vit_perception.tools import harness
    from vit_perception.tools import live_bench as lb

    monkeypatch.delenv(harness.ROS_ENV_VARIABLE, raising=False)
    report = lb.measure_with_peer(
        backend, ros_env=harness.RosEnvironment.find(), duration=4.0, model=tiny_checkpoint,
        width=64, height=48, overrides=['engine.device=cpu', 'engine.warmup_iters=0'])
    assert report['backend'] == backend
    assert report['sent']['images'] > 0 and report['sent']['poses'] > report['sent']['images']
    assert 0 < report['images_to_chunks'] <= report['sent']['images']
    assert report['actions'] > 0 and report['max_action_gap_ms'] > 0
    assert report['latency_ms']['image_to_chunk']['n'] >= report['images_to_chunks']
    # rx.<topic>: what the node took off the wire, reported in /diagnostics on both backends
    assert 0 < report['node_received']['/camera/image_raw'] <= report['sent']['images']
    assert 0 < report['node_received']['/ee_pose'] <= report['sent']['poses']
    assert report['node_cpu_s'] > 0
    assert report['node_exit_code'] == 0 and report['node_tracebacks'] == 0


@rclpy_test
@pytest.mark.parametrize('ros_args, words', [
    (['-p'], "Couldn't parse trailing -p flag"),
    (['-p', 'engine.model'], "parameter override rule: '-p engine.model'"),
    (['-r', 'a'], "remap rule: '-r a'"),
    (['--params-file', '/no/such/params.yaml'], '/no/such/params.yaml'),
    (['--bogus'], "unknown ROS argument(s) ['--bogus']")])
def test_malformed_ros_args_exit_2_with_one_line(ros_args, words, capsys):
    ros()
    assert ros_node.main(['perception_node', '--ros-args', *ros_args]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('perception_node: ') and words in err
    assert 'Traceback' not in err and '/project/src' not in err


@rclpy_test
def test_dds_node_appears_in_the_ros_graph_from_the_ros_environment_alone(tiny_checkpoint):
    """The DDS node (Cyclone) configured only by ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE,
    no CYCLONEDDS_URI, is a node with its topics to rclpy (Fast DDS) peers: `ros2 node list`.
    A domain of its own: nodes of earlier tests named vit_perception stay out of the graph."""
    ros()
    import os

    import rclpy

    from vit_perception.tools import harness

    domain = harness.pick_domain()
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1',
               ROS_DOMAIN_ID=str(domain))
    env.pop('CYCLONEDDS_URI', None)
    argv = harness.cli_command('node', '--backend', 'dds', '--model', tiny_checkpoint, '--set',
                               'engine.device=cpu', '--set', 'engine.warmup_iters=0')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    probe = rclpy.create_node('graph_probe', context=context)

    def endpoints(kind):  # kind: 'publisher' or 'subscriber'
        if ('vit_perception', '/') not in probe.get_node_names_and_namespaces():
            return []  # (asking about a node not discovered yet raises)
        return getattr(probe, f'get_{kind}_names_and_types_by_node')('vit_perception', '/')

    with harness.NodeProcess(None, 0, argv=argv, env=env) as node:
        try:
            node.wait_running(timeout=120)
            # Publishers and subscribers are discovered separately: wait for both.
            assert harness.wait_for(lambda: len(endpoints('publisher')) >= 4
                                    and len(endpoints('subscriber')) >= 2,
                                    timeout=60, interval=0.2), (
                probe.get_node_names_and_namespaces(), endpoints('publisher'),
                endpoints('subscriber'), node.stderr()[-2000:])
            assert ('vit_perception', '/') in probe.get_node_names_and_namespaces()
            publishers = dict(endpoints('publisher'))
            subscribers = dict(endpoints('subscriber'))
        finally:
            probe.destroy_node()
            rclpy.try_shutdown(context=context)
        assert node.stop() == 0
        node.close()
    assert publishers['/vit_perception/action'] == ['vit_perception/msg/ActionChunk']
    assert publishers['/diagnostics'] == ['diagnostic_msgs/msg/DiagnosticArray']
    assert subscribers == {'/camera/image_raw': ['sensor_msgs/msg/Image'],
                           '/ee_pose': ['geometry_msgs/msg/PoseStamped']}
