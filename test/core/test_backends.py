"""engine.backend: ONNX export + cache, OpenVINO / ONNX Runtime parity with torch, `auto`."""

import copy
import logging

import numpy as np
import pytest
import torch

from vit_perception.config import NodeConfig
from vit_perception.core import engine as engine_module
from vit_perception.core import runtimes
from vit_perception.core.engine import Engine
from vit_perception.core.types import ImageFrame, Observation, PoseSample
from vit_perception.errors import ConfigError
from vit_perception.model import onnx_graphs
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy

STATS = {'pose_mean': [0.3] * 10, 'pose_std': [0.5] * 10, 'action_mean': [0.1] * 7,
         'action_std': [0.2] * 7}
FP32_ATOL = 1e-5  # fp32 runtimes vs torch fp32 (measured: ~1e-7)
BF16_ATOL = 0.05  # an engine with dtype bf16 vs the fp32 reference, in robot units
RUNTIMES = [pytest.param(name, marks=pytest.mark.skipif(
    name not in runtimes.installed_runtimes(), reason=f'{name} is not installed'))
    for name in runtimes.RUNTIMES]


def make_policy(mode='early'):
    torch.manual_seed(0)
    policy = build_policy(tiny_config(fusion__mode=mode, **{'pose.proprio_names': ['grip']}))
    policy.set_normalization(STATS)
    return policy.eval()


