"""VisionPosePolicy: ViT image tokens + pose tokens -> embedding and action chunk.

Reads top-down: the fusion block, the policy (forward_features / forward_head), the factory.

Early fusion: each camera's sequence is [prefix | pose tokens | patches] through the whole ViT
(pose tokens sit after the prefix tokens, register-style), so attention sees the pose.
Late fusion: the ViT encodes images alone (its tokens can be cached); a small transformer fuses
[readout | pose tokens | image tokens of every camera], so a new pose costs only that transformer.
Multi-camera: all cameras share the ViT; a learned camera embedding tags each camera's tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vit_perception.model.backbone import Backbone, build_backbone
from vit_perception.model.config import PolicyConfig
from vit_perception.model.pose import Normalizer, PoseTokenizer, pose_features


class LateFusion(nn.Module):
    """A small pre-norm transformer over [readout | pose tokens | image tokens]."""

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int):
        super().__init__()
        self.readout = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.trunc_normal_(self.readout, std=0.02)
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 4 * hidden_size, dropout=0.0,
                                           activation='gelu', batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, image_tokens: torch.Tensor, pose_tokens: torch.Tensor) -> torch.Tensor:
        """(B, C*T, D) image tokens, (B, K, D) pose tokens -> (B, D) fused feature."""
        readout = self.readout.expand(pose_tokens.shape[0], -1, -1).to(pose_tokens.dtype)
        tokens = torch.cat([readout, pose_tokens, image_tokens], dim=1)  # (B, 1 + K + N*T, D)
        return self.norm(self.encoder(tokens)[:, 0])  # (B, D)


class VisionPosePolicy(nn.Module):
    """The policy. Inputs: pixels (B, C, 3, H, W); poses (B, N, 3) + (B, N, 4) xyzw of the N
    arms (or (B, 3) + (B, 4) for one arm); proprio (B, P)."""

    def __init__(self, config: PolicyConfig, backbone: Backbone):
        super().__init__()
        self.config = config
        self.backbone = backbone
        hidden = backbone.hidden_size
        self.num_cameras = len(config.cameras)
        self.horizon = config.actions.horizon
        self.action_dim = len(config.actions.names)
        self.fusion_mode = config.fusion.mode

        self.camera_embed = nn.Parameter(torch.zeros(self.num_cameras, 1, hidden))
        nn.init.trunc_normal_(self.camera_embed, std=0.02)
        self.pose_tokenizer = PoseTokenizer(len(config.pose.arms), len(config.pose.proprio_names),
                                            config.pose.num_tokens, hidden)
        self.late_fusion = (LateFusion(hidden, config.fusion.late_layers, config.fusion.late_heads)
                            if self.fusion_mode == 'late' else None)
        self.embedding_head = nn.Linear(hidden, config.embedding.dim)
        self.action_head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, self.horizon * self.action_dim))
        self.action_normalizer = Normalizer(self.action_dim)

    # -- building blocks ---------------------------------------------------------------------

    def pose_tokens(self, position: torch.Tensor, quat: torch.Tensor,
                    proprio: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3), (B, N, 4) (or (B, 3), (B, 4) for one arm), (B, P) -> (B, N * K, D)."""
        features = pose_features(position.float(), quat.float(),
                                 None if proprio is None else proprio.float())  # (B, F)
        return self.pose_tokenizer(features)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Late fusion: (B, N, 3, H, W) -> cacheable image tokens (B, N * T, D)."""
        pixels = self._maybe_ablate(pixels)
        batch, cams = pixels.shape[:2]
        tokens = self.backbone.embed(pixels.flatten(0, 1))  # (B * N, T, D)
        tokens = self.backbone.encode(tokens, self.backbone.grid(pixels))  # (B * N, T, D)
        tokens = tokens.unflatten(0, (batch, cams)) + self.camera_embed  # (B, N, T, D)
        return tokens.flatten(1, 2)  # (B, N * T, D)

    def _maybe_ablate(self, pixels: torch.Tensor) -> torch.Tensor:
        """All zeros when the config ablates images (a pose-only model), else `pixels`."""
        return torch.zeros_like(pixels) if self.config.ablate_images else pixels

    def fuse(self, image_tokens: torch.Tensor, pose_tokens: torch.Tensor) -> torch.Tensor:
        """Late fusion: cached (B, N * T, D) image tokens + (B, K, D) pose tokens -> (B, D)."""
        return self.late_fusion(image_tokens, pose_tokens)

    def early_features(self, pixels: torch.Tensor, pose_tokens: torch.Tensor) -> torch.Tensor:
        """Early fusion: (B, N, 3, H, W), (B, K, D) -> (B, D)."""
        pixels = self._maybe_ablate(pixels)
        batch, cams = pixels.shape[:2]
        prefix = self.backbone.num_prefix_tokens
        num_pose = pose_tokens.shape[1]
        tokens = self.backbone.embed(pixels.flatten(0, 1))  # (B * N, P0 + patches, D)
        tokens = tokens.unflatten(0, (batch, cams)) + self.camera_embed  # (B, N, T, D)
        tokens = tokens.flatten(0, 1)  # (B * N, T, D)
        pose = pose_tokens.repeat_interleave(cams, dim=0)  # (B * N, K, D)
        tokens = torch.cat([tokens[:, :prefix], pose, tokens[:, prefix:]], dim=1)
        tokens = self.backbone.encode(tokens, self.backbone.grid(pixels))  # (B*N, P0+K+patches, D)
        readout = tokens[:, :prefix + num_pose].mean(dim=1)  # (B * N, D): prefix + pose tokens
        return readout.unflatten(0, (batch, cams)).mean(dim=1)  # (B, D)

    # -- the policy --------------------------------------------------------------------------

    def forward_features(self, pixels: torch.Tensor, position: torch.Tensor, quat: torch.Tensor,
                         proprio: torch.Tensor | None = None) -> torch.Tensor:
        """-> (B, D) fused feature."""
        pose = self.pose_tokens(position, quat, proprio)
        if self.fusion_mode == 'late':
            return self.fuse(self.encode_images(pixels), pose)
        return self.early_features(pixels, pose)

    def forward_head(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> embedding (B, E), normalized action chunk (B, H, A)."""
        embedding = self.embedding_head(feature)
        if self.config.embedding.l2_normalize:
            embedding = F.normalize(embedding, dim=-1)
        chunk = self.action_head(feature).unflatten(-1, (self.horizon, self.action_dim))
        return embedding, chunk  # (B, E), (B, H, A)

    def forward(self, pixels, position, quat, proprio=None):
        """-> embedding (B, E), normalized action chunk (B, H, A) (training target space)."""
        return self.forward_head(self.forward_features(pixels, position, quat, proprio))

    def actions_from_normalized(self, chunk: torch.Tensor) -> torch.Tensor:
        """Normalized (B, H, A) -> actions in robot units."""
        return self.action_normalizer.denormalize(chunk.float())

    def set_normalization(self, stats: dict) -> None:
        """stats: pose_mean/pose_std (F,), action_mean/action_std (A,) lists."""
        self.pose_tokenizer.normalizer.set_stats(stats['pose_mean'], stats['pose_std'])
        self.action_normalizer.set_stats(stats['action_mean'], stats['action_std'])

    def normalization(self) -> dict:
        pose, action = self.pose_tokenizer.normalizer, self.action_normalizer
        return {'pose_mean': pose.mean.tolist(), 'pose_std': pose.std.tolist(),
                'action_mean': action.mean.tolist(), 'action_std': action.std.tolist()}


def build_policy(config: PolicyConfig) -> VisionPosePolicy:
    """Backbone (pretrained, stored config or sizes) + fusion + heads. Fills preprocessing from
    the backbone's image processor when it has one."""
    backbone, processor_config = build_backbone(config.backbone)
    if processor_config:
        from vit_perception.core.preprocess import preprocess_config_from_hf

        config.preprocess = preprocess_config_from_hf(processor_config)
    return VisionPosePolicy(config, backbone)
