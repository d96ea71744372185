"""ALOHA transfer-cube: the scene, the scripted expert, the bags, the sim loop on topics."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vit_perception.drivers import ros_types
from vit_perception.tools import harness
from vit_perception.tools.aloha.expert import TransferCubeExpert, interpolate, waypoints
from vit_perception.tools.aloha.record import (
    JOINT_STATE,
    AlohaStream,
    AlohaTopics,
    approach_noise,
    record_episodes,
    run_expert_episode,
)
from vit_perception.tools.aloha.scene import (
    JOINT_NAMES,
    START_ARM_POSE,
    AlohaEnv,
    gripper_normalized,
)
from vit_perception.tools.aloha.sim_process import AlohaSimLoop
from vit_perception.tools.sim.record import ACTION_CHUNK, IMAGE, START_NS
from vit_perception.tools.sim.sim_process import ActionInbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/doubles.py (importlib mode)
from doubles import read_bag  # noqa: E402

NS = 1_000_000_000


@pytest.fixture(scope='module')
def env():
    with AlohaEnv((48, 64)) as e:
        yield e


@pytest.fixture(scope='module')
def expert():
    return TransferCubeExpert()


def digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# ------------------------------------------------------------------------------- scene --

def test_reset_draws_the_cube_from_the_seed_in_acts_ranges(env):
    cubes = np.array([env.reset(seed).cube_position for seed in range(40)])
    assert np.all((cubes[:, 0] >= 0.0) & (cubes[:, 0] <= 0.2))
    assert np.all((cubes[:, 1] >= 0.4) & (cubes[:, 1] <= 0.6))
    assert np.all(cubes[:, 2] == 0.05)
    assert len({tuple(c) for c in cubes}) == 40
    np.testing.assert_array_equal(env.reset(7).cube_position, cubes[7])


def test_state_joint_names_start_pose_and_gripper_poses(env):
    state = env.reset(3, start_ns=START_NS)
    assert len(JOINT_NAMES) == 14 and JOINT_NAMES[0] == 'left_waist'
    assert JOINT_NAMES[6] == 'left_gripper' and JOINT_NAMES[13] == 'right_gripper'
    joints = state.sample.joints
    np.testing.assert_allclose(joints[[0, 1, 2, 7, 8, 9]], [0, -0.96, 1.16] * 2)
    np.testing.assert_allclose(joints[[6, 13]], gripper_normalized(START_ARM_POSE[6]))
    left, right = state.sample.poses
    # the mocap start positions ACT measured for this pose
    np.testing.assert_allclose(left.position, [-0.31718881, 0.5, 0.29525084], atol=1e-4)
    np.testing.assert_allclose(right.position, [0.31718881, 0.5, 0.29525084], atol=1e-4)
    for pose in (left, right):
        assert abs(np.linalg.norm(pose.orientation) - 1) < 1e-9 and pose.orientation[3] >= 0
    assert state.stamp_ns == START_NS and state.max_reward == 0 and not state.done


def test_step_samples_the_state_at_50_hz_and_ramps_towards_the_targets(env):
    state = env.reset(0, start_ns=START_NS)
    targets = state.sample.joints.copy()
    targets[0] += 0.2  # left waist
    state = env.step(targets)
    assert [s.stamp_ns - START_NS for s in env.trace] == [k * NS // 50 for k in range(1, 6)]
    assert state.stamp_ns == START_NS + NS // 10 and state.step == 1
    waist = [s.joints[0] for s in env.trace]
    assert waist == sorted(waist) and 0.05 < waist[-1] < 0.2  # moving, still behind the ramp
    with pytest.raises(ValueError, match='14 finite joint targets'):
        env.step(np.zeros(13))
    with pytest.raises(ValueError, match='14 finite joint targets'):
        env.step(np.full(14, np.nan))


def test_render_is_the_top_camera_at_the_requested_size(env):
    env.reset(1)
    image = env.render()
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert image.std() > 10
    red = (image[..., 0] > 150) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red.sum() >= 2  # the cube is visible (no red marker sites are drawn)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(expert):
    def run(seed):
        with AlohaEnv((48, 64)) as env:
            state = env.reset(seed)
            expert.plan(state.cube_position)
            digests = [digest(env.render())]
            for step in range(6):
                state = env.step(expert.target(step))
                digests += [digest(env.render()), digest(state.sample.joints)]
        return digests

    first = run(11)
    assert run(11) == first
    assert run(12)[0] != first[0]


def test_bad_image_size_is_a_one_line_error():
    from vit_perception.errors import ConfigError

    with pytest.raises(ConfigError, match=r'expected \(height, width\) integers'):
        AlohaEnv((8, 640))


# ------------------------------------------------------------------------------ expert --

def test_waypoints_follow_act_and_interpolate_linearly():
    cube = np.array([0.1, 0.5, 0.05])
    left, right = waypoints(cube)
    assert [p[0] for p in right] == [0, 90, 130, 170, 200, 220, 310, 360, 400]
    assert [p[0] for p in left] == [0, 100, 260, 310, 360, 400]
    xyz, quat, grip = interpolate(right, 110)  # halfway down onto the cube
    np.testing.assert_allclose(xyz, cube + [0, 0, (0.08 - 0.015) / 2])
    assert grip == 1 and abs(np.linalg.norm(quat) - 1) < 1e-12
    xyz, _, grip = interpolate(right, 150)  # closing
    assert grip == 0.5
    assert interpolate(left, 399)[2] == 0


@pytest.mark.parametrize('seed', [0, 1001])
def test_expert_transfers_the_cube(env, expert, seed):
    episode = run_expert_episode(env, expert, None, 0, seed)
    assert episode.success and episode.lift and episode.touch and episode.max_reward == 4
    assert episode.steps == 80
    # the left gripper holds the cube in the air, left of the meeting point
    assert episode.cube_final[2] > 0.15 and episode.cube_final[0] < -0.05


def test_doing_nothing_never_touches_the_cube(env):
    state = env.reset(2)
    for _ in range(20):
        state = env.step(env.targets)
    assert state.max_reward == 0 and not state.success


def test_expert_targets_are_the_plan_one_control_step_ahead(expert):
    trajectory = expert.plan(np.array([0.05, 0.45, 0.05]))
    assert trajectory.shape == (401, 14)
    np.testing.assert_array_equal(expert.target(0), trajectory[5])
    np.testing.assert_array_equal(expert.target(79), trajectory[400])
    assert trajectory[0, 13] == 0 and trajectory[100, 13] == 1  # right gripper opens to pick


def test_approach_noise_moves_only_the_right_arm_and_fades_before_the_grasp():
    noise = approach_noise(7, 80)
    assert noise.shape == (80, 14)
    assert not noise[:, :7].any() and not noise[:, 13].any()  # left arm, right gripper: none
    assert np.abs(noise[:9, 7:13]).max() > 0.05  # the approach: tenths of a radian
    assert not noise[13:].any()  # from the grasp on: none
    np.testing.assert_array_equal(noise, approach_noise(7, 80))  # the seed decides
    assert not np.array_equal(noise, approach_noise(8, 80))
    assert not approach_noise(7, 80, scale=0.0).any()


def test_noisy_expert_episode_records_the_plan_and_still_transfers(env, expert):
    """DART: the executed targets carry the noise, the recorded actions stay the expert's."""
    sent = []

    class Capture:
        topics = AlohaTopics()

        def event(self, *args):
            pass

        def observation(self, state):
            sent.append(('state', state.sample.joints.copy()))

        def action(self, topic, stamp_ns, targets):
            sent.append(('action', np.array(targets)))

    episode = run_expert_episode(env, expert, Capture(), 0, 1001, noise_scale=1.0)
    assert episode.success
    actions = [v for kind, v in sent if kind == 'action']
    states = [v for kind, v in sent if kind == 'state']
    np.testing.assert_array_equal(actions, [expert.target(k) for k in range(80)])
    drift = [np.abs(s[7:13] - expert.trajectory[5 * k, 7:13]).max()
             for k, s in enumerate(states[:10])]
    assert max(drift) > 0.1  # the right arm was off the plan during the approach


