"""PerceptionCore with a fake engine, fake clock and recording outputs (no transport, no torch)."""

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vit_perception.config import NodeConfig
from vit_perception.core.node import ERROR, OK, WARN, PerceptionCore, non_finite
from vit_perception.core.types import ImageFrame, JointSample, PoseSample
from vit_perception.errors import ConfigError, ImageError, PoseError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/doubles.py (importlib mode)
from doubles import FakeEngine  # noqa: E402

MS = 1_000_000
S = 1_000_000_000
T0 = 1000 * S
IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])
H = 4


class FakeClock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, ns):
        self.now += ns


class BlockingEngine(FakeEngine):
    """infer() signals `entered` and waits for `release` (a stuck or slow model)."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def infer(self, obs):
        self.entered.release()
        assert self.release.acquire(timeout=20), 'test never released the engine'
        return super().infer(obs)


class Outputs:
    def __init__(self):
        self.embeddings, self.chunks, self.actions, self.reports, self.logs = [], [], [], [], []

    def publish_embedding(self, result, frame_id):
        self.embeddings.append((result.observation_stamp_ns, frame_id))

    def publish_chunk(self, result):
        self.chunks.append(result)

    def publish_action(self, stamp_ns, action, observation_stamp_ns):
        self.actions.append((stamp_ns, action.tolist(), observation_stamp_ns))

    def publish_diagnostics(self, report):
        self.reports.append(report)

    def log(self, level, text):
        self.logs.append((level, text))


def make(fusion='early', threaded=False, engine=None, **overrides):
    data = {'sync': {'max_pose_skew': 0.05, 'max_observation_age': 0.5},
            'control': {'ensemble_coeff': -1.0}}
    for key, value in overrides.items():
        group, name = key.split('__')
        data.setdefault(group, {})[name] = value
    config = NodeConfig.from_dict(data)
    clock, outputs = FakeClock(), Outputs()
    engine = engine or FakeEngine(fusion)
    core = PerceptionCore(config, engine, outputs, clock, threaded=threaded)
    return core, engine, outputs, clock


def pose(t_ns, position=(0.0, 0.0, 0.0)):
    return PoseSample(t_ns, 'base', np.array(position, dtype=float), IDENTITY.copy())


def image(t_ns, camera=0):
    return ImageFrame(stamp_ns=t_ns, frame_id=f'cam{camera}', data=b'', camera=camera)


def feed_observation(core, clock, t_ns, position):
    """Poses bracketing t_ns, then the image at t_ns; the clock ends 10 ms after t_ns."""
    clock.now = t_ns - 5 * MS
    core.on_pose(pose(t_ns - 10 * MS, position))
    clock.now = t_ns + 5 * MS
    core.on_pose(pose(t_ns + 5 * MS, position))
    clock.now = t_ns + 10 * MS
    core.on_image(image(t_ns))


def wait_until(condition, what):
    """Synchronization only (no timing assertion): poll until true, fail after 20 s."""
    for _ in range(20000):
        if condition():
            return
        time.sleep(0.001)
    raise AssertionError(f'never happened: {what}')


# ------------------------------------------------------------------ synchronous (replay) mode


def test_observation_to_embedding_chunk_and_action():
    core, engine, out, clock = make()
    feed_observation(core, clock, T0, (1.0, 2.0, 3.0))
    assert core.run_pending() is True
    assert core.run_pending() is False  # latest-only slot is empty now
    assert out.embeddings == [(T0, 'cam0')]
    assert out.chunks[0].chunk.tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]]
    action = core.tick()  # now = T0 + 10 ms -> step 0
    assert action.tolist() == [1.0, 2.0, 3.0]
    assert out.actions == [(T0 + 10 * MS, [1.0, 2.0, 3.0], T0)]
    clock.now = T0 + 160 * MS  # step round(1.6) = 2
    assert core.tick().tolist() == [3.0, 4.0, 5.0]
    assert out.actions[-1] == (T0 + 160 * MS, [3.0, 4.0, 5.0], T0)


def test_nothing_published_before_inputs():
    core, engine, out, clock = make()
    assert core.tick() is None
    report = core.publish_diagnostics()
    assert report.level == ERROR and report.message == 'no action: no image received yet'
    assert out.reports == [report] and out.actions == []
    clock.advance(10 * MS)
    core.on_image(image(clock.now))
    assert core.publish_diagnostics().message.startswith('no action: no pose received yet')


def test_stale_observation_suppresses_actions_then_recovers():
    core, engine, out, clock = make()
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
    core.run_pending()
    assert core.tick() is not None
    clock.now = T0 + 510 * MS  # observation 0.51 s old > 0.5 s
    assert core.tick() is None
    assert len(out.actions) == 1
    report = core.publish_diagnostics()
    assert report.level == ERROR
    assert report.message == 'no action: observation 0.51 s old > sync.max_observation_age 0.5 s'
    assert report.values['actions_suppressed'] == report.message
    assert ('warn', report.message) in out.logs
    # inputs return: actions resume by themselves
    feed_observation(core, clock, T0 + 600 * MS, (5.0, 0.0, 0.0))
    core.run_pending()
    assert core.tick().tolist() == [5.0, 0.0, 0.0]
    assert ('info', 'actions resumed') in out.logs
    assert core.publish_diagnostics().level == OK


def test_horizon_exhausted_suppresses_actions():
    core, engine, out, clock = make()  # H * dt = 0.4 s < max age 0.5 s
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
    core.run_pending()
    clock.now = T0 + 360 * MS  # step round(3.6) = 4 == H
    assert core.tick() is None
    assert core.publish_diagnostics().message.startswith('no action: the newest action chunk ends')


def test_image_dropped_for_pose_skew_is_counted_and_named():
    core, engine, out, clock = make()
    clock.now = T0
    core.on_pose(pose(T0))
    clock.now = T0 + 200 * MS
    core.on_image(image(T0 + 190 * MS))  # newest pose 190 ms before: waits, then dropped
    clock.now = T0 + 260 * MS
    assert core.run_pending() is False
    assert core.drops.counts() == {'pose_skew': 1}
    report = core.publish_diagnostics()
    assert report.level == ERROR
    assert report.message == ('no action: no observation has been through the model yet '
                              '(last drop: pose_skew)')
    assert report.values['drops.pose_skew'] == '1'
    assert any('pose_skew' in text and level == 'warn' for level, text in out.logs)


def test_latest_only_supersedes_when_inference_does_not_keep_up():
    core, engine, out, clock = make()
    for k in range(3):
        feed_observation(core, clock, T0 + k * 30 * MS, (float(k), 0.0, 0.0))
    assert core.run_pending() is True
    assert [o.stamp_ns for o in engine.inferred] == [T0 + 60 * MS]
    assert core.drops.counts() == {'superseded': 2}
    assert core.publish_diagnostics().level == OK  # superseded is normal, not a warning


def test_ensembling_through_the_core():
    core, engine, out, clock = make(control__ensemble_coeff=0.0)
    feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
    core.run_pending()
    feed_observation(core, clock, T0 + 100 * MS, (10.0, 0.0, 0.0))
    core.run_pending()
    clock.now = T0 + 100 * MS
    # chunk 1 at step 1: [1, 1, 1]; chunk 2 at step 0: [10, 0, 0]; uniform mean
    assert core.tick().tolist() == pytest.approx([5.5, 0.5, 0.5])
    assert out.actions[-1][2] == T0 + 100 * MS  # observation stamp = newest chunk


def test_limiter_clamps_published_actions_and_counts():
    core, engine, out, clock = make(safety__action_min=[-1.0, -1.0, -1.0],
                                    safety__action_max=[1.0, 1.0, 1.0])
    feed_observation(core, clock, T0, (0.5, 2.0, -3.0))
    core.run_pending()
    assert core.tick().tolist() == [0.5, 1.0, -1.0]
    assert out.actions[0][1] == [0.5, 1.0, -1.0]
    values = core.publish_diagnostics().values
    assert values['clamps.action_range'] == '1' and values['clamps.max_step'] == '0'


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_chunk_is_withheld_counted_and_an_error(bad):
    core, engine, out, clock = make()
    chunk = np.zeros((H, 3))
    chunk[2, 1] = bad
    engine.chunk_override = chunk
    feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
    assert core.run_pending() is True
    assert out.embeddings == [] and out.chunks == []  # neither output of that observation
    assert core.tick() is None and out.actions == []
    assert core.drops.counts() == {'non_finite': 1}
    errors = [text for level, text in out.logs if level == 'error']
    assert len(errors) == 1 and 'action chunk has 1 non-finite' in errors[0]
    report = core.publish_diagnostics()
    assert report.level == ERROR and report.values['drops.non_finite'] == '1'
    engine.chunk_override = None  # the next good observation is published again
    feed_observation(core, clock, T0 + 50 * MS, (1.0, 0.0, 0.0))
    core.run_pending()
    assert len(out.chunks) == 1 and core.tick().tolist() == [1.0, 0.0, 0.0]


def test_non_finite_embedding_withholds_the_observation():
    core, engine, out, clock = make()
    finite_chunk = engine.infer
    engine.infer = lambda obs: dataclasses.replace(
        finite_chunk(obs), embedding=np.array([0.0, np.nan], dtype=np.float32))
    feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
    core.run_pending()
    assert out.embeddings == [] and out.chunks == []
    assert core.drops.counts() == {'non_finite': 1}
    assert 'embedding has 1 non-finite' in out.logs[-1][1]


def test_non_finite_helper_checks_float32_range():
    assert non_finite('x', np.array([1.0, -3e38])) == ''
    assert 'has 1 non-finite' in non_finite('x', np.array([1.0, 1e39]))  # inf as float32
    assert 'has 2 non-finite' in non_finite('x', [[np.nan], [np.inf]])


def test_non_finite_refresh_is_dropped_and_the_cached_chunk_kept():
    core, engine, out, clock = make(fusion='late')
    feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
    core.run_pending()
    engine.refresh = lambda *a, **k: np.full((H, 3), np.nan, dtype=np.float32)
    clock.now = T0 + 20 * MS
    core.on_pose(pose(T0 + 15 * MS, (5.0, 0.0, 0.0)))
    action = core.tick()
    assert action is not None and np.isfinite(action).all()
    assert core.drops.counts().get('non_finite') == 1
    assert all(np.isfinite(a).all() for _, a, _ in out.actions)


def test_diagnostics_error_only_for_new_withheld_outputs():
    core, engine, out, clock = make()
    engine.chunk_override = np.full((H, 3), np.nan)
    feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
    core.run_pending()
    engine.chunk_override = None
    feed_observation(core, clock, T0 + 50 * MS, (0.0, 0.0, 0.0))
    core.run_pending()
    core.tick()
    first = core.publish_diagnostics()
    assert first.level == ERROR and first.message.startswith('1 outputs withheld')
    core.tick()
    assert core.publish_diagnostics().level == OK


def test_bad_image_and_bad_pose_are_counted_and_skipped():
    core, engine, out, clock = make()
    engine.fail_with = ImageError('image: encoding foo unsupported, expected rgb8')
    feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
    assert core.run_pending() is True
    engine.fail_with = PoseError('pose: not finite')
    feed_observation(core, clock, T0 + 50 * MS, (0.0, 0.0, 0.0))
    assert core.run_pending() is True
    assert out.chunks == [] and core.drops.counts() == {'bad_image': 1, 'bad_pose': 1}
    warnings = [text for level, text in out.logs if level == 'warn']
    assert any('encoding foo unsupported' in text for text in warnings)
    feed_observation(core, clock, T0 + 100 * MS, (2.0, 0.0, 0.0))
    core.run_pending()
    assert core.tick().tolist() == [2.0, 0.0, 0.0]


def test_unexpected_engine_error_propagates_in_replay_mode():
    core, engine, out, clock = make()
    engine.fail_with = RuntimeError('boom')
    feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
    with pytest.raises(RuntimeError, match='boom'):
        core.run_pending()
    feed_observation(core, clock, T0 + 50 * MS, (1.0, 0.0, 0.0))
    assert core.run_pending() is True  # not stuck "busy"
    assert core.tick() is not None


def test_wrong_chunk_shape_is_dropped_as_bad_output():
    core, engine, out, clock = make()
    engine.chunk_override = np.zeros((H, 2))
    feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
    core.run_pending()
    assert core.drops.counts() == {'bad_output': 1} and out.chunks == []
    assert any('expected (4, 3)' in text for level, text in out.logs if level == 'error')


def test_bad_message_counted_and_log_throttled():
    core, engine, out, clock = make()  # log_throttle 5 s
    for _ in range(3):
        core.on_bad_message('/camera/image_raw', 'bad_encoding', 'encoding yuv9: expected rgb8')
        clock.advance(1 * S)
    assert core.drops.counts() == {'bad_encoding': 3}
    lines = [text for _, text in out.logs if 'bad_encoding' in text]
    assert lines == ['dropped /camera/image_raw message (bad_encoding): encoding yuv9: '
                     'expected rgb8']
    clock.advance(5 * S)
    core.on_bad_message('/camera/image_raw', 'bad_encoding', 'again')
    assert out.logs[-1][1].endswith('again (2 similar suppressed)')


def test_diagnostics_values_and_warn_on_recent_drops():
    core, engine, out, clock = make()
    for k in range(11):  # 10 Hz images with poses
        feed_observation(core, clock, T0 + k * 100 * MS, (float(k), 0.0, 0.0))
        core.run_pending()
        core.tick()
    core.on_bad_message('/ee_pose', 'bad_frame', 'frame_id world')
    report = core.publish_diagnostics()
    assert report.level == WARN
    assert report.message == '1 inputs dropped since the last report: bad_frame x1'
    v = report.values
    assert v['model_id'] == 'fake-model' and v['fusion'] == 'early'
    assert v['backend'] == 'torch' and v['nice'] == str(os.getpriority(os.PRIO_PROCESS, 0))
    assert v['latency.model.p50_ms'] == '2.00' and v['latency.preprocess.p99_ms'] == '1.00'
    assert v['latency.infer_call.p50_ms'] == '0.00'  # fake clock does not move during infer
    assert v['latency.observation_to_chunk.p50_ms'] == '10.00'
    assert v['rate.image0_hz'] == '10.00'
    assert v['rate.pose_hz'] == '20.69'  # 22 poses: 21 intervals over 1.015 s (first to now)
    assert v['rate.chunk_hz'] == '10.00' and v['rate.action_hz'] == '10.00'
    assert v['age.image0_s'] == '0.010' and v['age.pose_s'] == '0.005'
    assert v['age.observation_s'] == '0.010'
    assert v['drops.bad_frame'] == '1' and v['resets'] == '0'
    assert v['actions_suppressed'] == '' and v['inference_running_s'] == ''
    assert core.publish_diagnostics().level == OK  # no new drops since the last report


def test_clock_jump_backwards_resets_and_recovers():
    core, engine, out, clock = make()
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
    core.run_pending()
    assert core.tick() is not None
    clock.now = T0 - 30 * S  # e.g. simulation restarted
    assert core.tick() is None
    assert len(core.scheduler) == 0 and core.builder.newest_pose() is None
    assert any(level == 'warn' and 'clock jumped back' in text for level, text in out.logs)
    assert core.publish_diagnostics().values['resets'] == '1'
    feed_observation(core, clock, T0 - 29 * S, (2.0, 0.0, 0.0))
    core.run_pending()
    assert core.tick().tolist() == [2.0, 0.0, 0.0]


def test_explicit_reset_clears_chunks_and_logs_reason():
    core, engine, out, clock = make()
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
    core.run_pending()
    core.reset('bag looped')
    assert core.tick() is None
    assert ('warn', 'reset: bag looped; pose history and action chunks cleared') in out.logs


def test_late_fusion_refresh_uses_newest_pose_once():
    core, engine, out, clock = make(fusion='late')
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))  # newest pose at T0 + 5 ms
    core.run_pending()
    clock.now = T0 + 20 * MS
    # refreshed chunk from pose (1, 0, 0): row 0 = position + 100, applied from step 0
    assert core.tick().tolist() == [101.0, 100.0, 100.0]
    assert [p.stamp_ns for p in engine.refreshed] == [T0 + 5 * MS]
    core.tick()
    assert len(engine.refreshed) == 1  # no new pose: no new refresh
    clock.now = T0 + 140 * MS  # step 1 of the chunk; the refresh starts at step 1 too
    core.on_pose(pose(T0 + 130 * MS, (3.0, 0.0, 0.0)))
    assert core.tick().tolist() == [103.0, 100.0, 100.0]
    assert len(engine.refreshed) == 2


def test_late_fusion_refreshes_each_new_chunk_with_the_newest_pose():
    core, engine, out, clock = make(fusion='late')
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))  # poses at T0 - 10 ms, T0 + 5 ms
    core.run_pending()
    core.tick()
    core.on_image(image(T0 + 4 * MS))  # a newer image, the newest pose is still T0 + 5 ms
    core.run_pending()
    assert core.tick().tolist() == [101.0, 100.0, 100.0]
    assert [p.stamp_ns for p in engine.refreshed] == [T0 + 5 * MS, T0 + 5 * MS]


def test_stale_reason_names_a_drop_that_came_after_the_observation():
    core, engine, out, clock = make()
    clock.now = T0 - 100 * MS
    core.on_bad_message('/camera/image_raw', 'bad_encoding', 'old news')
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
    core.run_pending()
    clock.now = T0 + 600 * MS
    assert core.tick() is None
    assert core.publish_diagnostics().message.endswith('0.5 s')  # old drop not blamed
    core.on_pose(PoseSample(T0 + 590 * MS, 'base', np.array([np.nan, 0, 0]), IDENTITY))
    assert core.publish_diagnostics().message == (
        'no action: observation 0.60 s old > sync.max_observation_age 0.5 s '
        '(last drop: pose_nonfinite)')


def test_late_fusion_refresh_can_be_disabled_and_early_fusion_never_refreshes():
    core, engine, out, clock = make(fusion='late', control__late_fusion_refresh=False)
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
    core.run_pending()
    assert core.tick().tolist() == [1.0, 0.0, 0.0] and engine.refreshed == []
    core, engine, out, clock = make(fusion='early')
    feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
    core.run_pending()
    assert core.tick().tolist() == [1.0, 0.0, 0.0] and engine.refreshed == []


def test_two_cameras_grouped_and_embedding_uses_camera0_frame():
    core, engine, out, clock = make(topics__cameras=['/a', '/b'],
                                    topics__camera_transports=['raw', 'raw'])
    clock.now = T0 + 20 * MS
    core.on_pose(pose(T0 - 10 * MS))
    core.on_pose(pose(T0 + 20 * MS))
    core.on_image(image(T0 + 5 * MS, camera=1))
    assert core.run_pending() is False
    core.on_image(image(T0, camera=0))
    assert core.run_pending() is True
    obs = engine.inferred[0]
    assert obs.stamp_ns == T0 and [f.frame_id for f in obs.frames] == ['cam0', 'cam1']
    assert out.embeddings == [(T0, 'cam0')]
    values = core.publish_diagnostics().values
    assert 'rate.image1_hz' in values and values['age.image1_s'] == '0.015'


def test_camera_count_must_match_the_model():
    engine = FakeEngine()
    engine.config = type('PolicyConfigStub', (), {'cameras': ['left', 'right']})()
    with pytest.raises(ConfigError, match='topics.cameras has 1 topics but the model expects 2'):
        make(engine=engine)


def test_replay_is_deterministic():
    def run():
        core, engine, out, clock = make(control__ensemble_coeff=0.01)
        for k in range(8):
            feed_observation(core, clock, T0 + k * 70 * MS, (k * 0.1, 1.0, -1.0))
            core.run_pending()
            for _ in range(3):
                clock.advance(20 * MS)
                core.tick()
        return out.actions, [c.chunk.tolist() for c in out.chunks], core.drops.counts()

    first = run()
    assert len(first[0]) == 24
    assert run() == first


# ------------------------------------------------------------------ threaded mode


def test_callbacks_never_wait_for_a_busy_model():
    engine = BlockingEngine()
    core, engine, out, clock = make(threaded=True, engine=engine)
    core.start()
    try:
        feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
        assert engine.entered.acquire(timeout=20)  # worker is now inside infer(), blocked
        for k in range(1, 6):  # callbacks keep returning while the model is stuck
            feed_observation(core, clock, T0 + k * 20 * MS, (float(k), 0.0, 0.0))
        assert len(engine.inferred) == 0  # first call still inside infer
        assert core.drops.counts() == {'superseded': 4}  # only the newest waits
        engine.release.release()
        assert engine.entered.acquire(timeout=20)  # second inference started: the newest
        engine.release.release()
        wait_until(lambda: len(out.chunks) == 2, 'two chunks published')
        assert [o.stamp_ns for o in engine.inferred] == [T0, T0 + 100 * MS]
    finally:
        engine.release.release()
        core.stop()


def test_stall_detected_while_inference_runs_then_recovers():
    engine = BlockingEngine()
    core, engine, out, clock = make(threaded=True, engine=engine,
                                    safety__max_inference_time=0.1)
    core.start()
    try:
        feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
        engine.release.release()
        wait_until(lambda: len(out.chunks) == 1, 'first chunk')
        assert core.tick() is not None
        feed_observation(core, clock, T0 + 50 * MS, (2.0, 0.0, 0.0))
        assert engine.entered.acquire(timeout=20)
        assert engine.entered.acquire(timeout=20)  # second inference is running (blocked)
        clock.now = T0 + 250 * MS  # running 0.19 s > 0.1 s, observation only 0.25 s old
        assert core.tick() is None
        report = core.publish_diagnostics()
        assert report.level == ERROR
        assert report.message == ('no action: inference running 0.19 s > '
                                  'safety.max_inference_time 0.1 s')
        assert report.values['inference_running_s'] == '0.190'
        engine.release.release()
        wait_until(lambda: len(out.chunks) == 2, 'second chunk')
        action = core.tick()
        assert action.tolist() == [4.0, 2.0, 2.0]  # chunk 2 (obs T0 + 50 ms) at step 2
        assert core.publish_diagnostics().level == OK
    finally:
        engine.release.release()
        core.stop()


def test_result_from_before_a_reset_is_discarded():
    engine = BlockingEngine()
    core, engine, out, clock = make(threaded=True, engine=engine)
    core.start()
    try:
        feed_observation(core, clock, T0, (1.0, 0.0, 0.0))
        assert engine.entered.acquire(timeout=20)
        core.reset('test')
        engine.release.release()
        wait_until(lambda: core.drops.counts().get('reset_discard') == 1, 'discard counted')
        assert out.chunks == [] and len(core.scheduler) == 0
    finally:
        core.stop()


def test_worker_survives_engine_exceptions():
    core, engine, out, clock = make(threaded=True)
    engine.fail_with = RuntimeError('cuda out of memory')
    core.start()
    try:
        feed_observation(core, clock, T0, (0.0, 0.0, 0.0))
        wait_until(lambda: core.drops.counts().get('inference_error') == 1, 'error counted')
        assert any(level == 'error' and 'cuda out of memory' in text for level, text in out.logs)
        feed_observation(core, clock, T0 + 50 * MS, (1.0, 0.0, 0.0))
        wait_until(lambda: len(out.chunks) == 1, 'worker still alive')
    finally:
        core.stop()


def test_pending_observation_resolved_by_the_worker_without_a_tick():
    core, engine, out, clock = make(threaded=True)
    core.start()
    try:
        clock.now = T0
        core.on_pose(pose(T0 - 10 * MS, (7.0, 0.0, 0.0)))
        core.on_image(image(T0))  # newer than every pose: pending
        clock.now = T0 + 60 * MS  # past max_pose_skew: the worker's poll holds the pose
        wait_until(lambda: len(out.chunks) == 1, 'held observation inferred')
        assert engine.inferred[0].pose_skew_ns == 10 * MS
    finally:
        core.stop()


def test_run_pending_refused_while_worker_runs_and_stop_is_idempotent():
    core, engine, out, clock = make(threaded=True)
    core.start()
    try:
        with pytest.raises(RuntimeError, match='threaded=False'):
            core.run_pending()
    finally:
        core.stop()
    core.stop()
    assert core.run_pending() is False


def arm_pose(t_ns, arm, x):
    return PoseSample(t_ns, 'base', np.array([x, 0.0, 0.0]), IDENTITY.copy(), arm)


def test_two_arms_and_joint_states_make_one_observation_at_the_image_stamp():
    engine = FakeEngine(arms=['left', 'right'], proprio_names=['j0', 'j1'])
    core, engine, out, clock = make(engine=engine, topics__poses=['/l', '/r'])
    assert core.proprio_names == ['j0', 'j1']
    clock.now = T0 + 20 * MS
    for arm, x0, x1 in ((0, 0.0, 1.0), (1, 2.0, 4.0)):
        core.on_pose(arm_pose(T0 - 10 * MS, arm, x0))
        core.on_pose(arm_pose(T0 + 10 * MS, arm, x1))
    core.on_image(image(T0))
    assert not core.run_pending()  # the joint states have not arrived: no observation
    assert core.tick() is None and 'no joint state received yet' in core._suppressed
    core.on_joints(JointSample(T0 - 20 * MS, np.array([0.0, 5.0])))
    core.on_joints(JointSample(T0 + 20 * MS, np.array([2.0, 5.0])))
    assert core.run_pending()
    (obs,) = engine.inferred
    assert [p.position[0] for p in obs.poses] == pytest.approx([0.5, 3.0])  # interpolated
    assert obs.proprio == pytest.approx([1.0, 5.0])
    assert out.chunks[0].chunk[0] == pytest.approx([0.5, 3.0, 1.0 + 5.0])  # j0 + j1
    values = core.publish_diagnostics().values
    assert {k: values[k] for k in ('age.pose0_s', 'age.pose1_s', 'age.joint_states_s')} == {
        'age.pose0_s': '0.010', 'age.pose1_s': '0.010', 'age.joint_states_s': '0.000'}
    assert 'rate.joint_states_hz' in values and 'rate.pose1_hz' in values


def test_arm_count_must_match_the_pose_topics_and_tf_reads_one_arm():
    with pytest.raises(ConfigError, match='topics.poses has 1 topics but the model expects 2'):
        make(engine=FakeEngine(arms=['left', 'right']))
    with pytest.raises(ConfigError, match='pose_input.source tf reads one arm'):
        make(engine=FakeEngine(arms=['left', 'right']), pose_input__source='tf')
