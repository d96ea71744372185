import pytest
import torch

from vit_perception.model.config import tiny_config
from vit_perception.model.policy import build_policy

IDENTITY = torch.tensor([[0.0, 0.0, 0.0, 1.0]])


def inputs(batch=2, cams=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, cams, 3, 32, 32, generator=gen)
    position = torch.randn(batch, 3, generator=gen)
    return pixels, position, IDENTITY.expand(batch, 4)


@pytest.mark.parametrize('mode', ['early', 'late'])
@pytest.mark.parametrize('model_type', ['vit', 'deit', 'dinov2'])
@pytest.mark.parametrize('cams', [1, 2])
def test_output_shapes_unit_embeddings_and_no_nans(mode, model_type, cams):
    names = [f'cam{i}' for i in range(cams)]
    policy = build_policy(tiny_config(fusion__mode=mode, backbone__model_type=model_type,
                                      cameras=names)).eval()
    embedding, chunk = policy(*inputs(batch=3, cams=cams))
    assert embedding.shape == (3, 16)
    assert chunk.shape == (3, 4, 7)
    assert torch.isfinite(embedding).all() and torch.isfinite(chunk).all()
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize('mode', ['early', 'late'])
def test_pose_changes_the_output(mode):
    policy = build_policy(tiny_config(fusion__mode=mode)).eval()
    pixels, position, quat = inputs()
    _, chunk_a = policy(pixels, position, quat)
    _, chunk_b = policy(pixels, position + 1.0, quat)
    assert (chunk_a - chunk_b).abs().max() > 1e-4


def test_late_fusion_from_cached_tokens_equals_full_forward():
    policy = build_policy(tiny_config(fusion__mode='late')).eval()
    pixels, position, quat = inputs()
    with torch.no_grad():
        full = policy.forward_features(pixels, position, quat)
        cached = policy.encode_images(pixels)  # (B, N * T, D)
        assert cached.shape == (2, 17, 32)
        refreshed = policy.fuse(cached, policy.pose_tokens(position, quat))
    assert torch.allclose(full, refreshed, atol=1e-6)


def test_camera_embeddings_tag_cameras():
    policy = build_policy(tiny_config(cameras=['scene', 'wrist'])).eval()
    pixels, position, quat = inputs(cams=2)
    with torch.no_grad():
        torch.nn.init.normal_(policy.camera_embed, std=1.0)
        a = policy.forward_features(pixels, position, quat)
        b = policy.forward_features(pixels.flip(1), position, quat)  # swap cameras
    assert (a - b).abs().max() > 1e-4


def test_early_fusion_puts_pose_tokens_after_prefix():
    policy = build_policy(tiny_config(pose__num_tokens=3, backbone__model_type='deit')).eval()
    seen = {}

    def record(module, args):
        seen.setdefault('shape', args[0].shape)

    handle = policy.backbone.layers[0].register_forward_pre_hook(record)
    with torch.no_grad():
        policy(*inputs(batch=1))
    handle.remove()
    assert seen['shape'] == (1, 2 + 3 + 16, 32)  # DeiT prefix 2 + K 3 + patches 16


def test_proprio_scalars_enter_the_pose_features():
    policy = build_policy(tiny_config(pose__proprio_names=['gripper'])).eval()
    pixels, position, quat = inputs()
    with torch.no_grad():
        a = policy(pixels, position, quat, torch.zeros(2, 1))[1]
        b = policy(pixels, position, quat, torch.ones(2, 1))[1]
    assert (a - b).abs().max() > 1e-5


def test_actions_are_denormalized_with_stored_stats():
    policy = build_policy(tiny_config())
    policy.set_normalization({'pose_mean': [0.0] * 9, 'pose_std': [1.0] * 9,
                              'action_mean': [1.0] * 7, 'action_std': [2.0] * 7})
    out = policy.actions_from_normalized(torch.ones(1, 4, 7))
    assert torch.equal(out, torch.full((1, 4, 7), 3.0))


def two_arm_inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 1, 3, 32, 32, generator=gen)
    position = torch.randn(batch, 2, 3, generator=gen)  # (B, arms, 3)
    quat = IDENTITY.expand(batch, 2, 4)  # (B, arms, 4)
    return pixels, position, quat, torch.randn(batch, 3, generator=gen)  # proprio (B, 3)


@pytest.mark.parametrize('mode', ['early', 'late'])
def test_two_arms_with_proprio_shapes_and_every_input_matters(mode):
    torch.manual_seed(0)
    policy = build_policy(tiny_config(fusion__mode=mode, pose__arms=['left', 'right'],
                                      pose__num_tokens=2,
                                      pose__proprio_names=['a', 'b', 'c'])).eval()
    assert policy.config.pose.feature_dim == 2 * 9 + 3
    pixels, position, quat, proprio = two_arm_inputs()
    with torch.no_grad():
        embedding, chunk = policy(pixels, position, quat, proprio)
        assert embedding.shape == (2, 16) and chunk.shape == (2, 4, 7)
        for arm in (0, 1):
            moved = position.clone()
            moved[:, arm] += 1.0
            assert (policy(pixels, moved, quat, proprio)[1] - chunk).abs().max() > 1e-4
        assert (policy(pixels, position, quat, proprio + 1.0)[1] - chunk).abs().max() > 1e-4
        swapped = policy(pixels, position.flip(1), quat, proprio)[1]  # arms exchanged
        assert (swapped - chunk).abs().max() > 1e-4


def test_two_arm_early_fusion_sequence_and_late_refresh():
    config = dict(pose__arms=['left', 'right'], pose__num_tokens=3, backbone__model_type='deit')
    policy = build_policy(tiny_config(**config)).eval()
    seen = {}

    def record(module, args):
        seen.setdefault('shape', args[0].shape)

    handle = policy.backbone.layers[0].register_forward_pre_hook(record)
    pixels, position, quat, _ = two_arm_inputs(batch=1)
    with torch.no_grad():
        policy(pixels, position, quat)
    handle.remove()
    assert seen['shape'] == (1, 2 + 2 * 3 + 16, 32)  # DeiT prefix 2 + arms * K + patches 16
    late = build_policy(tiny_config(fusion__mode='late', pose__arms=['l', 'r'])).eval()
    with torch.no_grad():
        full = late.forward_features(pixels, position, quat)
        refreshed = late.fuse(late.encode_images(pixels), late.pose_tokens(position, quat))
    torch.testing.assert_close(full, refreshed, rtol=0, atol=1e-6)
