import hashlib
import json
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from vit_perception.drivers import ros_types
from vit_perception.errors import ConfigError
from vit_perception.tools import harness
from vit_perception.tools.sim.expert import ReachExpert
from vit_perception.tools.sim.record import (
    ACTION_CHUNK,
    IMAGE,
    START_NS,
    EpisodeStream,
    SimTopics,
    record_episodes,
)
from vit_perception.tools.sim.scene import ACTION_NAMES, ReachEnv
from vit_perception.tools.sim.sim_process import ActionInbox, SimLoop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/doubles.py (importlib mode)
from doubles import read_bag  # noqa: E402

NS = 1_000_000_000


@pytest.fixture(scope='module')
def env():
    with ReachEnv(0, image_size=96, wrist_image_size=64) as e:
        yield e


def run_expert(env, seed):
    state = env.reset(seed)
    expert = ReachExpert(env.task)
    while not state.done:
        state = env.step(expert.act(state))
    return state


def digest(image):
    return hashlib.sha256(image.tobytes()).hexdigest()


# ------------------------------------------------------------------------------- scene --

def test_render_shapes_dtype_and_content(env):
    env.reset(1)
    scene, wrist = env.render('scene'), env.render('wrist')
    assert scene.shape == (96, 96, 3) and scene.dtype == np.uint8
    assert wrist.shape == (64, 64, 3) and wrist.dtype == np.uint8
    assert scene.std() > 10 and wrist.std() > 10  # a picture, not a blank buffer
    with pytest.raises(ConfigError, match='expected one of'):
        env.render('overhead')


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    actions = [np.array([0.1, -0.05, -0.1, 0, 0, 0.3, 0.5])] * 3
    runs = []
    for _ in range(2):
        with ReachEnv(5, image_size=64) as e:
            frames = [digest(e.render('scene')) + digest(e.render('wrist'))]
            for a in actions:
                state = e.step(a)
                frames.append(digest(e.render('scene')) + digest(e.render('wrist')))
            runs.append((frames, state.ee_position.tobytes(), state.target_position.tobytes()))
    assert runs[0] == runs[1]
    with ReachEnv(6, image_size=64) as e:
        assert digest(e.render('scene')) != runs[0][0][0][:64]


def test_reset_with_a_seed_replays_the_episode(env):
    first = env.reset(11)
    image = env.render('scene')
    env.reset(12)
    again = env.reset(11)
    np.testing.assert_array_equal(first.target_position, again.target_position)
    np.testing.assert_array_equal(first.ee_position, again.ee_position)
    assert np.array_equal(image, env.render('scene'))


def test_targets_cover_the_table_region_independently_of_the_start(env):
    targets, starts = [], []
    for seed in range(40):
        state = env.reset(seed)
        targets.append(state.target_position)
        starts.append(state.ee_position)
    targets, starts = np.array(targets), np.array(starts)
    task = env.task
    assert targets[:, 0].min() >= task.target_x[0] and targets[:, 0].max() <= task.target_x[1]
    assert targets[:, 1].min() >= task.target_y[0] and targets[:, 1].max() <= task.target_y[1]
    assert np.ptp(targets[:, 0]) > 0.2 and np.ptp(targets[:, 1]) > 0.25
    # The start pose says nothing about the target: weak correlation either way.
    for axis in (0, 1):
        assert abs(np.corrcoef(targets[:, axis], starts[:, axis])[0, 1]) < 0.4


def test_pose_trace_is_sampled_at_the_pose_rate(env):
    state = env.reset(2)
    assert state.stamp_ns == 0 and state.step == 0
    state = env.step(np.zeros(7))
    stamps = [s for s, _, _ in env.pose_trace]
    assert stamps == [20_000_000, 40_000_000, 60_000_000, 80_000_000, 100_000_000]
    assert state.stamp_ns == 100_000_000
    _, position, quat = env.pose_trace[-1]
    np.testing.assert_array_equal(position, state.ee_position)
    assert np.linalg.norm(quat) == pytest.approx(1.0)
    # TCP frame: z axis points down (gripper approach), yaw 0 -> quaternion (1, 0, 0, 0) xyzw
    np.testing.assert_allclose(np.abs(quat), [1, 0, 0, 0], atol=1e-6)