def test_diagnosis_kinematics_and_tolerance(env):
    from vit_perception.tools.aloha.diagnose import RightGripperKinematics, expert_tolerance

    state = env.reset(3)
    right = state.sample.poses[1].position
    np.testing.assert_allclose(RightGripperKinematics().xy(state.sample.joints), right[:2],
                               atol=1e-9)
    # the expert planning for the true cube transfers; for a cube 10 cm off it does not
    assert expert_tolerance(1, offsets_mm=(0, 100)) == {0: 1, 100: 0}


def test_closed_loop_diagnosis_of_the_experts_own_bag_is_near_zero(tmp_path):
    from vit_perception.tools.aloha.diagnose import closed_loop_errors

    record_episodes(tmp_path, 1, seed=9, image_size=(48, 64))
    ((name, reward, error),) = closed_loop_errors([tmp_path / 'episode_0000'])
    assert name == 'episode_0000' and reward == 4
    assert 0 <= error < 10  # the joint servos lag the plan by a few mm


# ------------------------------------------------------------------------------ record --

def test_record_writes_the_topics_the_node_reads(tmp_path):
    (episode,) = record_episodes(tmp_path, 1, seed=5, image_size=(48, 64))
    assert episode.success and episode.path == str(tmp_path / 'episode_0000')
    topics = read_bag(tmp_path / 'episode_0000')
    counts = {topic: len(msgs) for topic, msgs in topics.items()}
    assert counts == {'/sim/episode': 2, '/clock': 401, '/left/ee_pose': 401,
                      '/right/ee_pose': 401, '/joint_states': 401, '/camera/image_raw': 81,
                      '/expert/action': 80}
    image_stamps = [s for s, _, _ in topics['/camera/image_raw']]
    assert image_stamps[0] == START_NS and np.all(np.diff(image_stamps) == NS // 10)
    for stamp, msgtype, msg in topics['/camera/image_raw']:
        assert msgtype == IMAGE and ros_types.stamp_ns(msg.header.stamp) == stamp
        assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (48, 64, 'rgb8',
                                                                              'top')
    state_stamps = [s for s, _, _ in topics['/joint_states']]
    assert np.all(np.diff(state_stamps) == NS // 50)
    assert set(image_stamps) <= set(state_stamps)  # every image has a state at its stamp
    for stamp, msgtype, msg in topics['/joint_states']:
        assert msgtype == JOINT_STATE and list(msg.name) == list(JOINT_NAMES)
        assert msg.position.shape == (14,) and ros_types.stamp_ns(msg.header.stamp) == stamp
    for topic in ('/left/ee_pose', '/right/ee_pose'):
        assert [s for s, _, _ in topics[topic]] == state_stamps
        assert {m.header.frame_id for _, _, m in topics[topic]} == {'world'}
    left_start = topics['/left/ee_pose'][0][2].pose.position
    assert abs(left_start.x + 0.317) < 1e-3
    actions = [ros_types.chunk_from_msg(m) for _, _, m in topics['/expert/action']]
    assert [a.stamp_ns for a in actions] == image_stamps[:-1]
    assert all(a.names == list(JOINT_NAMES) and a.chunk.shape == (1, 14) and a.dt == 0.1
               for a in actions)
    start, end = (json.loads(m.data) for _, _, m in topics['/sim/episode'])
    assert (start['event'], end['event'], end['max_reward'], end['seed']) == ('start', 'end', 4,
                                                                              5)
    assert tuple(start['cube']) == episode.cube


# ------------------------------------------------------------------------------ loop --

class FakeNode:
    """In-process stand-in for the node: answers each top image with `respond(stamp)`."""

    def __init__(self, respond):
        self.inbox = ActionInbox(names=JOINT_NAMES)
        self.respond = respond
        self.published = {}

    def __call__(self, topic, msgtype, stamp_ns, msg):
        self.published.setdefault(topic, []).append(stamp_ns)
        if topic == '/camera/image_raw':
            targets = self.respond(stamp_ns)
            if targets is not None:
                self.inbox.put(ros_types.action_chunk_msg(
                    stamp_ns, JOINT_NAMES, 0.1, np.asarray(targets, np.float32)[None], stamp_ns))


def test_lockstep_loop_executes_the_policys_joint_targets(tmp_path):
    with AlohaEnv((32, 48)) as env:
        def respond(stamp_ns):  # a perfect 'policy': the expert's targets for this step
            if not len(loop.expert.trajectory):  # waiting for the policy: hold
                return env.targets
            return loop.expert.target(env.state().step)

        node = FakeNode(respond)
        loop = AlohaSimLoop(env, node, node.inbox, action_timeout=1.0, log=lambda _: None,
                            record_dir=tmp_path)
        report = loop.run(episodes=1, seed=1002)
        plan = loop.expert
    (result,) = report.episodes
    assert result.success and result.missed_actions == 0 and result.steps == 80
    assert '/expert/action' not in node.published  # privileged: recorded, never published
    topics = read_bag(tmp_path / 'episode_0000')
    executed = [ros_types.chunk_from_msg(m) for _, _, m in topics['/vit_perception/action']]
    assert len(executed) == 80 and len(topics['/expert/action']) == 80
    np.testing.assert_allclose(executed[10].chunk[0], plan.target(10), rtol=1e-6)


def test_lockstep_loop_holds_when_the_policy_is_silent():
    node = FakeNode(lambda stamp: None)
    with AlohaEnv((32, 48)) as env:
        loop = AlohaSimLoop(env, node, node.inbox, action_timeout=0.02, startup_timeout=0.2,
                            log=lambda _: None)
        from vit_perception.errors import SimError

        with pytest.raises(SimError, match='no action on /vit_perception/action'):
            loop.run(episodes=1)


def test_stream_publishes_samples_then_the_image():
    sent = []
    with AlohaEnv((32, 48)) as env:
        stream = AlohaStream(env, lambda *a: sent.append(a[:3]))
        state = env.reset(0, start_ns=START_NS)
        stream.observation(state)
    assert sent == [('/clock', 'rosgraph_msgs/msg/Clock', START_NS),
                    ('/left/ee_pose', 'geometry_msgs/msg/PoseStamped', START_NS),
                    ('/right/ee_pose', 'geometry_msgs/msg/PoseStamped', START_NS),
                    ('/joint_states', JOINT_STATE, START_NS),
                    ('/camera/image_raw', IMAGE, START_NS)]
    assert AlohaTopics().action == '/vit_perception/action' and ACTION_CHUNK.endswith('Chunk')


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_aloha_sim_lockstep_over_dds_with_a_responding_node():
    """The real transport: a DDS 'node' answers each image with the joint state it saw
    (hold still); the sim waits for every answer; poses and joint states arrive at 50 Hz."""
    import threading

    from vit_perception.drivers import dds
    from vit_perception.tools.aloha.sim_process import run_aloha_sim

    domain = harness.pick_domain()
    received = {'images': 0, 'left': 0, 'right': 0, 'joints': []}
    with dds.DdsTransport(domain) as node:
        pub = node.publisher('/vit_perception/action', ACTION_CHUNK, dds.DEFAULT)

        def on_image(msg):
            received['images'] += 1
            stamp = ros_types.stamp_ns(msg.header.stamp)
            if received['joints']:
                targets = np.asarray(received['joints'][-1], np.float32)[None]  # (1, 14)
                pub.publish(ros_types.action_chunk_msg(stamp, JOINT_NAMES, 0.1, targets, stamp))

        def count(key):
            return lambda msg: received.__setitem__(key, received[key] + 1)

        node.subscribe('/camera/image_raw', IMAGE, dds.SENSOR_DATA, on_image)
        node.subscribe('/left/ee_pose', 'geometry_msgs/msg/PoseStamped', dds.DEFAULT,
                       count('left'))
        node.subscribe('/right/ee_pose', 'geometry_msgs/msg/PoseStamped', dds.DEFAULT,
                       count('right'))
        node.subscribe('/joint_states', JOINT_STATE, dds.DEFAULT,
                       lambda msg: received['joints'].append(list(msg.position)))
        report = run_aloha_sim(domain, episodes=1, seed=1000, image_size=(48, 64),
                               startup_timeout=60, stop=threading.Event(), log=lambda _: None)
    (episode,) = report.episodes
    assert episode.steps == 80 and episode.missed_actions == 0 and episode.max_reward == 0
    assert report.actions_rejected == {}
    assert received['images'] >= 81 and min(received['left'], received['right']) >= 5 * 80
    assert len(received['joints'][-1]) == 14


# ------------------------------------------------------------------- extras, checkpoint --

def test_a_missing_extra_is_one_line_naming_the_aloha_extra(monkeypatch):
    from vit_perception.errors import ConfigError
    from vit_perception.tools import cli, extras

    real = extras.importable
    monkeypatch.setattr(extras, 'importable', lambda name: name != 'mujoco' and real(name))
    for argv in (['sim', '--task', 'aloha-transfer-cube'],
                 ['demo', '--task', 'aloha-transfer-cube']):
        with pytest.raises(ConfigError) as err:
            extras.check(cli.build_parser().parse_args(argv))
        assert str(err.value) == ("needs the extra aloha (missing mujoco): pip install -e "
                                  "'.[aloha]' in the vit_perception checkout")
    assert extras.needed(cli.build_parser().parse_args(['sim'])) == ('dds', 'sim')


def test_the_aloha_extra_is_what_the_benchmark_imports():
    import runpy
    from pathlib import Path
    from unittest import mock

    with mock.patch('setuptools.setup') as setup:
        runpy.run_path(str(Path(__file__).resolve().parents[2] / 'setup.py'))
    extras = setup.call_args.kwargs['extras_require']
    assert set(extras['aloha']) == set(extras['sim'] + extras['dds'] + extras['eval'])
    assert not any('gym' in req or 'dm-control' in req for req in extras['aloha'])


def test_node_parameters_point_the_node_at_the_sim():
    from vit_perception.config import load_node_config
    from vit_perception.tools.aloha.demo import JOINT_LIMITS, node_overrides

    config = load_node_config(None, node_overrides())
    assert config.topics.cameras == ['/camera/image_raw']
    assert config.topics.poses == ['/left/ee_pose', '/right/ee_pose']
    assert config.topics.joint_states == '/joint_states'
    assert config.safety.action_min == [lo for lo, _ in JOINT_LIMITS]
    assert len(config.safety.action_max) == 14 and config.safety.action_max[6] == 1.0


def test_the_shipped_checkpoint_is_small_and_loads():
    from vit_perception.model.checkpoint import load_checkpoint
    from vit_perception.tools.aloha.demo import DEFAULT_CHECKPOINT

    files = list(DEFAULT_CHECKPOINT.iterdir())
    assert sum(f.stat().st_size for f in files) <= 2 * 1024 * 1024
    assert sorted(f.name for f in files) == ['config.json', 'model.safetensors',
                                             'normalization.json']
    policy, info = load_checkpoint(DEFAULT_CHECKPOINT)
    config = policy.config
    assert config.pose.arms == ['left']
    assert config.pose.proprio_names == [*JOINT_NAMES[:7], 'right_gripper']
    assert config.actions.names == list(JOINT_NAMES) and config.ablate_images is False
    assert info['episodes'] == 300  # recipe: 100 clean + 200 DART demos
    # on held-out episodes the model beats the mean action on most joints
    better = [mae < base for mae, base in zip(info['val_mae'], info['val_baseline_mae'])]
    assert sum(better) >= 10


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_one_episode_with_the_shipped_checkpoint(tmp_path):
    """CI's smoke: sim and node as two processes over DDS, the shipped checkpoint, 1 episode."""
    import subprocess
    import sys

    report = tmp_path / 'report'
    out = subprocess.run(
        [sys.executable, '-m', 'vit_perception.tools.cli', 'demo', '--task',
         'aloha-transfer-cube', '--episodes', '1', '--report', str(report)],
        capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith('transfer ') and '/1 (' in out.stdout
    sim = json.loads((report / 'sim.json').read_text())
    (episode,) = sim['episodes']
    assert episode['seed'] == 1000 and episode['steps'] == 80
    assert episode['missed_actions'] == 0 and sim['actions_rejected'] == {}
    stats = json.loads((report / 'node_stats.json').read_text())
    assert stats['image_to_chunk_ms']['count'] >= 80
    text = (report / 'report.md').read_text()
    assert '| 0 | 1000 |' in text and 'Transfer' in text
    assert (report / 'episode_00.png').stat().st_size > 0
    topics = read_bag(report / 'bags' / 'episode_0000')
    executed = [ros_types.chunk_from_msg(m) for _, _, m in topics['/vit_perception/action']]
    assert len(executed) == 80 and all(a.names == list(JOINT_NAMES) for a in executed)
