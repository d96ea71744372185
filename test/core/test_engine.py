import numpy as np
import pytest
import torch

from vit_perception.core import engine as engine_module
from vit_perception.core.engine import STAGES, Engine
from vit_perception.core.images import image_to_array
from vit_perception.core.types import ImageFrame, Observation, PoseSample
from vit_perception.errors import CheckpointError, ImageError, PoseError
from vit_perception.model.checkpoint import save_checkpoint
from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy

STATS = {'pose_mean': [0.3] * 9, 'pose_std': [0.5] * 9, 'action_mean': [0.1] * 7,
         'action_std': [0.2] * 7}


def make_policy(**overrides):
    torch.manual_seed(0)
    policy = build_policy(tiny_config(**overrides)).eval()
    policy.set_normalization(STATS)
    return policy


def frame(camera=0, seed=0, height=48, width=64, stamp_ns=123):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return ImageFrame(stamp_ns=stamp_ns, frame_id=f'cam{camera}', data=pixels.tobytes(),
                      height=height, width=width, encoding='rgb8', step=width * 3,
                      camera=camera)


def observation(frames, position=(0.4, 0.0, 0.3), quat=(0.0, 0.0, 0.0, 1.0), proprio=()):
    pose = PoseSample(frames[0].stamp_ns, 'base', np.array(position, dtype=float),
                      np.array(quat, dtype=float))
    return Observation(stamp_ns=frames[0].stamp_ns, frames=tuple(frames), poses=(pose,),
                       proprio=np.array(proprio, dtype=float))


def reference(policy, engine, obs):
    """The same computation written out directly with the policy (fp32)."""
    pixels = engine.preprocessor([image_to_array(f) for f in obs.frames]).float()[None]
    with torch.no_grad():
        embedding, chunk = policy.float()(
            pixels, torch.tensor(obs.pose.position, dtype=torch.float32)[None],
            torch.tensor(obs.pose.orientation, dtype=torch.float32)[None],
            torch.tensor(obs.proprio, dtype=torch.float32)[None])
        chunk = policy.actions_from_normalized(chunk)
    return embedding[0].numpy(), chunk[0].numpy()


@pytest.mark.parametrize('mode', ['early', 'late'])
def test_fp32_engine_equals_the_policy_computed_directly(mode):
    policy = make_policy(fusion__mode=mode)
    engine = Engine(make_policy(fusion__mode=mode), device='cpu', dtype='fp32', warmup_iters=1)
    obs = observation([frame()])
    result = engine.infer(obs)
    embedding, chunk = reference(policy, engine, obs)
    assert result.observation_stamp_ns == 123
    assert result.embedding.shape == (16,) and result.chunk.shape == (4, 7)
    assert result.embedding.dtype == np.float32 and result.chunk.dtype == np.float32
    np.testing.assert_allclose(result.embedding, embedding, atol=1e-5)
    np.testing.assert_allclose(result.chunk, chunk, atol=1e-5)
    assert set(result.timings_ms) == set(STAGES)
    assert all(v >= 0 for v in result.timings_ms.values())


@pytest.mark.parametrize('mode', ['early', 'late'])
def test_compiled_engine_matches_eager(mode):
    """torch.compile with Inductor freezing (the bench's default engine path) changes nothing."""
    eager = Engine(make_policy(fusion__mode=mode), device='cpu', dtype='fp32', warmup_iters=0)
    compiled = Engine(make_policy(fusion__mode=mode), device='cpu', dtype='fp32', compile=True,
                      warmup_iters=1)
    for seed in (1, 2):  # a second observation after the compiling warm-up
        obs = observation([frame(seed=seed)])
        a, b = eager.infer(obs), compiled.infer(obs)
        np.testing.assert_allclose(b.embedding, a.embedding, atol=1e-4)
        np.testing.assert_allclose(b.chunk, a.chunk, atol=1e-4)
    assert np.abs(a.chunk).max() > 1e-3  # not trivially zero


def test_cpu_fp32_inference_is_deterministic():
    engine = Engine(make_policy(), device='cpu', dtype='fp32', warmup_iters=0)
    obs = observation([frame()])
    a, b = engine.infer(obs), engine.infer(obs)
    assert a.chunk.tobytes() == b.chunk.tobytes()
    assert a.embedding.tobytes() == b.embedding.tobytes()