def test_actions_are_clipped_to_the_speed_limit_and_workspace(env):
    state = env.reset(3)
    start = state.ee_position
    for _ in range(5):
        state = env.step(np.array([10.0, 0, 0, 0, 0, 0, 0]))
    moved = state.ee_position[0] - start[0]
    limit = 5 * env.task.max_speed * env.control_dt
    assert 0.8 * limit < moved <= limit + 1e-9
    for _ in range(40):
        state = env.step(np.array([0, 0, -1.0, 0, 0, 0, 0]))
    assert state.ee_position[2] == pytest.approx(env.task.workspace_min[2], abs=0.002)


def test_bad_actions_raise(env):
    env.reset(0)
    with pytest.raises(ValueError, match='expected 7 finite values'):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match='expected 7 finite values'):
        env.step(np.array([np.nan, 0, 0, 0, 0, 0, 0]))


def test_bad_config_is_one_line_error():
    with pytest.raises(ConfigError, match='control_dt=0.0123'):
        ReachEnv(0, control_dt=0.0123)
    with pytest.raises(ConfigError, match='image_size=0'):
        ReachEnv(0, image_size=0)


def test_expert_succeeds_on_every_seed(env):
    results = [run_expert(env, seed) for seed in range(10)]
    assert sum(s.success for s in results) >= 9
    assert max(s.step for s in results) < 30  # well inside the 60-step budget


def test_success_needs_hold_steps_in_tolerance_and_is_latched(env):
    state = env.reset(4)
    assert not env.in_tolerance() and not state.success
    expert = ReachExpert(env.task)
    while not env.in_tolerance():
        state = env.step(expert.act(state))
        assert state.step < 40
    assert not state.success and not state.done  # 1 of 3 steps held
    state = env.step(np.zeros(7))
    assert env.in_tolerance() and not state.success
    state = env.step(np.zeros(7))
    assert state.success and state.done and env.success()
    for _ in range(3):  # leave the goal: success stays latched
        state = env.step(np.array([0, 0, 0.2, 0, 0, 0, 0]))
    assert not env.in_tolerance() and state.success


def test_doing_nothing_times_out_without_success():
    with ReachEnv(7, max_steps=12) as e:
        state = e.state()
        while not state.done:
            state = e.step(np.zeros(7))
        assert state.step == 12 and not state.success


def test_the_scene_camera_locates_the_target_and_pose_alone_cannot(env):
    """The task design claim: the goal is in the image (a pixel-centroid controller reaches it),
    and a controller without the image (the best fixed guess) does not."""
    def puck_centroid(image):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # OpenCV hue 0..180
        hue, sat, val = hsv[..., 0].astype(int), hsv[..., 1], hsv[..., 2]
        ys, xs = np.nonzero(((hue < 25) | (hue > 165)) & (sat > 120) & (val > 60))
        return np.array([xs.mean(), ys.mean()]) if len(xs) else None

    pixels, world = [], []
    for seed in range(100, 130):
        state = env.reset(seed)
        pixels.append(puck_centroid(env.render('scene')))
        world.append(state.target_position[:2])
    homography, _ = cv2.findHomography(np.array(pixels), np.array(world))

    def drive(seed, locate):
        state = env.reset(seed)
        while not state.done:
            goal = np.array([*locate(), env.task.target_height / 2 + env.task.hover_height])
            action = np.zeros(7)
            action[:3] = np.clip(2.0 * (goal - state.ee_position), -0.2, 0.2)
            state = env.step(action)
        return state.success

    def from_image():
        point = homography @ np.array([*puck_centroid(env.render('scene')), 1.0])
        return point[:2] / point[2]

    seeds = range(300, 310)
    assert sum(drive(seed, from_image) for seed in seeds) >= 9
    assert sum(drive(seed, lambda: np.array([0.45, 0.0])) for seed in seeds) <= 2


# ------------------------------------------------------------------------------ record --

