import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vit_perception.model.pose import (
    Normalizer,
    PoseTokenizer,
    pose_features,
    quat_xyzw_to_6d,
    quat_xyzw_to_matrix,
)


def axis_angle_quat(axis, angle):
    axis = torch.tensor(axis, dtype=torch.float64)
    axis = axis / axis.norm()
    return torch.cat([axis * math.sin(angle / 2), torch.tensor([math.cos(angle / 2)],
                                                               dtype=torch.float64)])


def test_identity_quaternion_gives_identity_6d():
    six = quat_xyzw_to_6d(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert six.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_rotation_about_z_matches_hand_computed_matrix():
    matrix = quat_xyzw_to_matrix(axis_angle_quat([0, 0, 1], math.pi / 2))
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                            dtype=torch.float64)
    assert torch.allclose(matrix, expected, atol=1e-12)
    # 6D = first column then second column.
    six = quat_xyzw_to_6d(axis_angle_quat([0, 0, 1], math.pi / 2))
    assert torch.allclose(six, torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, 0.0],
                                            dtype=torch.float64), atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
    lambda q: sum(v * v for v in q) > 1e-3))
def test_q_and_minus_q_give_the_same_6d_and_orthonormal_columns(q):
    quat = torch.tensor(q, dtype=torch.float64)
    a, b = quat_xyzw_to_6d(quat), quat_xyzw_to_6d(-quat)
    assert torch.allclose(a, b, atol=1e-12)
    col1, col2 = a[:3], a[3:]
    assert abs(col1.norm().item() - 1) < 1e-9 and abs(col2.norm().item() - 1) < 1e-9
    assert abs(torch.dot(col1, col2).item()) < 1e-9


def test_pose_features_layout_with_proprio():
    features = pose_features(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0, 0, 1]]),
                             torch.tensor([[0.5]]))
    assert features.tolist() == [[1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5]]


def test_normalizer_round_trip_and_std_floor():
    norm = Normalizer(2)
    norm.set_stats([1.0, -2.0], [2.0, 0.0])
    assert norm.std.tolist() == [2.0, pytest.approx(1e-6)]
    x = torch.tensor([[3.0, -2.0]])
    assert norm.normalize(x).tolist() == [[1.0, 0.0]]
    assert torch.allclose(norm.denormalize(norm.normalize(x)), x)


def test_pose_tokenizer_shapes_and_token_embeddings_differ():
    tok = PoseTokenizer(num_arms=1, num_proprio=0, num_tokens=3, hidden_size=8)
    out = tok(torch.zeros(5, 9))
    assert out.shape == (5, 3, 8)
    assert not torch.allclose(out[:, 0], out[:, 1])  # per-token learned embeddings
    assert not hasattr(tok, 'arm_embed')  # one arm: the weights of a one-arm checkpoint
    assert sorted(tok.state_dict()) == ['mlp.0.bias', 'mlp.0.weight', 'mlp.2.bias',
                                        'mlp.2.weight', 'token_embed']


def test_pose_features_of_two_arms_then_proprio():
    position = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])  # (1, 2, 3)
    quat = torch.tensor([[[0.0, 0, 0, 1], [0.0, 0, 1, 0]]])  # (1, 2, 4): identity, 180 deg z
    features = pose_features(position, quat, torch.tensor([[0.5, -0.5]]))
    assert features.tolist() == [[1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0,
                                  4.0, 5.0, 6.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.5, -0.5]]
    one = pose_features(position[:, 0], quat[:, 0])  # (B, 3), (B, 4): one arm
    assert one.tolist() == [features[0, :9].tolist()]


def test_two_arm_tokens_share_the_mlp_are_tagged_and_proprio_feeds_arm_zero_only():
    torch.manual_seed(0)
    tok = PoseTokenizer(num_arms=2, num_proprio=2, num_tokens=3, hidden_size=8).eval()
    assert tok.arm_embed.shape == (2, 1, 8) and tok.normalizer.mean.shape == (20,)
    features = torch.randn(4, 20)
    with torch.no_grad():
        out = tok(features)
        assert out.shape == (4, 6, 8)  # (B, arms * K, D), arm 0's tokens first
        # Arm i = the shared MLP on [its 9 features | proprio (arm 0) or zeros] + embeddings.
        arm1_input = torch.cat([features[:, 9:18], torch.zeros(4, 2)], dim=1)
        expected = (tok.mlp(arm1_input).unflatten(-1, (3, 8)) + tok.token_embed
                    + tok.arm_embed[1])
        torch.testing.assert_close(out[:, 3:], expected)
        moved = features.clone()
        moved[:, 18:] += 1.0  # the proprio scalars
        changed = tok(moved)
    assert (changed[:, :3] - out[:, :3]).abs().max() > 1e-4
    torch.testing.assert_close(changed[:, 3:], out[:, 3:], rtol=0, atol=0)
