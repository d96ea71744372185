"""End-effector poses (one per arm) + proprio -> normalized features -> K tokens per arm.

Orientation uses the continuous 6D representation (first two columns of the rotation matrix,
Zhou et al. 2019): unlike quaternions it has no double cover and no discontinuity.
"""

from __future__ import annotations

import torch
from torch import nn

from vit_perception.model.config import POSE_FEATURES


def quat_xyzw_to_matrix(quat: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternion in ROS x y z w order -> (..., 3, 3) rotation matrix."""
    quat = quat / quat.norm(dim=-1, keepdim=True)
    x, y, z, w = quat.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*quat.shape[:-1], 3, 3)  # (..., 3, 3)


def quat_xyzw_to_6d(quat: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternion -> (..., 6): the first two columns of the rotation matrix."""
    matrix = quat_xyzw_to_matrix(quat)
    return matrix[..., :, :2].transpose(-1, -2).reshape(*quat.shape[:-1], 6)  # (..., 6)


def pose_features(position: torch.Tensor, quat: torch.Tensor,
                  proprio: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, 3) positions, (B, N, 4) xyzw quaternions of N arms ((B, 3), (B, 4): one arm),
    (B, P) proprio -> (B, 9 * N + P) raw features: every arm's position + 6D rotation, then
    the proprio scalars."""
    if position.dim() == 2:  # one arm
        position, quat = position[:, None], quat[:, None]  # (B, 1, 3), (B, 1, 4)
    arms = torch.cat([position, quat_xyzw_to_6d(quat)], dim=-1)  # (B, N, 9)
    parts = [arms.flatten(1)]  # (B, 9 * N)
    if proprio is not None and proprio.shape[-1]:
        parts.append(proprio)
    return torch.cat(parts, dim=-1)  # (B, 9 * N + P)


class Normalizer(nn.Module):
    """(x - mean) / std with statistics from the training data (stored in the checkpoint)."""

    def __init__(self, dim: int):
        super().__init__()
        # Not in state_dict: the statistics live in the checkpoint's normalization.json.
        self.register_buffer('mean', torch.zeros(dim), persistent=False)
        self.register_buffer('std', torch.ones(dim), persistent=False)

    def set_stats(self, mean, std) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(self.mean.shape)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(self.std.shape)
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)


class PoseTokenizer(nn.Module):
    """Normalized pose features (B, 9 * N + P) -> K tokens per arm (B, N * K, D).

    One MLP shared by the arms: arm i's input is its 9 pose features followed by the P proprio
    scalars for arm 0 and P zeros for the others (zero = the normalized mean). With N > 1 a
    learned arm embedding tags each arm's tokens (absent for one arm, so one-arm checkpoints
    keep their weights).
    """

    def __init__(self, num_arms: int, num_proprio: int, num_tokens: int, hidden_size: int):
        super().__init__()
        self.num_arms = num_arms
        self.num_proprio = num_proprio
        self.num_tokens = num_tokens
        self.hidden_size = hidden_size
        arm_dim = POSE_FEATURES + num_proprio
        self.normalizer = Normalizer(POSE_FEATURES * num_arms + num_proprio)
        self.mlp = nn.Sequential(
            nn.Linear(arm_dim, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, num_tokens * hidden_size),
        )
        # Type/position embedding per pose token (tells the ViT these are not patches).
        self.token_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_size))
        nn.init.trunc_normal_(self.token_embed, std=0.02)
        if num_arms > 1:
            self.arm_embed = nn.Parameter(torch.zeros(num_arms, 1, hidden_size))
            nn.init.trunc_normal_(self.arm_embed, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 9 * N + P) raw float32 features -> (B, N * K, D) tokens in the model's dtype."""
        normalized = self.normalizer.normalize(features.float())  # fp32: stats stay exact
        batch, arms = normalized.shape[0], self.num_arms
        poses = normalized[:, :POSE_FEATURES * arms].unflatten(1, (arms, POSE_FEATURES))
        proprio = normalized[:, POSE_FEATURES * arms:]  # (B, P)
        if self.num_proprio and arms > 1:
            others = proprio.new_zeros(batch, arms - 1, self.num_proprio)  # (B, N - 1, P)
            proprio = torch.cat([proprio[:, None], others], dim=1)  # (B, N, P)
        else:
            proprio = proprio[:, None]  # (B, 1, P) (N = 1 or P = 0)
        inputs = torch.cat([poses, proprio.expand(batch, arms, -1)], dim=-1)  # (B, N, 9 + P)
        tokens = self.mlp(inputs.to(self.token_embed.dtype))  # (B, N, K * D)
        tokens = tokens.unflatten(-1, (self.num_tokens, self.hidden_size))  # (B, N, K, D)
        tokens = tokens + self.token_embed.to(tokens.dtype)
        if arms > 1:
            tokens = tokens + self.arm_embed.to(tokens.dtype)  # (N, 1, D) per arm
        return tokens.flatten(1, 2)  # (B, N * K, D)