def test_bf16_engine_stays_close_to_fp32():
    fp32 = Engine(make_policy(), device='cpu', dtype='fp32', warmup_iters=0)
    bf16 = Engine(make_policy(), device='cpu', dtype='bf16', warmup_iters=0)
    obs = observation([frame()])
    a, b = fp32.infer(obs), bf16.infer(obs)
    assert bf16.policy.camera_embed.dtype == torch.bfloat16
    assert bf16.policy.action_normalizer.std.dtype == torch.float32  # stats stay exact
    np.testing.assert_allclose(a.chunk, b.chunk, atol=0.05)
    assert np.isfinite(b.embedding).all()


def test_late_fusion_refresh_uses_cached_image_tokens():
    engine = Engine(make_policy(fusion__mode='late'), device='cpu', dtype='fp32',
                    warmup_iters=1)
    assert engine.refresh(observation([frame()]).poses) is None  # warm-up clears the cache
    first = engine.infer(observation([frame()]))
    moved = observation([frame()], position=(0.5, 0.1, 0.2))
    refreshed = engine.refresh(moved.poses)
    full = engine.infer(moved)
    np.testing.assert_allclose(refreshed, full.chunk, atol=1e-5)  # same image, new pose
    assert np.abs(refreshed - first.chunk).max() > 1e-5


def test_early_fusion_has_no_refresh():
    engine = Engine(make_policy(), device='cpu', dtype='fp32', warmup_iters=0)
    engine.infer(observation([frame()]))
    assert engine.refresh(observation([frame()]).poses) is None


def test_multi_camera_frames_of_different_sizes():
    engine = Engine(make_policy(cameras=['scene', 'wrist']), device='cpu', dtype='fp32',
                    warmup_iters=1)
    result = engine.infer(observation([frame(0), frame(1, seed=1, height=32, width=40)]))
    assert result.chunk.shape == (4, 7)
    with pytest.raises(ImageError, match='expects 2'):
        engine.infer(observation([frame(0)]))


@pytest.mark.parametrize('position, quat, proprio, match', [
    ((np.nan, 0, 0), (0, 0, 0, 1), (), 'finite'),
    ((0, 0, 0), (0, 0, 0, 0), (), 'zero norm'),
    ((0, 0, 0), (0, 0, np.inf, 1), (), 'finite'),
    ((0, 0), (0, 0, 0, 1), (), r'position \(3,\)'),
    ((0, 0, 0), (0, 0, 0, 1), (1.0,), 'proprio'),
])
def test_bad_pose_raises_pose_error(position, quat, proprio, match):
    engine = Engine(make_policy(), device='cpu', dtype='fp32', warmup_iters=0)
    with pytest.raises(PoseError, match=match):
        engine.infer(observation([frame()], position, quat, proprio))


def test_bad_image_raises_image_error():
    engine = Engine(make_policy(), device='cpu', dtype='fp32', warmup_iters=0)
    bad = ImageFrame(stamp_ns=1, frame_id='c', data=b'\x00' * 10, height=48, width=64,
                     encoding='rgb8', step=192)
    with pytest.raises(ImageError):
        engine.infer(observation([bad]))


def test_from_checkpoint_and_missing_default(tmp_path, monkeypatch):
    policy = make_policy()
    save_checkpoint(policy, tmp_path / 'ckpt')
    engine = Engine.from_checkpoint(tmp_path / 'ckpt', device='cpu', dtype='fp32',
                                    warmup_iters=0)
    assert engine.action_names == ['dx', 'dy', 'dz', 'drx', 'dry', 'drz', 'gripper']
    assert (engine.horizon, engine.dt, engine.fusion) == (4, 0.1, 'early')
    monkeypatch.setattr(engine_module, 'DEFAULT_CHECKPOINT', tmp_path / 'absent')
    with pytest.raises(CheckpointError, match='embedded default checkpoint'):
        Engine.from_checkpoint('')


def test_warmup_runs_before_the_first_message(monkeypatch):
    calls = []
    original = Engine.infer

    def counting(self, obs):
        calls.append(obs.stamp_ns)
        return original(self, obs)

    monkeypatch.setattr(Engine, 'infer', counting)
    Engine(make_policy(), device='cpu', dtype='fp32', warmup_iters=2)
    assert calls == [0, 0]