@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_record_writes_one_readable_bag_per_episode(tmp_path, storage):
    summaries = record_episodes(tmp_path, 2, seed=3, image_size=64, storage=storage)
    assert [s.seed for s in summaries] == [3, 4]
    assert all(s.success for s in summaries)
    suffix = '.mcap' if storage == 'mcap' else '.db3'
    for summary in summaries:
        bag = tmp_path / f'episode_{summary.index:04d}'
        assert summary.path == str(bag) and (bag / f'{bag.name}{suffix}').is_file()
        assert sum(f.stat().st_size for f in bag.iterdir()) < 3_000_000
        topics = read_bag(bag)
        steps = summary.steps
        counts = {topic: len(msgs) for topic, msgs in topics.items()}
        assert counts == {'/sim/episode': 2, '/clock': 5 * steps + 1, '/ee_pose': 5 * steps + 1,
                          '/camera/image_raw': steps + 1, '/wrist_camera/image_raw': steps + 1,
                          '/expert/action': steps}
        for msgs in topics.values():
            stamps = [stamp for stamp, _, _ in msgs]
            assert stamps == sorted(stamps) and stamps[0] >= START_NS
        for stamp, msgtype, msg in topics['/camera/image_raw']:
            assert msgtype == IMAGE and ros_types.stamp_ns(msg.header.stamp) == stamp
            assert (msg.height, msg.width, msg.encoding, msg.step) == (64, 64, 'rgb8', 192)
            assert msg.header.frame_id == 'camera' and len(msg.data) == 64 * 64 * 3
        image_stamps = [s for s, _, _ in topics['/camera/image_raw']]
        assert np.all(np.diff(image_stamps) == NS // 10)
        pose_stamps = [s for s, _, _ in topics['/ee_pose']]
        assert np.all(np.diff(pose_stamps) == NS // 50)
        assert {m.header.frame_id for _, _, m in topics['/ee_pose']} == {'base'}
        assert [s for s, _, _ in topics['/clock']] == pose_stamps
        actions = [ros_types.chunk_from_msg(m) for _, _, m in topics['/expert/action']]
        assert [a.stamp_ns for a in actions] == image_stamps[:-1]
        assert all(a.names == list(ACTION_NAMES) and a.chunk.shape == (1, 7) and a.dt == 0.1
                   and a.observation_stamp_ns == a.stamp_ns for a in actions)
        assert np.abs(actions[0].chunk[0, :3]).max() > 0.05  # the expert moves at the start
        start, end = (json.loads(m.data) for _, _, m in topics['/sim/episode'])
        assert (start['event'], end['event']) == ('start', 'end')
        assert start['seed'] == end['seed'] == summary.seed
        assert end['success'] is True and end['step'] == steps
        assert tuple(end['target']) == summary.target


def test_recorded_labels_are_the_expert_action_at_the_recorded_pose(tmp_path):
    (summary,) = record_episodes(tmp_path, 1, seed=8, image_size=32)
    topics = read_bag(tmp_path / 'episode_0000')
    poses = {s: m.pose.position for s, _, m in topics['/ee_pose']}
    target = np.array(summary.target)
    expert = ReachExpert()
    for stamp, _, msg in topics['/expert/action']:
        p = poses[stamp]
        goal = target + [0, 0, expert.task.hover_height]
        expected = np.clip(expert.gain * (goal - [p.x, p.y, p.z]), -0.2, 0.2)
        np.testing.assert_allclose(msg.data[:3], expected, atol=1e-6)


def test_record_refuses_to_overwrite(tmp_path):
    record_episodes(tmp_path, 1, seed=0, image_size=32)
    with pytest.raises(ConfigError, match='exists'):
        record_episodes(tmp_path, 1, seed=0, image_size=32)


# ---------------------------------------------------------------------- sim process --

def chunk(stamp, obs, values, names=ACTION_NAMES):
    return ros_types.action_chunk_msg(stamp, names, 0.1, np.asarray(values, np.float32), obs)


def test_inbox_maps_names_and_rejects_bad_actions():
    logs = []
    inbox = ActionInbox(logs.append)
    inbox.put(chunk(5, 5, [0.3, 0.1, -0.2], names=['gripper', 'dx', 'dz']))
    got = inbox.wait_for(5, 0.0)
    np.testing.assert_allclose(got.action, [0.1, 0, -0.2, 0, 0, 0, 0.3], rtol=1e-6)
    assert inbox.wait_for(6, 0.01) is None
    inbox.put(chunk(7, 7, [np.nan] * 7))
    inbox.put(chunk(7, 7, [1.0], names=['throttle']))
    inbox.put(chunk(7, 7, [1.0], names=['throttle']))
    inbox.put(chunk(9, 4, [0.0] * 7))  # older observation: never replaces a newer one
    assert inbox.wait_for(5, 0.0).observation_stamp_ns == 5
    assert inbox.last().stamp_ns == 9
    assert inbox.received == 2 and inbox.rejected == {'nonfinite': 1, 'no_known_names': 2}
    assert len(logs) == 2  # logged once per reason


class FakeNode:
    """In-process stand-in for the perception node: answers each scene image with `respond`."""

    def __init__(self, respond):
        self.inbox = ActionInbox()
        self.respond = respond
        self.published = {}

    def __call__(self, topic, msgtype, stamp_ns, msg):
        self.published.setdefault(topic, []).append(stamp_ns)
        if topic == '/camera/image_raw':
            action = self.respond(stamp_ns)
            if action is not None:
                self.inbox.put(chunk(stamp_ns, stamp_ns, action))


def test_lockstep_executes_each_answer_once_and_is_deterministic(tmp_path):
    def respond(stamp_ns):
        return [0.0, 0.1, -0.1, 0, 0, 0, 0.0]

    results = []
    for run in range(2):
        node = FakeNode(respond)
        with ReachEnv(0, image_size=32, max_steps=8) as env:
            loop = SimLoop(env, node, node.inbox, action_timeout=1.0, log=lambda _: None,
                           record_dir=tmp_path / f'run{run}')
            report = loop.run(episodes=2, seed=20)
        results.append(report)
        assert [e.steps for e in report.episodes] == [8, 8]
        assert [e.missed_actions for e in report.episodes] == [0, 0]
        assert '/expert/action' not in node.published  # privileged: recorded, not published
        images = node.published['/camera/image_raw']
        assert images == sorted(images) and images[0] == START_NS
        # episodes are episode_gap (2 s) of sim time apart
        starts = [s for s in images if s > images[0] and s - images[images.index(s) - 1] > NS]
        assert len(starts) == 2
    assert [e.to_dict() | {'path': ''} for e in results[0].episodes] == \
        [e.to_dict() | {'path': ''} for e in results[1].episodes]
    topics = read_bag(tmp_path / 'run0' / 'episode_0000')
    executed = [ros_types.chunk_from_msg(m) for _, _, m in topics['/vit_perception/action']]
    assert len(executed) == 8 and len(topics['/expert/action']) == 8
    np.testing.assert_allclose(executed[0].chunk[0, :3], [0, 0.1, -0.1], rtol=1e-6)
    poses = topics['/ee_pose']
    moved = np.array([poses[-1][2].pose.position.y - poses[0][2].pose.position.y,
                      poses[-1][2].pose.position.z - poses[0][2].pose.position.z])
    np.testing.assert_allclose(moved, [0.08, -0.08], atol=0.01)  # 8 steps x 0.1 m/s x 0.1 s


def test_lockstep_holds_when_the_policy_is_silent_or_stale():
    answered = []

    def respond(stamp_ns):  # answers the start-up observation only, then goes quiet
        if not answered:
            answered.append(stamp_ns)
            return [0.2, 0, 0, 0, 0, 0, 0]
        return None

    node = FakeNode(respond)
    with ReachEnv(0, image_size=32, max_steps=3) as env:
        loop = SimLoop(env, node, node.inbox, action_timeout=0.05, log=lambda _: None)
        report = loop.run(episodes=1, seed=1)
        (episode,) = report.episodes
        assert episode.missed_actions == 3 and not episode.success
        first_episode_pose = env.ee_pose()[0]
    # while waiting, /clock was re-published at the frozen sim time
    clocks = node.published['/clock']
    assert len(clocks) > len(set(clocks))
    # holding means no motion: the stale 0.2 m/s answer was not replayed
    with ReachEnv(0, image_size=32) as fresh:
        fresh.reset(1)
        np.testing.assert_allclose(first_episode_pose, fresh.ee_pose()[0], atol=1e-3)


class SimTimeNode:
    """Like a ROS node on sim time: its control timer fires only when /clock passes the next
    deadline (50 Hz), so the tick at t runs before the observation at t is inferred."""

    def __init__(self, period_ns=20_000_000):
        self.inbox = ActionInbox()
        self.period_ns = period_ns
        self.now = self.deadline = 0
        self.chunks = {}  # observation stamp -> (H, 7) chunk
        self.ticks = []

    def __call__(self, topic, msgtype, stamp_ns, msg):
        if topic == '/clock':
            self.now = max(self.now, ros_types.clock_from_msg(msg))
            if self.now >= self.deadline:
                self.deadline = self.now - self.now % self.period_ns + self.period_ns
                self.tick()
        elif topic == '/camera/image_raw':  # inference: a chunk, published on action_chunk
            chunk = np.zeros((4, 7), np.float32)
            chunk[:, 0] = 0.01 * (len(self.chunks) % 5) + 0.1 * np.arange(4)  # (H, A)
            self.chunks[stamp_ns] = chunk
            self.inbox.put_chunk(ros_types.action_chunk_msg(stamp_ns, ACTION_NAMES, 0.1, chunk,
                                                            stamp_ns))

    def tick(self):
        if not self.chunks:
            return
        stamp = max(self.chunks)
        index = (self.now - stamp + 50_000_000) // 100_000_000  # as ActionScheduler rounds
        if index < 4:
            self.ticks.append((self.now, stamp))
            self.inbox.put(chunk(self.now, stamp, self.chunks[stamp][index]))


def test_lockstep_nudges_the_clock_for_a_node_whose_timer_runs_on_sim_time(tmp_path):
    node = SimTimeNode()
    with ReachEnv(0, image_size=32, max_steps=5) as env:
        loop = SimLoop(env, node, node.inbox, action_timeout=1.0, log=lambda _: None,
                       record_dir=tmp_path)
        (episode,) = loop.run(episodes=1, seed=3).episodes
    assert episode.missed_actions == 0 and episode.resent_observations == 0
    topics = read_bag(tmp_path / 'episode_0000')
    images = [stamp for stamp, _, _ in topics['/camera/image_raw']]
    executed = [ros_types.chunk_from_msg(m) for _, _, m in topics['/vit_perception/action']]
    # each step executed step 0 of the chunk of its own observation, ticked at t + 49 ms
    assert [a.observation_stamp_ns for a in executed] == images[:-1]
    assert [a.stamp_ns - a.observation_stamp_ns for a in executed] == [49_000_000] * 5
    for action in executed:
        inferred = node.chunks[action.observation_stamp_ns]
        np.testing.assert_array_equal(action.chunk[0], inferred[0])
    # Without the nudge the timer never fires again at the frozen time: every step would hold.
    node = SimTimeNode()
    with ReachEnv(0, image_size=32, max_steps=2) as env:
        loop = SimLoop(env, node, node.inbox, action_timeout=0.1, log=lambda _: None)
        loop._nudge_ns = 0
        (episode,) = loop.run(episodes=1, seed=3).episodes
    assert episode.missed_actions == 2


def test_lockstep_resends_an_unanswered_observation_once():
    seen = []

    def respond(stamp_ns):  # drops the first copy of every 3rd image (a lost best-effort frame)
        seen.append(stamp_ns)
        if len(set(seen)) % 3 == 0 and seen.count(stamp_ns) == 1:
            return None
        return [0, 0, 0, 0, 0, 0, 0]

    node = FakeNode(respond)
    with ReachEnv(0, image_size=32, max_steps=6) as env:
        loop = SimLoop(env, node, node.inbox, action_timeout=2.0, resend_after=0.02,
                       log=lambda _: None)
        (episode,) = loop.run(episodes=1, seed=2).episodes
    assert episode.missed_actions == 0 and episode.steps == 6
    repeated = sorted({s for s in seen if seen.count(s) == 2})
    assert episode.resent_observations == len(repeated) == 2
    assert all(seen.count(s) <= 2 for s in seen)


def test_startup_without_a_policy_is_a_one_line_error():
    from vit_perception.errors import SimError

    node = FakeNode(lambda stamp: None)
    with ReachEnv(0, image_size=32) as env:
        loop = SimLoop(env, node, node.inbox, startup_timeout=0.3, log=lambda _: None)
        with pytest.raises(SimError, match='no action on /vit_perception/action within 0.3 s'):
            loop.run(episodes=1)


def test_expert_mode_publishes_expert_actions_and_succeeds():
    published = FakeNode(lambda stamp: None)
    with ReachEnv(0, image_size=32) as env:
        report = SimLoop(env, published, None, log=lambda _: None).run(episodes=3, seed=0)
    assert report.mode == 'expert' and report.success_rate == 1.0
    assert len(published.published['/expert/action']) == sum(e.steps for e in report.episodes)
    assert len(published.published['/sim/episode']) == 6


def test_episode_stream_matches_the_bag_layout():
    sent = []
    with ReachEnv(0, image_size=32) as env:
        stream = EpisodeStream(env, lambda *a: sent.append(a[:3]))
        state = env.reset(0, start_ns=START_NS)
        stream.observation(state)
    assert sent == [('/clock', 'rosgraph_msgs/msg/Clock', START_NS),
                    ('/ee_pose', 'geometry_msgs/msg/PoseStamped', START_NS),
                    ('/camera/image_raw', IMAGE, START_NS),
                    ('/wrist_camera/image_raw', IMAGE, START_NS)]
    assert SimTopics().action == '/vit_perception/action' and ACTION_CHUNK.endswith('ActionChunk')


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_sim_lockstep_over_dds_with_a_responding_node():
    """The real transport: a DDS 'node' answers every image; the sim waits for each answer."""
    from vit_perception.drivers import dds
    from vit_perception.tools.sim.sim_process import run_sim

    domain = harness.pick_domain()  # a domain of its own: parallel runs do not cross-talk
    received = {'images': 0, 'poses': 0}
    with dds.DdsTransport(domain) as node:
        pub = node.publisher('/vit_perception/action', ACTION_CHUNK, dds.DEFAULT)

        def on_image(msg):
            received['images'] += 1
            stamp = ros_types.stamp_ns(msg.header.stamp)
            pub.publish(chunk(stamp, stamp, [0, 0, -0.1, 0, 0, 0, 0]))

        node.subscribe('/camera/image_raw', IMAGE, dds.SENSOR_DATA, on_image)
        node.subscribe('/ee_pose', 'geometry_msgs/msg/PoseStamped', dds.DEFAULT,
                       lambda msg: received.__setitem__('poses', received['poses'] + 1))
        stop = threading.Event()
        report = run_sim(domain, episodes=2, seed=0, image_size=32, max_steps=6,
                         startup_timeout=60, stop=stop, log=lambda _: None)
    assert [e.steps for e in report.episodes] == [6, 6]
    assert [e.missed_actions for e in report.episodes] == [0, 0]
    assert report.actions_received >= 12 and report.actions_rejected == {}
    assert received['images'] >= 14 and received['poses'] >= 5 * 12


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_closed_loop_with_the_dds_node_on_sim_time_is_lockstep_and_repeatable():
    """The real node (DDS driver, PerceptionCore, sim-time control timer, a tiny random
    early-fusion policy) drives the arm: no step waits in vain and two runs end identically."""
    import torch

    from vit_perception.config import NodeConfig
    from vit_perception.core.engine import Engine
    from vit_perception.drivers.dds_node import run_dds_node
    from vit_perception.model.config import tiny_config
    from vit_perception.model.policy import build_policy
    from vit_perception.tools.sim.sim_process import run_sim

    torch.manual_seed(0)
    policy = build_policy(tiny_config()).eval()
    policy.set_normalization({'pose_mean': [0.3] * 9, 'pose_std': [0.5] * 9,
                              'action_mean': [0.0] * 7, 'action_std': [0.1] * 7})
    engine = Engine(policy, device='cpu', dtype='fp32', warmup_iters=1)
    domain = harness.pick_domain()
    runs = []
    for _ in range(2):
        stop = threading.Event()
        failures = []

        def node_main(stop=stop, failures=failures):
            try:
                run_dds_node(NodeConfig(domain_id=domain), engine, stop, use_sim_time=True)
            except Exception as err:  # surfaces below instead of a 60 s start-up wait
                failures.append(err)
                stop.set()

        node = threading.Thread(target=node_main)
        node.start()
        try:
            report = run_sim(domain, episodes=2, seed=5, image_size=32, max_steps=10,
                             startup_timeout=60, stop=stop, log=lambda _: None)
        finally:
            stop.set()
            node.join(timeout=30)
        assert failures == []
        assert [e.missed_actions for e in report.episodes] == [0, 0]
        assert report.actions_received >= 20 and report.actions_rejected == {}
        runs.append([(e.steps, e.final_error_m) for e in report.episodes])
    assert runs[0] == runs[1]
    assert [steps for steps, _ in runs[0]] == [10, 10]
