"""The checkpoint's configuration: grouped dataclasses, validated on construction, strict when
parsed.

`PolicyConfig` is everything a checkpoint needs to rebuild the model and its preprocessing (its
`config.json`). `from_dict` refuses unknown keys (typos are errors, never silently ignored). Every
number must be finite and inside a stated range (the `MAX_*` limits below), and a model larger
than `MAX_MODEL_PARAMETERS` is refused from its config alone, before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit_perception.errors import ConfigError, short_repr
from vit_perception.schema import (
    MAX_CONFIG_FILE_BYTES,
    from_dict,
    require_at_most,
    require_positive,
    set_dotted,
)

FUSION_MODES = ('early', 'late')
BACKBONE_TYPES = ('vit', 'deit', 'dinov2', 'dinov2_with_registers', 'clip', 'siglip', 'beit',
                  'data2vec-vision', 'dpt')
DEFAULT_ACTION_NAMES = ('dx', 'dy', 'dz', 'drx', 'dry', 'drz', 'gripper')
ACTION_KINDS = ('delta', 'velocity')

# Model budget, checked on the config before anything is allocated: ViT-H/14 has 0.63e9
# parameters; 1e9 fp32 parameters take 4 GB. Tokens per camera bound the attention memory.
MAX_MODEL_PARAMETERS = 1_000_000_000
MAX_TOKENS_PER_CAMERA = 4096
MAX_IMAGE_SIDE = 4096  # backbone.image_size, preprocess sizes
MAX_CAMERAS = 16
MAX_NAMES = 64  # action names, proprio names
MAX_ARMS = 8
POSE_FEATURES = 9  # per arm: position (3) + 6D rotation (6)


@dataclass
class BackboneConfig:
    """Which ViT-family encoder to build and how."""

    # Local directory or hub id of a pretrained model; empty = build from the sizes below.
    pretrained: str = ''
    # One of BACKBONE_TYPES (used when building from sizes; a pretrained directory names its own).
    model_type: str = 'vit'
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    mlp_ratio: int = 4
    patch_size: int = 16
    image_size: int = 224
    # Freeze the backbone weights during training.
    freeze: bool = False
    # Which layer's tokens to read: -1 the last (then the final norm), -2 the second-to-last (raw,
    # as VLAs use), k >= 1 layer k. Checked against the layer count when the backbone is built.
    feature_layer: int = -1
    # Full HF config of the backbone, filled in when built; checkpoints rebuild from it offline.
    hf_config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model_type not in BACKBONE_TYPES:
            raise ConfigError(
                f'backbone.model_type={self.model_type!r}: expected one of {BACKBONE_TYPES}')
        for name, most in (('hidden_size', 16384), ('num_layers', 256), ('num_heads', 256),
                           ('mlp_ratio', 16), ('patch_size', MAX_IMAGE_SIDE),
                           ('image_size', MAX_IMAGE_SIDE)):
            require_positive(f'backbone.{name}', getattr(self, name), most)
        if self.feature_layer == 0 or abs(self.feature_layer) > 256:
            raise ConfigError(f'backbone.feature_layer={self.feature_layer}: expected -1 (last '
                              'layer), -2, ... or a '
                              'layer number >= 1')
        if self.hidden_size % self.num_heads:
            raise ConfigError(f'backbone.hidden_size={self.hidden_size} must be divisible by '
                              f'backbone.num_heads={self.num_heads}')


@dataclass
class PoseConfig:
    """How the end-effector poses (+ optional proprio scalars) become tokens."""

    # Number of pose tokens K per arm added to the sequence.
    num_tokens: int = 2
    # One name per arm (one PoseStamped topic each, in this order); every arm's pose becomes K
    # tokens of one shared tokenizer, tagged with a learned arm embedding when there are several.
    arms: list[str] = field(default_factory=lambda: ['ee'])
    # Joint names read from sensor_msgs/JointState.position (matched by name); the values are
    # appended to the first arm's pose features (e.g. ['gripper']).
    proprio_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        require_positive('pose.num_tokens', self.num_tokens, 256)
        require_at_most('pose.proprio_names', len(self.proprio_names), MAX_NAMES)
        if len(set(self.proprio_names)) != len(self.proprio_names):
            raise ConfigError(f'pose.proprio_names has duplicates: {self.proprio_names}')
        if (not self.arms or len(set(self.arms)) != len(self.arms)
                or len(self.arms) > MAX_ARMS):
            raise ConfigError(f'pose.arms={short_repr(self.arms)}: expected 1..{MAX_ARMS} '
                              'unique names')

    @property
    def feature_dim(self) -> int:
        """Per arm position (3) + 6D rotation (6), then the proprio scalars: 9 * arms + P."""
        return POSE_FEATURES * len(self.arms) + len(self.proprio_names)


@dataclass
class FusionConfig:
    """Where pose tokens meet image tokens."""

    # 'early': pose tokens join the ViT sequence; 'late': a small transformer after the ViT.
    mode: str = 'early'
    # Late fusion only: transformer layers and heads.
    late_layers: int = 2
    late_heads: int = 6

    def __post_init__(self):
        if self.mode not in FUSION_MODES:
            raise ConfigError(f'fusion.mode={self.mode!r}: expected one of {FUSION_MODES}')
        require_positive('fusion.late_layers', self.late_layers, 64)
        require_positive('fusion.late_heads', self.late_heads, 256)


@dataclass
class ActionConfig:
    """The action chunk the policy predicts."""

    names: list[str] = field(default_factory=lambda: list(DEFAULT_ACTION_NAMES))
    # Steps per chunk (H) and seconds between steps.
    horizon: int = 8
    dt: float = 0.1
    # What dx dy dz drx dry drz mean: 'delta' = metres / radians per step of dt; 'velocity' =
    # m/s and rad/s. Only the TwistStamped output (topics.twist) depends on it.
    kind: str = 'delta'

    def __post_init__(self):
        if self.kind not in ACTION_KINDS:
            raise ConfigError(f'actions.kind={self.kind!r}: expected one of {ACTION_KINDS}')
        if not self.names:
            raise ConfigError('actions.names is empty: name at least one action dimension')
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f'actions.names has duplicates: {self.names}')
        require_at_most('actions.names', len(self.names), MAX_NAMES)
        require_positive('actions.horizon', self.horizon, 1000)
        require_positive('actions.dt', self.dt, 60.0)


@dataclass
class EmbeddingConfig:
    """The pooled embedding output."""

    dim: int = 256
    l2_normalize: bool = True

    def __post_init__(self):
        require_positive('embedding.dim', self.dim, 65536)


@dataclass
class PreprocessConfig:
    """Image preprocessing; filled from the backbone's image processor when one exists."""

    # Resize target (height, width); with shortest_edge > 0 resize keeps aspect, then crops.
    size: list[int] = field(default_factory=lambda: [224, 224])
    shortest_edge: int = 0
    crop_size: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    # Resize filter: 'bilinear' (ViT) or 'bicubic' (DeiT, DINOv2), as the HF processor says.
    resample: str = 'bilinear'

    def __post_init__(self):
        if self.resample not in ('bilinear', 'bicubic'):
            raise ConfigError(f'preprocess.resample={self.resample!r}: expected bilinear or '
                              'bicubic')
        for name in ('size', 'crop_size'):
            sides = getattr(self, name)
            if (sides or name == 'size') and (
                    len(sides) != 2 or not all(0 < side <= MAX_IMAGE_SIDE for side in sides)):
                raise ConfigError(f'preprocess.{name}={short_repr(sides)}: expected [height, '
                                  f'width], each 1..{MAX_IMAGE_SIDE}')
        if not 0 <= self.shortest_edge <= MAX_IMAGE_SIDE:
            raise ConfigError(f'preprocess.shortest_edge={self.shortest_edge}: expected '
                              f'0..{MAX_IMAGE_SIDE}')
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError('preprocess.mean/std: expected 3 values each, std > 0')

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the tensor the model sees."""
        return tuple(self.crop_size) if self.crop_size else tuple(self.size)


@dataclass
class PolicyConfig:
    """Everything needed to rebuild the policy model and its preprocessing."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    actions: ActionConfig = field(default_factory=ActionConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # One name per camera stream; tokens are tagged with a learned embedding per camera.
    cameras: list[str] = field(default_factory=lambda: ['camera'])
    # Free-form identifier published with every embedding.
    model_id: str = 'vit_perception'
    # The model zeroes every image before encoding: a pose-only baseline (train --ablate-images).
    # Part of the model, so training, replay and the node all see the same (blank) input.
    ablate_images: bool = False

    def __post_init__(self):
        if (not self.cameras or len(set(self.cameras)) != len(self.cameras)
                or len(self.cameras) > MAX_CAMERAS):
            raise ConfigError(f'cameras={short_repr(self.cameras)}: expected 1..{MAX_CAMERAS} '
                              'unique names')
        check_model_budget(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        return from_dict(cls, data)


def tiny_config(**overrides: Any) -> PolicyConfig:
    """A very small policy for tests and quick experiments (random init, 32x32 input)."""
    data = {
        'backbone': {'hidden_size': 32, 'num_layers': 2, 'num_heads': 2, 'mlp_ratio': 2,
                     'patch_size': 8, 'image_size': 32},
        'fusion': {'late_heads': 2, 'late_layers': 1},
        'actions': {'horizon': 4},
        'embedding': {'dim': 16},
        'preprocess': {'size': [32, 32]},
    }
    for dotted, value in overrides.items():
        set_dotted(data, dotted.replace('__', '.'), value)
    return PolicyConfig.from_dict(data)



def _hf_size(hf: dict, key: str, default: int | None = None, at_most: int = 1 << 20) -> int:
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= at_most:
        raise ConfigError(f'backbone.hf_config.{key}={short_repr(value)}: expected an integer '
                          f'1..{at_most}')
    return value


def estimate_parameters(config: PolicyConfig) -> int:
    """Parameter count of the policy from its config alone (to within a few percent)."""
    bb = config.backbone
    hf = bb.hf_config or _pretrained_hf_config(bb.pretrained)
    if hf:
        # An absent key takes transformers' default, of the order of ours.
        hidden = _hf_size(hf, 'hidden_size', bb.hidden_size, 16384)
        layers = _hf_size(hf, 'num_hidden_layers', bb.num_layers, 256)
        _hf_size(hf, 'num_attention_heads', bb.num_heads, 256)
        mlp_ratio = hf.get('mlp_ratio', 4)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not (
                0 < mlp_ratio <= 64):
            raise ConfigError(f'backbone.hf_config.mlp_ratio={short_repr(mlp_ratio)}: expected '
                              'a number in (0, 64]')
        inner = _hf_size(hf, 'intermediate_size', int(hidden * mlp_ratio))
        image = _hf_size(hf, 'image_size', bb.image_size, MAX_IMAGE_SIDE)
        patch = _hf_size(hf, 'patch_size', bb.patch_size, MAX_IMAGE_SIDE)
        channels = _hf_size(hf, 'num_channels', 3, 16)
    else:
        hidden, layers, inner = bb.hidden_size, bb.num_layers, bb.hidden_size * bb.mlp_ratio
        image, patch, channels = bb.image_size, bb.patch_size, 3
    tokens = (image // patch) ** 2
    if patch > image or tokens > MAX_TOKENS_PER_CAMERA:
        raise ConfigError(f'backbone: image_size {image} / patch_size {patch} gives {tokens} '
                          f'tokens per camera; expected 1..{MAX_TOKENS_PER_CAMERA}')
    per_layer = 4 * hidden * hidden + 2 * hidden * inner + 9 * hidden + inner
    count = layers * per_layer + channels * patch * patch * hidden + (tokens + 2) * hidden
    if config.fusion.mode == 'late':
        count += config.fusion.late_layers * (12 * hidden * hidden + 13 * hidden)
    pose_dim = POSE_FEATURES + len(config.pose.proprio_names)  # one tokenizer, shared by arms
    count += pose_dim * hidden + hidden * hidden * config.pose.num_tokens
    arms = len(config.pose.arms)
    count += (len(config.cameras) + config.pose.num_tokens + (arms if arms > 1 else 0)) * hidden
    outputs = config.actions.horizon * len(config.actions.names)
    count += hidden * config.embedding.dim + hidden * hidden + hidden * outputs
    return int(count)


def _pretrained_hf_config(pretrained: str) -> dict:
    """config.json of a local pretrained directory ({} for a hub id or an unreadable file: the
    backbone loader reports those)."""
    path = Path(pretrained) / 'config.json' if pretrained else None
    try:
        if path is None or not path.is_file() or path.stat().st_size > MAX_CONFIG_FILE_BYTES:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def check_model_budget(config: PolicyConfig) -> None:
    """ConfigError when the policy would exceed MAX_MODEL_PARAMETERS (nothing allocated)."""
    count = estimate_parameters(config)
    if count > MAX_MODEL_PARAMETERS:
        raise ConfigError(f'the model would have about {count:.3g} parameters; the budget is '
                          f'{MAX_MODEL_PARAMETERS:.3g} (MAX_MODEL_PARAMETERS): check '
                          'backbone sizes (hidden_size, num_layers, hf_config)')