def test_auto_dtype_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(engine_module, 'cpu_has_fast_bf16', lambda: False)
    assert engine_module.resolve_dtype('auto', torch.device('cpu')) == torch.float32
    monkeypatch.setattr(engine_module, 'cpu_has_fast_bf16', lambda: True)
    assert engine_module.resolve_dtype('auto', torch.device('cpu')) == torch.bfloat16
    assert engine_module.resolve_dtype('auto', torch.device('cuda')) == torch.bfloat16
    assert engine_module.resolve_device('cpu') == torch.device('cpu')


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_engine_matches_cpu():
    obs = observation([frame()])
    cpu = Engine(make_policy(), device='cpu', dtype='fp32', warmup_iters=0).infer(obs)
    gpu = Engine(make_policy(), device='cuda', dtype='fp32', warmup_iters=1).infer(obs)
    np.testing.assert_allclose(cpu.chunk, gpu.chunk, atol=1e-3)


def test_two_arm_engine_with_joints_equals_the_policy_computed_directly():
    torch.manual_seed(0)
    policy = build_policy(tiny_config(pose__arms=['left', 'right'],
                                      pose__proprio_names=['j0', 'j1'])).eval()
    policy.set_normalization({'pose_mean': [0.1] * 20, 'pose_std': [0.5] * 20,
                              'action_mean': [0.1] * 7, 'action_std': [0.2] * 7})
    engine = Engine(policy, device='cpu', dtype='fp32', warmup_iters=1)
    img = frame()
    poses = (PoseSample(123, 'base', np.array([0.4, 0.0, 0.3]), np.array([0.0, 0, 0, 1.0]), 0),
             PoseSample(123, 'base', np.array([-0.4, 0.1, 0.2]), np.array([0.0, 0, 0.6, 0.8]),
                        1))
    obs = Observation(stamp_ns=123, frames=(img,), poses=poses, proprio=np.array([0.3, -0.2]))
    result = engine.infer(obs)
    pixels = engine.preprocessor([image_to_array(img)]).float()[None]
    with torch.no_grad():
        _, chunk = policy(pixels, torch.tensor([[[0.4, 0.0, 0.3], [-0.4, 0.1, 0.2]]]),
                          torch.tensor([[[0.0, 0, 0, 1], [0.0, 0, 0.6, 0.8]]]),
                          torch.tensor([[0.3, -0.2]]))
    np.testing.assert_allclose(result.chunk, policy.actions_from_normalized(chunk)[0].numpy(),
                               rtol=0, atol=1e-6)
    with pytest.raises(PoseError, match='one per arm'):
        engine.infer(Observation(stamp_ns=123, frames=(img,), poses=poses[:1],
                                 proprio=np.array([0.3, -0.2])))


def test_shipped_checkpoint_gives_the_outputs_it_gave_before_arms_existed():
    """Values computed by 77ce0b4 (one arm, before pose.arms) on this fixed input, CPU fp32."""
    engine = Engine.from_checkpoint('', device='cpu', dtype='fp32', warmup_iters=0)
    assert engine.config.pose.arms == ['ee'] and not hasattr(engine.policy.pose_tokenizer,
                                                             'arm_embed')
    pixels = (np.arange(96 * 96 * 3) % 251).astype(np.uint8).reshape(96, 96, 3)
    img = ImageFrame(stamp_ns=1, frame_id='cam', data=pixels.tobytes(), height=96, width=96,
                     encoding='rgb8', step=96 * 3)
    pose = PoseSample(1, 'base', np.array([0.45, -0.05, 0.25]), np.array([0.0, 0, 0, 1.0]))
    result = engine.infer(Observation(stamp_ns=1, frames=(img,), poses=(pose,)))
    np.testing.assert_allclose(result.chunk[0, :3], [0.04271978139877319, 0.03285110369324684,
                                                     -0.034494999796152115], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.chunk[-1, :3], [0.006214274559170008,
                                                      -0.0035623828880488873,
                                                      -0.0406583771109581], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.embedding[:4], [-0.13296496868133545, -0.06261426955461502,
                                                      -0.3342858552932739, -0.014453575946390629],
                               rtol=0, atol=1e-6)
