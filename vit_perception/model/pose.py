"""End-effector pose -> normalized features -> K pose tokens.

Orientation uses the continuous 6D representation (first two columns of the rotation matrix,
Zhou et al. 2019): unlike quaternions it has no double cover and no discontinuity.
"""

from __future__ import annotations

import torch
from torch import nn


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
    """(B, 3) position, (B, 4) xyzw quaternion, (B, P) proprio -> (B, 9 + P) raw features."""
    parts = [position, quat_xyzw_to_6d(quat)]
    if proprio is not None and proprio.shape[-1]:
        parts.append(proprio)
    return torch.cat(parts, dim=-1)  # (B, 9 + P)


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
    """Normalized pose features (B, F) -> K tokens (B, K, D) with learned token embeddings."""

    def __init__(self, feature_dim: int, num_tokens: int, hidden_size: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.hidden_size = hidden_size
        self.normalizer = Normalizer(feature_dim)
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, num_tokens * hidden_size),
        )
        # Type/position embedding per pose token (tells the ViT these are not patches).
        self.token_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_size))
        nn.init.trunc_normal_(self.token_embed, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) raw float32 features -> (B, K, D) tokens in the model's dtype."""
        normalized = self.normalizer.normalize(features.float())  # fp32: stats stay exact
        tokens = self.mlp(normalized.to(self.token_embed.dtype))  # (B, K * D)
        tokens = tokens.reshape(-1, self.num_tokens, self.hidden_size)  # (B, K, D)
        return tokens + self.token_embed.to(tokens.dtype)