def observation(position=(0.4, 0.0, 0.3), stamp_ns=123, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frame = ImageFrame(stamp_ns=stamp_ns, frame_id='cam', data=pixels.tobytes(), height=48,
                       width=64, encoding='rgb8', step=64 * 3)
    pose = PoseSample(stamp_ns, 'base', np.array(position, dtype=float),
                      np.array([0.1, 0.0, 0.2, 0.97]))
    return Observation(stamp_ns=stamp_ns, frames=(frame,), poses=(pose,), proprio=np.array([0.02]))


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    """One cache for the module: each (policy, dtype) is exported once."""
    return tmp_path_factory.mktemp('onnx_cache')


def engine(mode='early', backend='torch', dtype='fp32', cache=''):
    return Engine(make_policy(mode), device='cpu', dtype=dtype, warmup_iters=1,
                  backend=backend, cache_dir=cache)


@pytest.mark.parametrize('mode', ['early', 'late'])
@pytest.mark.parametrize('backend', RUNTIMES)
def test_fp32_runtime_matches_torch(backend, mode, cache_dir):
    reference, runtime = engine(mode), engine(mode, backend, cache=cache_dir)
    assert runtime.backend == backend and runtime.runtime.precision == 'fp32'
    for seed in (0, 1):
        obs = observation(seed=seed)
        want, got = reference.infer(obs), runtime.infer(obs)
        np.testing.assert_allclose(got.chunk, want.chunk, atol=FP32_ATOL)
        np.testing.assert_allclose(got.embedding, want.embedding, atol=FP32_ATOL)
        assert got.chunk.shape == (4, 7) and got.embedding.shape == (16,)
        assert got.chunk.dtype == np.float32 and set(got.timings_ms) == set(want.timings_ms)
    assert np.abs(want.chunk).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize('backend', RUNTIMES)
def test_late_fusion_refresh_from_cached_tokens_matches_torch(backend, cache_dir):
    reference, runtime = engine('late'), engine('late', backend, cache=cache_dir)
    assert runtime.refresh(observation().poses) is None  # warm-up leaves no cache
    first = runtime.infer(observation())
    reference.infer(observation())
    moved = observation(position=(0.5, 0.1, 0.2))
    refreshed = runtime.refresh(moved.poses, moved.proprio, observation_stamp_ns=123)
    np.testing.assert_allclose(refreshed, reference.refresh(moved.poses, moved.proprio),
                               atol=FP32_ATOL)
    np.testing.assert_allclose(refreshed, reference.infer(moved).chunk, atol=FP32_ATOL)
    assert np.abs(refreshed - first.chunk).max() > 1e-4  # the pose changed the chunk
    assert runtime.refresh(moved.poses, moved.proprio, observation_stamp_ns=999) is None


@pytest.mark.parametrize('mode', ['early', 'late'])
@pytest.mark.parametrize('backend', RUNTIMES)
def test_two_arm_graphs_with_joints_match_torch(backend, mode, cache_dir):
    """Graph inputs (1, 9 * arms + P): every arm's pose, then the joint positions."""
    torch.manual_seed(0)
    policy = build_policy(tiny_config(fusion__mode=mode, pose__arms=['left', 'right'],
                                      pose__proprio_names=['j0', 'j1'])).eval()
    policy.set_normalization({**STATS, 'pose_mean': [0.3] * 20, 'pose_std': [0.5] * 20})
    reference, runtime = (Engine(copy.deepcopy(policy), device='cpu', dtype='fp32',
                                 warmup_iters=1, backend=name, cache_dir=cache_dir)
                          for name in ('torch', backend))
    base = observation()
    poses = (base.pose, PoseSample(123, 'base', np.array([-0.3, 0.2, 0.1]),
                                   np.array([0.0, 0.0, 0.6, 0.8]), 1))
    obs = Observation(stamp_ns=123, frames=base.frames, poses=poses, proprio=np.array([0.5, -1]))
    want, got = reference.infer(obs), runtime.infer(obs)
    np.testing.assert_allclose(got.chunk, want.chunk, atol=FP32_ATOL)
    np.testing.assert_allclose(got.embedding, want.embedding, atol=FP32_ATOL)
    if mode == 'late':
        moved = (poses[0], PoseSample(130, 'base', np.array([0.1, 0.2, 0.1]), poses[1].orientation,
                                      1))
        np.testing.assert_allclose(runtime.refresh(moved, obs.proprio),
                                   reference.refresh(moved, obs.proprio), atol=FP32_ATOL)


@pytest.mark.parametrize('backend', RUNTIMES)
def test_bf16_engine_on_a_runtime_stays_close_to_fp32(backend, cache_dir):
    """OpenVINO gets the bf16 hint where the CPU has bf16; ONNX Runtime stays fp32 on the CPU."""
    reference, runtime = engine('late'), engine('late', backend, dtype='bf16', cache=cache_dir)
    assert runtime.runtime.precision in ('bf16', 'fp32')
    obs = observation()
    np.testing.assert_allclose(runtime.infer(obs).chunk, reference.infer(obs).chunk,
                               atol=BF16_ATOL)


def test_graphs_are_cached_by_content(cache_dir, monkeypatch):
    policy = make_policy()
    first = onnx_graphs.cached_graphs(policy, 'fp32', cache_dir)

    def no_export(*args):
        raise AssertionError('exported again although cached')

    monkeypatch.setattr(onnx_graphs, 'export_graphs', no_export)
    assert onnx_graphs.cached_graphs(make_policy(), 'fp32', cache_dir) == first
    changed = make_policy()
    with torch.no_grad():
        changed.embedding_head.bias[0] += 1.0
    assert onnx_graphs.content_hash(changed, 'fp32') != onnx_graphs.content_hash(policy, 'fp32')
    assert onnx_graphs.content_hash(policy, 'bf16') != onnx_graphs.content_hash(policy, 'fp32')
    changed.set_normalization({**STATS, 'action_std': [0.3] * 7})
    assert onnx_graphs.content_hash(changed, 'fp32') != onnx_graphs.content_hash(policy, 'fp32')
    assert list(first) == ['policy'] and first['policy'].stat().st_size > 1000


def test_cache_dir_defaults_to_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert onnx_graphs.default_cache_dir() == tmp_path / 'vit_perception' / 'onnx'


def test_unwritable_cache_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(ConfigError, match='engine.cache_dir'):
        onnx_graphs.cached_graphs(make_policy(), 'fp32', blocker / 'cache')


def test_missing_runtime_is_one_line_with_the_extra(monkeypatch):
    monkeypatch.setattr(runtimes, 'importable', lambda module: False)
    with pytest.raises(ConfigError, match=r'vit_perception\[runtimes\]'):
        engine(backend='openvino')
    assert runtimes.installed_runtimes() == []


def test_backend_is_validated():
    with pytest.raises(ConfigError, match='engine.backend'):
        NodeConfig.from_dict({'engine': {'backend': 'tensorrt'}})
    with pytest.raises(ConfigError, match='engine.backend'):
        engine(backend='tensorrt')
    assert NodeConfig.from_dict({'engine': {'backend': 'auto'}}).engine.backend == 'auto'


# -- auto: the selection logic, with fake timings ----------------------------------------------

def test_choose_backend_keeps_the_lowest_p99():
    assert runtimes.choose_backend({'torch': 30.0, 'openvino': 21.0, 'onnxruntime': 25.0}) \
        == 'openvino'
    assert runtimes.choose_backend({'torch': 20.0, 'openvino': 20.0}) == 'torch'  # tie: first
    with pytest.raises(ValueError):
        runtimes.choose_backend({})


def test_measurements_alternate_the_order_every_round():
    order = []
    fake_ms = {'torch': [10, 10, 90], 'openvino': [12, 12, 12], 'onnxruntime': [11, 30, 11]}

    def run(name):
        order.append(name)
        return fake_ms[name][sum(1 for n in order if n == name) - 1]

    samples = runtimes.measure_backends(run, list(fake_ms), 3)
    assert order == ['torch', 'openvino', 'onnxruntime', 'openvino', 'onnxruntime', 'torch',
                     'onnxruntime', 'torch', 'openvino']
    assert samples == {'torch': [10, 10, 90], 'openvino': [12, 12, 12],
                       'onnxruntime': [11, 30, 11]}
    p99 = {name: runtimes.p99(values) for name, values in samples.items()}
    assert runtimes.choose_backend(p99) == 'openvino'  # best tail, though torch's median wins


@pytest.mark.skipif(not runtimes.installed_runtimes(), reason='no optional runtime installed')
def test_auto_keeps_the_fastest_p99_and_logs_it(monkeypatch, cache_dir, caplog):
    names = ['torch', *runtimes.installed_runtimes()]
    winner = names[-1]
    fake = {name: [5.0] * 9 + [50.0 if name != winner else 6.0] for name in names}

    def fake_measure(run, measured, iters):
        assert list(measured) == names and iters >= engine_module.AUTO_MIN_ITERS
        return {name: fake[name] for name in measured}

    monkeypatch.setattr(runtimes, 'measure_backends', fake_measure)
    with caplog.at_level(logging.INFO, logger='vit_perception.core.engine'):
        chosen = engine('late', 'auto', cache=cache_dir)
    assert chosen.backend == winner and chosen.available_backends == ['torch', winner]
    said = [r.getMessage() for r in caplog.records if 'engine.backend auto' in r.getMessage()]
    assert len(said) == 1 and f'chose {winner}' in said[0]
    obs = observation()
    np.testing.assert_allclose(chosen.infer(obs).chunk, engine('late').infer(obs).chunk,
                               atol=FP32_ATOL)


def test_auto_without_runtimes_uses_torch_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(runtimes, 'installed_runtimes', lambda: [])
    monkeypatch.setattr(engine_module, '_said_torch_only', False)
    with caplog.at_level(logging.INFO, logger='vit_perception.core.engine'):
        engines = [engine(backend='auto') for _ in range(2)]
    assert [e.backend for e in engines] == ['torch', 'torch']
    said = [r.getMessage() for r in caplog.records if 'engine.backend auto' in r.getMessage()]
    assert len(said) == 1 and 'using torch' in said[0] and 'runtimes' in said[0]


@pytest.mark.parametrize('preset, expected', [(None, 'PASSIVE'), ('ACTIVE', 'ACTIVE')])
def test_openmp_threads_sleep_unless_the_user_chose(preset, expected):
    """Set before torch loads (libgomp reads it once); a user's own setting wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    if preset:
        env['OMP_WAIT_POLICY'] = preset
    out = subprocess.run([sys.executable, '-c', 'import os, vit_perception, torch; '
                          'print(os.environ["OMP_WAIT_POLICY"])'], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == expected


@pytest.mark.skipif('onnxruntime' not in runtimes.installed_runtimes(),
                    reason='onnxruntime is not installed')
def test_onnxruntime_uses_tensorrt_and_cuda_providers_only_for_a_cuda_device(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, 'get_available_providers', lambda: [
        'TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'])
    assert runtimes.ort_providers('cuda:0') == [
        'TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    assert runtimes.ort_providers('cpu') == ['CPUExecutionProvider']
    monkeypatch.setattr(ort, 'get_available_providers', lambda: ['CPUExecutionProvider'])
    assert runtimes.ort_providers('cuda') == ['CPUExecutionProvider']


SIGNAL_AFTER_OPENVINO = """
import gc, os, signal, sys
from vit_perception.core import runtimes
first = runtimes.OpenVinoSession(sys.argv[1])
second = runtimes.OpenVinoSession(sys.argv[1])
del first  # destroyed in creation order, as an engine's graphs are
gc.collect()
del second
gc.collect()
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))
os.kill(os.getpid(), signal.SIGTERM)
print('handled', len(got))
"""


@pytest.mark.skipif('openvino' not in runtimes.installed_runtimes(),
                    reason='openvino is not installed')
def test_a_signal_after_openvino_compiled_reaches_the_python_handler(tmp_path):
    """Regression: OpenVINO's CPU plugin replaced the loading thread's signal stack with memory
    freed later; the next SIGTERM (ros2 launch's shutdown) was a segmentation fault."""
    import subprocess
    import sys

    path = tmp_path / 'policy.onnx'
    onnx_graphs.export_graphs(make_policy(), 'fp32', {'policy': path})
    result = subprocess.run([sys.executable, '-X', 'faulthandler', '-c', SIGNAL_AFTER_OPENVINO,
                             str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ['handled', '1']


# -- engine.threads: one parameter for torch's pool and the runtimes' ------------------------

def test_threads_is_validated():
    assert NodeConfig.from_dict({'engine': {'threads': 1}}).engine.threads == 1
    assert NodeConfig().engine.threads == 0
    for bad in (-1, 1025):
        with pytest.raises(ConfigError, match='engine.threads'):
            NodeConfig.from_dict({'engine': {'threads': bad}})


@pytest.mark.parametrize('backend', [
    'torch', pytest.param('onnxruntime', marks=pytest.mark.skipif(
        'onnxruntime' not in runtimes.installed_runtimes(), reason='onnxruntime not installed')),
    pytest.param('openvino', marks=pytest.mark.skipif(
        'openvino' not in runtimes.installed_runtimes(), reason='openvino not installed'))])
def test_threads_reach_torch_and_the_runtime(backend, cache_dir, monkeypatch):
    before = torch.get_num_threads()
    try:
        config = NodeConfig.from_dict({'engine': {'threads': 1, 'backend': backend,
                                                  'warmup_iters': 0,
                                                  'cache_dir': str(cache_dir)}}).engine
        monkeypatch.setattr(Engine, 'from_checkpoint',
                            classmethod(lambda cls, path, **kw: cls(make_policy(), **kw)))
        built = Engine.from_config(config)
        assert torch.get_num_threads() == 1 and built.backend == backend
        if backend == 'onnxruntime':
            options = built.runtime._policy.session.get_session_options()
            assert options.intra_op_num_threads == 1
        if backend == 'openvino':
            assert built.runtime._policy.compiled.get_property('INFERENCE_NUM_THREADS') == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif('onnxruntime' not in runtimes.installed_runtimes(),
                    reason='onnxruntime not installed')
@pytest.mark.parametrize('spin_us, allow, duration', [
    ('default', '1', '100'), (0, '0', None), (200, '1', '200'), (None, '1', None)])
def test_onnxruntime_workers_spin_100_us_by_default(spin_us, allow, duration, cache_dir):
    path = onnx_graphs.cached_graphs(make_policy(), 'fp32', cache_dir)['policy']
    kwargs = {} if spin_us == 'default' else {'spin_us': spin_us}
    options = runtimes.OnnxRuntimeSession(path, **kwargs).session.get_session_options()

    def entry(key):  # None when not set (ORT raises)
        try:
            return options.get_session_config_entry(key)
        except RuntimeError:
            return None

    assert entry('session.intra_op.allow_spinning') == allow
    assert entry('session.intra_op.spin_duration_us') == duration
